"""``yl-status outbox migrate``: move a stopped bridge's SQLite outbox into PostgreSQL.

Everything the SQLite outbox holds is copied in one PostgreSQL transaction: what the bridge
knows of each node (its session, seq, ended sessions, snapshot, registration), the pending
transitions in their order and the pending statuses. Only once that is committed is the
SQLite outbox emptied, so a failure at any point loses nothing (at worst the copy is made
again). The target must hold no outbox work yet.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TextIO

from bridge.database import (
    ADDED_COLUMNS,
    OutboxError,
    PostgresDatabase,
    SqliteDatabase,
    is_postgres,
    redact,
)

log = logging.getLogger(__name__)

_NODE_COLUMNS = ("node_id", "node_name", "session", "seq", "state", "state_session",
                 "snapshot", "registered", "ended", "interval_s", "ahead_session", "ahead_seq",
                 "told", "pending_session", "pending_seq", "pending_received",
                 *(name for name, _ in ADDED_COLUMNS))
_READ = (
    f"SELECT {', '.join(_NODE_COLUMNS)} FROM nodes",  # noqa: S608
    "SELECT id, node_id, session, state, snapshot, received FROM transitions ORDER BY id",
)
_WRITE = (
    f"INSERT INTO nodes ({', '.join(_NODE_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join('?' for _ in _NODE_COLUMNS)})",
    "INSERT INTO transitions (id, node_id, session, state, snapshot, received) "
    "VALUES (?, ?, ?, ?, ?, ?)",
)
_PENDING = _NODE_COLUMNS.index("pending_session")
_HELD = ("SELECT (SELECT COUNT(*) FROM nodes), (SELECT COUNT(*) FROM transitions), "
         "(SELECT COUNT(*) FROM nodes WHERE pending_session IS NOT NULL)")


def sqlite_path(source: str) -> Path:
    """The file of ``sqlite:PATH``."""
    if not source.startswith("sqlite:") or not source[len("sqlite:"):]:
        raise OutboxError(f"--from must be sqlite:PATH, got {source!r}")
    path = Path(source[len("sqlite:"):]).expanduser()
    if not path.is_file():
        raise OutboxError(f"--from: no outbox file at {str(path)!r}")
    return path


def migrate(source: str, target: str, out: TextIO) -> None:
    path = sqlite_path(source)
    if not is_postgres(target):
        raise OutboxError(f"--to must be a postgresql:// URL, got {target[:60]!r}")
    try:
        sqlite = SqliteDatabase(str(path))
    except SqliteDatabase.errors as exc:
        raise OutboxError(f"--from {path}: cannot open: {exc}") from exc
    try:
        pg = PostgresDatabase(target, name="yl-status outbox migrate")
    except OutboxError:
        sqlite.close()
        raise
    except Exception as exc:
        sqlite.close()
        raise OutboxError(f"--to {redact(target)}: cannot connect: {exc}") from exc
    try:
        _copy(sqlite, pg, path, out)
    finally:
        sqlite.close()
        pg.close()


def _check_empty(pg: PostgresDatabase) -> None:
    held = pg.execute(_HELD).fetchone()
    if any(held):
        raise OutboxError(
            f"--to {pg.where}: the outbox there already holds {held[0]} node(s), "
            f"{held[1]} transition(s) and {held[2]} status(es); migrate into an empty one")


def _copy(sqlite: SqliteDatabase, pg: PostgresDatabase, path: Path, out: TextIO) -> None:
    try:
        sqlite.prepare()
        sqlite.execute("BEGIN EXCLUSIVE")
    except SqliteDatabase.errors as exc:
        raise OutboxError(f"--from {path}: cannot lock it ({exc}); stop the bridge that "
                          "uses it first") from exc
    try:
        nodes, transitions = (sqlite.execute(sql).fetchall() for sql in _READ)
        statuses = sum(1 for row in nodes if row[_PENDING] is not None)
        pg.prepare()
        _check_empty(pg)
        pg.begin()
        try:
            for sql, rows in zip(_WRITE, (nodes, transitions), strict=True):
                pg.executemany(sql, rows)
            pg.execute("SELECT setval(pg_get_serial_sequence('transitions', 'id'), "
                       "GREATEST((SELECT MAX(id) FROM transitions), 1))")
            pg.commit()
        except BaseException:
            pg.rollback()
            raise
        sqlite.execute("DELETE FROM transitions")
        sqlite.execute("DELETE FROM nodes")
        sqlite.commit()
    except pg.errors as exc:
        sqlite.rollback()
        raise OutboxError(f"--to {pg.where}: {exc}") from exc
    except BaseException:
        sqlite.rollback()
        raise
    print(f"moved {len(nodes)} node(s), {len(transitions)} pending transition(s) and "
          f"{statuses} pending status(es) from {path} to {pg.where}; the SQLite outbox "
          "is now empty. Start the bridges with bridge.outbox_url set.", file=out)
