"""Which of the bridges sharing a PostgreSQL outbox is active: a lease with an epoch.

One row (``bridge_lease``) holds the active instance's name, its epoch (raised by one at
every takeover) and a beat counter the active instance raises every ``RENEW_EVERY``
seconds. Nothing compares clocks across machines, and no wall clock is read:

* The active instance counts itself active until ``t0 + duration - MARGIN`` on its own
  monotonic clock, ``t0`` being taken *before* its last successful renewal was sent. It
  forwards and connects to the broker only while that holds (``valid()``).
* A standby takes the lease over only after it has seen the same (holder, epoch, beat) for
  ``duration`` seconds of its own monotonic clock, and only by a compare-and-set on exactly
  that row. The renewal it saw last ran after that renewal's ``t0``, so by then the old
  instance's own deadline has passed, however it is doing: dead, cut off from the
  database, or stopped (SIGSTOP) with its connections still open.
* Every outbox write of the active instance checks its epoch inside the transaction
  (``FOR KEY SHARE``, which a renewal does not wait for and a takeover's ``FOR UPDATE``
  does), so once a takeover commits, the old instance commits nothing more, and
  the takeover itself waits for a write in progress. Before it takes over, a standby ends
  the silent instance's database sessions: one stopped in the middle of a transaction (a
  partition holding its bytes) would otherwise keep its locks for as long as it lasts.

A session-level advisory lock would not do: it lives as long as the database session, and a
stopped process keeps its session. The one window left is a pause of the active process
between its last check of ``valid()`` and the write of one HTTP request to the monitor,
which takes no fencing token; that check is made just before the write.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

from bridge.database import PostgresDatabase, session_names
from yl_core import timestamps

log = logging.getLogger(__name__)

LEASE = 3.0
"""Seconds without a renewal after which a standby takes over."""
RENEW_EVERY = 0.5
MARGIN = 0.5
"""The active instance stops this long before a standby may start (clock rate, scheduling)."""
POLL = 0.25
"""How often a standby looks at the lease."""
LOCK_TIMEOUT_MS = 200
"""A takeover waits at most this long for a write in progress (then tries again)."""

ACTIVE = "active"
STANDBY = "standby"


class Lease:
    """One instance's view of the lease, kept up by a thread of its own: ``role`` says
    whether it is active, ``valid()`` whether it may act on it now."""

    def __init__(self, url: str, instance: str, *, duration: float = LEASE) -> None:
        if duration <= MARGIN + RENEW_EVERY:
            raise ValueError(f"a lease must last more than {MARGIN + RENEW_EVERY:g} s")
        self.url = url
        self.instance = instance
        self.duration = duration
        self.role = STANDBY
        self.epoch: int | None = None
        self.holder: str | None = None
        """The active instance as last seen (None: none)."""
        self.problem = "the lease has not been read yet"
        """Why the lease cannot be read or renewed ("" when it can)."""
        self.since = timestamps.utc_now_iso()
        self._until = float("-inf")
        self._seen: tuple[str | None, int, int] | None = None
        self._seen_at = 0.0
        self._db: PostgresDatabase | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="yl-bridge-lease", daemon=True)
        self.instances: dict[str, tuple[str, int]] = {}
        """Every instance's declared role and beat, as last read (name -> (role, beat))."""

    def valid(self) -> bool:
        """True while this instance may forward, acknowledge and hold the broker session."""
        return time.monotonic() < self._until

    def valid_until(self) -> float:
        """Until when (``time.monotonic()``) ``valid()`` holds, unless renewed."""
        return self._until

    def start(self) -> Lease:
        self._thread.start()
        return self

    def stop(self, *, release: bool = True) -> None:
        """Stop the thread; ``release``: hand the lease over at once (call it only once the
        active work has stopped)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        if release and self.role == ACTIVE and self._db is not None:
            with contextlib.suppress(Exception):
                self._db.execute("UPDATE bridge_lease SET holder = NULL WHERE id = 1 AND "
                                 "epoch = ? AND holder = ?", (self.epoch, self.instance))
                log.info("lease released (epoch %s)", self.epoch)
        self._set_role("stopped")
        if self._db is not None:
            self._db.close()
            self._db = None

    def give_up(self, reason: str) -> None:
        """Stop counting as active (the active work failed); a standby takes over."""
        if self.role == ACTIVE:
            log.error("giving the lease up: %s", reason)
            self._until = float("-inf")
            self._set_role(STANDBY)

    # --- the lease thread ---------------------------------------------------------------

    def _run(self) -> None:
        read_before = False
        while not self._stopping.is_set():
            try:
                self.step()
                if self.problem:
                    if read_before:
                        log.info("lease database reachable again")
                    self.problem = ""
                read_before = True
            except Exception as exc:  # noqa: BLE001 (logged; the lease runs out by itself)
                problem = f"lease: {type(exc).__name__}: {exc}".strip()
                if problem != self.problem:
                    log.warning("%s (an active bridge stops forwarding once its lease runs "
                                "out)", problem)
                self.problem = problem
                if self._db is not None:
                    self._db.close()
                    self._db = None
            self._stopping.wait(RENEW_EVERY if self.role == ACTIVE else POLL)

    def step(self) -> None:
        """One round: renew the lease if active, else look whether it can be taken."""
        if self._db is None:
            db = PostgresDatabase(self.url, name=session_names(self.instance)[2],
                                  lock_timeout_ms=LOCK_TIMEOUT_MS)
            try:
                db.prepare(upgrade=False)
            except BaseException:
                db.close()
                raise
            self._db = db
        db = self._db
        if self.role == ACTIVE:
            self._renew(db)
        else:
            self._watch(db)
        self._beat(db)

    def _renew(self, db: PostgresDatabase) -> None:
        started = time.monotonic()
        row = db.execute("UPDATE bridge_lease SET beat = beat + 1 WHERE id = 1 AND epoch = ? "
                         "AND holder = ? RETURNING beat", (self.epoch, self.instance)
                         ).fetchone()
        if row is not None:
            self._until = started + self.duration - MARGIN
            return
        self._until = float("-inf")
        self._seen = None
        log.error("lease lost: another bridge took over after epoch %s; standing by",
                  self.epoch)
        self._set_role(STANDBY)

    def _watch(self, db: PostgresDatabase) -> None:
        row = db.execute("SELECT holder, epoch, beat FROM bridge_lease WHERE id = 1").fetchone()
        now = time.monotonic()
        seen = (row[0], int(row[1]), int(row[2]))
        self.holder = seen[0]
        if seen != self._seen:
            self._seen, self._seen_at = seen, now
        if seen[0] is not None and now - self._seen_at < self.duration:
            return
        if seen[0] is not None and seen[0] != self.instance:
            self._end_sessions_of(db, seen[0])
        started = time.monotonic()
        # FOR UPDATE waits for the old instance's write in progress (its FOR KEY SHARE).
        taken = db.execute(
            "UPDATE bridge_lease SET holder = ?, epoch = epoch + 1, beat = 0 WHERE id = "
            "(SELECT id FROM bridge_lease WHERE id = 1 FOR UPDATE) AND "
            "holder IS NOT DISTINCT FROM ? AND epoch = ? AND beat = ? RETURNING epoch",
            (self.instance, *seen)).fetchone()
        if taken is None:
            return
        self.epoch = int(taken[0])
        self.holder = self.instance
        self._until = started + self.duration - MARGIN
        if seen[0] is None:
            log.info("lease taken (epoch %d): no bridge held it", self.epoch)
        else:
            log.warning("lease taken over from %s (epoch %d): it has not renewed for %.1f s",
                        seen[0], self.epoch, now - self._seen_at)
        self._set_role(ACTIVE)

    @staticmethod
    def _end_sessions_of(db: PostgresDatabase, instance: str) -> None:
        """End the silent instance's database sessions before taking over: one cut off in
        the middle of a transaction (a partition) would hold its locks, on the lease row
        among them, for as long as the server keeps the session. It no longer counts itself
        active by now; ended, its sessions also fail at once when it wakes up."""
        ended = db.execute("SELECT COUNT(*) FILTER (WHERE pg_terminate_backend(pid)) FROM "
                           "pg_stat_activity WHERE application_name = ANY(?) AND "
                           "pid <> pg_backend_pid()", (list(session_names(instance)),)
                           ).fetchone()[0]
        if ended:
            log.warning("ended %d database session(s) of %s, which has not renewed the lease",
                        ended, instance)

    def _beat(self, db: PostgresDatabase) -> None:
        db.execute("INSERT INTO bridge_instances (instance, role, beat, since) "
                   "VALUES (?, ?, 0, ?) ON CONFLICT (instance) DO UPDATE SET "
                   "role = excluded.role, beat = bridge_instances.beat + 1, "
                   "since = CASE WHEN bridge_instances.role = excluded.role "
                   "THEN bridge_instances.since ELSE excluded.since END",
                   (self.instance, self.role, self.since))
        self.instances = {name: (role, int(beat)) for name, role, beat in db.execute(
            "SELECT instance, role, beat FROM bridge_instances")}

    def _set_role(self, role: str) -> None:
        if role == self.role:
            return
        self.role = role
        self.since = timestamps.utc_now_iso()

    def describe(self) -> dict[str, Any]:
        return {"role": self.role, "instance": self.instance, "epoch": self.epoch,
                "active_instance": self.instance if self.role == ACTIVE else self.holder,
                "lease_valid": self.valid(), "lease_problem": self.problem}
