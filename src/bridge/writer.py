"""The outbox writer: the only thread that writes the outbox, and what it acknowledges.

The broker session hands its messages to one queue (``put``), in the order the broker sent
them. The writer checks them, records them in that order in batches (``Outbox.record``: one
committed transaction, with the deliveries reported since the last write), acknowledges
them in arrival order to the connection they came over once committed, and tells the
forwarder which nodes have something to deliver. It also records silences
(``Outbox.record_silences``): a node quiet for three report intervals is a fact of its story.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from bridge.incoming import Received, StatusHead
from bridge.metrics import Metrics
from bridge.outbox import NotActiveError, Outbox, OutboxError
from yl_core.protocol import Topics

log = logging.getLogger(__name__)

MAX_BATCH = 1000
FLUSH = "flush"
"""Queued to wake the writer when deliveries are waiting to be written."""
FLUSH_DELAY = 0.002
"""Deliveries are written in batches at most this long after the first; a node's next item
waits for its previous delivery to be written."""
TICK = 5.0
"""The longest the writer waits with nothing due (everything it waits for wakes it)."""
WAKE = "wake"
"""Queued to make the writer look again at what is due (the broker session caught up)."""
FLUSH_RETRY = 0.5
"""A failed write of deliveries is tried again this soon."""
CLOCK_SKEW_LIMIT = 60.0
"""A node whose clock is further than this from the bridge's is logged (once)."""

Entry = Received | list[Received] | str | None
"""What the writer's queue carries: a message, a batch, ``FLUSH``, ``WAKE``, or None
(stop)."""


class Acknowledger(Protocol):
    def acknowledge(self, connection: int, messages: list[tuple[int, int]]) -> None: ...


class RejectLog:
    """Logs the first few rejections of each reason, then one in a thousand."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def __call__(self, reason: str, topic: str, message: str) -> None:
        count = self._counts.get(reason, 0) + 1
        self._counts[reason] = count
        if count <= 10 or count % 1000 == 0:
            log.warning("rejected message reason=%s topic=%r count=%d: %s", reason,
                        topic[:120], count, message)


class Session(Protocol):
    """What the writer asks of the bridge's broker session."""

    def reconnect(self, reason: str) -> None:
        """Connect again (the broker redelivers what was not acknowledged)."""


class OutboxWriter:
    def __init__(self, outbox: Outbox, metrics: Metrics, topics: Topics, *,
                 max_nodes: int, notify: Callable[[Iterable[str]], None],
                 session: Session, acknowledger: Acknowledger,
                 give_up: Callable[[str], None] | None = None) -> None:
        """``notify``: nodes with something to deliver (the forwarder); ``give_up``: the
        outbox refused a write for the lease's epoch (an active/standby instance)."""
        self.outbox = outbox
        self.metrics = metrics
        self.topics = topics
        self.max_nodes = max_nodes
        self._notify = notify
        self._session = session
        self.acknowledger = acknowledger
        self._give_up = give_up
        self._queue: queue.Queue[Entry] = queue.Queue()
        self._flush_requested = threading.Event()
        self._reject_log = RejectLog()
        self.skew: dict[str, float] = {}
        """How far each node's clock is from the bridge's (seconds)."""
        self._skew_reported: set[str] = set()
        self._busy_since: float | None = None
        """When the writer took the work it is doing (None: it waits for work)."""
        self._thread = threading.Thread(target=self._run, name="yl-bridge-outbox",
                                        daemon=True)

    def start(self) -> OutboxWriter:
        self._thread.start()
        return self

    def stop(self, timeout: float) -> None:
        """Write what is queued, then end; wait up to ``timeout`` for it."""
        self._queue.put(None)
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stalled_for(self) -> float:
        """How long the writer has been at its current work (seconds; 0.0: it waits for
        work). For the bridge's watchdog and health, any thread."""
        busy = self._busy_since
        return 0.0 if busy is None else time.monotonic() - busy

    def wake(self) -> None:
        """Look again at what is due (any thread)."""
        self._queue.put(WAKE)

    def put(self, entry: Received | list[Received]) -> None:
        """Queue a message or a batch (any thread)."""
        self._queue.put(entry)

    def request_flush(self) -> None:
        """Deliveries wait to be written (``Outbox``'s ``on_change``; any thread)."""
        if not self._flush_requested.is_set():
            self._flush_requested.set()
            self._queue.put(FLUSH)

    def _run(self) -> None:
        """Incoming batches at once (they are acknowledged after the commit), deliveries
        within ``FLUSH_DELAY`` (losing those in a crash only means sending them again), or
        with the next batch if that comes first: one transaction for both."""
        flush_due: float | None = None
        reported = ""
        while True:
            self._busy_since = None
            silence_due = self.outbox.next_silence_check()
            due = [d for d in (flush_due, silence_due) if d is not None]
            timeout = min(max(min(due) - time.monotonic(), 0.0), TICK) if due else TICK
            try:
                batch = [self._queue.get(timeout=timeout)]
            except queue.Empty:
                batch = []
            self._busy_since = time.monotonic()
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            messages: list[Received] = []
            for entry in batch:
                if isinstance(entry, Received):
                    messages.append(entry)
                elif isinstance(entry, list):
                    messages.extend(entry)
            stopping = None in batch
            if FLUSH in batch and flush_due is None:
                flush_due = time.monotonic() + FLUSH_DELAY
            failed = self.outbox.last_error is not None
            flushing = False
            try:
                if flush_due is not None and \
                        (messages or stopping or time.monotonic() >= flush_due):
                    flushing = True
                    flush_due = None
                    self._flush_requested.clear()
                if messages:
                    self._record(messages, flush=flushing)
                elif flushing:
                    self._notify(self.outbox.flush())
                if silence_due is not None and silence_due <= time.monotonic():
                    silent = self.outbox.record_silences()
                    if silent:
                        self.metrics.inc("silences", len(silent))
                        self._notify(silent)
            except NotActiveError as exc:
                if not failed or str(exc) != reported:
                    reported = str(exc)
                    log.error("%s", exc)  # noqa: TRY400
                if self._give_up is not None:
                    self._give_up("the outbox refused a write: the lease was taken over")
                if stopping:
                    return
                continue
            except Exception as exc:
                self.metrics.inc("outbox_errors")
                if not isinstance(exc, OutboxError):
                    log.exception("outbox write failed")
                elif not failed or str(exc) != reported:
                    reported = str(exc)
                    log.error("%s; retrying (nothing unwritten is acknowledged)", exc)  # noqa: TRY400
                if flushing:
                    # The nodes delivered to wait for this write: try it again soon.
                    flush_due = time.monotonic() + FLUSH_RETRY
                if messages and not stopping:
                    # The broker redelivers unacknowledged messages only on a new connection.
                    self._session.reconnect("outbox write failed")
            else:
                if failed and self.outbox.last_error is None:
                    log.info("outbox writes work again")
            if stopping:
                return

    def _record(self, messages: list[Received], *, flush: bool = False) -> None:
        valid: list[Received] = []
        received: dict[str, int] = {}
        for message in messages:
            m = message.checked_by(self.topics)
            checked = m.checked
            assert checked is not None
            if checked.kind == "rebirth":
                continue
            if checked.kind is not None:
                received[checked.kind] = received.get(checked.kind, 0) + 1
            if checked.reason is not None:
                self.metrics.inc("rejected", reason=checked.reason)
                self._reject_log(checked.reason, m.topic, checked.detail)
            elif checked.message is not None and checked.node_id is not None:
                valid.append(m)
                if isinstance(checked.message, StatusHead) and not m.retained:
                    self._note_clock(checked.node_id, m.sent - checked.message.timestamp)
        for kind, count in received.items():
            self.metrics.inc("received", count, kind=kind)
        result, touched = self.outbox.record(valid, flush=flush)
        self.metrics.inc("coalesced", result.coalesced)
        self.metrics.inc("rejected", result.stale, reason="stale")
        self.metrics.inc("duplicates", result.duplicates)
        self.metrics.inc("withdrawn", result.withdrawn)
        self.metrics.inc("dropped", result.dropped, reason="transition_cap")
        self.metrics.inc("dropped", result.too_many_nodes, reason="too_many_nodes")
        if result.too_many_nodes:
            log.error("outbox: %d message(s) from new nodes dropped: more than %d nodes",
                      result.too_many_nodes, self.max_nodes)
        acks: dict[int, list[tuple[int, int]]] = {}
        for m in messages:
            if m.qos > 0:
                acks.setdefault(m.connection, []).append((m.mid, m.qos))
        for connection, pairs in acks.items():
            self.acknowledger.acknowledge(connection, pairs)
        self._notify(touched)

    def _note_clock(self, node_id: str, skew: float) -> None:
        """Remember how far the node's clock is from ours; its timestamps are forwarded as
        they are, and nothing is ordered by them."""
        if node_id not in self.skew and len(self.skew) >= self.max_nodes:
            return
        self.skew[node_id] = skew
        if abs(skew) > CLOCK_SKEW_LIMIT and node_id not in self._skew_reported:
            self._skew_reported.add(node_id)
            self.metrics.inc("clock_skew_reports")
            log.warning("node %s: its clock is %+.0f s from the bridge's; its timestamps are "
                        "forwarded as they are", node_id, -skew)
