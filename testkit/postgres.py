"""A real PostgreSQL server for one test: Debian's binaries, a cluster in a temporary folder,
run by an unprivileged user (``postgres``, else ``nobody``, when the tests run as root)."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from testkit.support import wait_until
from yl_status.dev_broker import free_port

USER = "yl"


def postgres_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with a server in it."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: int(Path(p).parent.parent.name)
                   if Path(p).parent.parent.name.isdigit() else 0)
    return Path(found[-1]).parent if found else None


def _runner() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and no unprivileged user to run PostgreSQL as")


class PostgresServer:
    def __init__(self) -> None:
        binaries = postgres_bin()
        if binaries is None:
            raise RuntimeError("PostgreSQL is not installed (README's set-up installs it)")
        self.bin = binaries
        self.folder = Path(tempfile.mkdtemp(prefix="yl-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self.log_path = self.folder / "postgres.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._user = _runner()
        self._databases = 0
        if self._user is not None:
            os.chown(self.folder, self._user.pw_uid, self._user.pw_gid)
        self._run([str(self.bin / "initdb"), "-D", str(self.data), "-U", USER,
                   "--auth=trust", "--no-sync", "-E", "UTF8", "--no-instructions"])

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/postgres"

    def _as_user(self) -> dict[str, Any]:
        if self._user is None:
            return {}
        return {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}

    def _run(self, args: list[str]) -> None:
        subprocess.run(args, check=True, capture_output=True, cwd=self.folder,
                       **self._as_user())

    def start(self) -> PostgresServer:
        log = open(self.log_path, "ab")  # noqa: SIM115 (the server's, closed with it)
        try:
            self.process = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.folder}",
                 "-c", "max_connections=60", "-c", "shared_buffers=32MB"],
                stdout=log, stderr=log, cwd=self.folder, **self._as_user())
        finally:
            log.close()
        wait_until(self.ready, timeout=30, what="PostgreSQL accepting connections")
        return self

    def ready(self) -> bool:
        try:
            with psycopg.connect(self.url, connect_timeout=2):
                return True
        except psycopg.OperationalError:
            assert self.process is not None
            assert self.process.poll() is None, self.log()
            return False

    def stop(self) -> None:
        """A fast shutdown: connections are ended, the data stays."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            cursor = conn.execute(sql, params)
            return list(cursor.fetchall()) if cursor.description else []

    def new_database(self) -> str:
        """A fresh, empty database on this server; its URL."""
        self._databases += 1
        name = f"test_{self._databases}"
        self.query(f"CREATE DATABASE {name}")
        return self.url.rsplit("/", 1)[0] + "/" + name

    def terminate(self, application_name_like: str) -> int:
        """``pg_terminate_backend`` every session whose application name is LIKE this;
        returns how many were ended."""
        rows = self.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                          "application_name LIKE %s AND pid <> pg_backend_pid()",
                          (application_name_like,))
        return sum(1 for r in rows if r[0])

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def running_postgres() -> Iterator[PostgresServer]:
    """A started server, removed with its folder when the generator ends."""
    server = PostgresServer()
    try:
        yield server.start()
    finally:
        server.remove()
