"""The bridge's broker session, received in a process of its own.

One persistent session (``{client_id}``) reads every node's ``state`` and ``status`` with one
subscription, so a node's messages come in the order the broker got them: the statuses a
node published before its will come before its ``lost`` (``python -m bench.will_order``).
The same connection carries the bridge's own presence: its retained ``state``, ``ready`` on
every connect, ``disconnected`` on a clean stop, and ``lost`` as its will.

Statuses are the flood (every node, every interval). paho's per-message work in Python would
otherwise share the bridge's interpreter lock with recording and forwarding, so a child
process runs the link and hands batches of checked messages to the bridge over a socket
pair. The bridge records them and sends back which ones to acknowledge: a message is still
acknowledged only once it is committed in the outbox. If the child ends, it is started again
and the broker redelivers what was not acknowledged; if the bridge ends, the child sees its
socket close and exits. ``bridge.status_receiver: thread`` runs the same on a thread of the
bridge's process (``python -m bench.bridge --only receiver`` sets them side by side).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

import paho.mqtt.client as mqtt

from bridge.incoming import Received, StatusHead
from bridge.receiver_messages import (
    Ack,
    Allow,
    Batch,
    FromChild,
    Presence,
    Publish,
    Reconnect,
    SessionEvent,
    Setup,
    Stop,
    ToChild,
    Unread,
)
from bridge.refresh import BEHIND, RetainedRefresh, subscribe_without_retained
from yl_core.config import LoggingConfig
from yl_core.link import Link, LinkDown, LinkOptions
from yl_core.protocol import StateMessage, Topics, bridge_sentinel_topic
from yl_core.service import configure_logging

log = logging.getLogger("bridge.status_receiver")
"""Named, not ``__name__``: the child runs this module as ``__main__``."""

RESTART_DELAY = 1.0
ALIVE_EVERY = 2.0
"""The child says it is alive this often, whatever else it has to say."""
HANG_TIMEOUT = 5.0
"""A child silent this long is hung (stopped, deadlocked): it is killed and replaced."""
LINGER = 0.01
"""A live status waits this long at most for others to go to the bridge with it: one hand-off,
one commit of the outbox and one acknowledgement for the lot. Anything else (a state, the
end of a retained round) and a batch of ``LINGER_BATCH`` go at once, with what waits."""
LINGER_BATCH = 100
"""Below the session's receive maximum (``service.IN_FLIGHT``): the broker sends no more
unacknowledged messages than that, and nothing is acknowledged before it reached the bridge."""
ALLOW_EVERY = 0.25
"""How often the bridge tells the child until when it may connect (its lease's deadline, on
the machine's monotonic clock, which both processes read): a bridge that is stopped or no
longer active keeps its child from taking the active one's session."""


class StatusReceiver:
    """The bridge's end: starts and supervises the child, passes its batches on."""

    def __init__(self, options: LinkOptions, topics: Topics, qos: int,
                 on_messages: Callable[[list[Received]], None],
                 logging_config: LoggingConfig,
                 allowed_until: Callable[[], float] | None = None,
                 on_caught_up: Callable[[bool], None] | None = None,
                 in_thread: bool = False,
                 on_missed: Callable[[], None] | None = None,
                 presence: Presence | None = None) -> None:
        """``allowed_until``: until when (``time.monotonic()``) the child may connect; asked
        before it is started, and passed on to it every ``ALLOW_EVERY``. ``on_caught_up``:
        called with True once the session has caught up with what the broker kept for it
        (after each connect), with False when it is down. ``in_thread``: run the session
        on a thread of this process instead of a child process. ``on_missed``: called when
        the session may have missed statuses and asks for the retained ones again.
        ``presence``: the bridge's own state, published on the same connection."""
        self._in_thread = in_thread
        self._setup = Setup(options, topics, qos, logging_config, allowed_until is not None,
                            presence)
        self._allowed_until = allowed_until
        self._on_messages = on_messages
        self._on_caught_up = on_caught_up or (lambda _caught_up: None)
        self._on_missed = on_missed or (lambda: None)
        self._conn: Connection | None = None
        self._process: subprocess.Popen[bytes] | _ChildThread | None = None
        self._send_lock = threading.Lock()
        self._stopping = threading.Event()
        self._connected = False
        self.connects = 0
        """Connections the session has made (counted by the bridge's reader)."""
        self.problem = ""
        """Why the receiver is not working, for the bridge's health ("" when it is)."""
        self.unread = ""
        """What the broker does not let the session read, as the messages tell ("": statuses
        come, or nothing tells yet)."""
        self._thread = threading.Thread(target=self._supervise, name="yl-bridge-statuses",
                                        daemon=True)

    @property
    def connected(self) -> bool:
        return self._connected

    def start(self) -> StatusReceiver:
        self._thread.start()
        return self

    def acknowledge(self, connection: int, messages: list[tuple[int, int]]) -> None:
        """Acknowledge ``(mid, qos)`` pairs received on connection number ``connection``
        (ignored if that connection has ended meanwhile)."""
        self._send(Ack(connection, messages))

    def reconnect(self, reason: str) -> None:
        self._send(Reconnect(reason))

    def publish(self, topic: str, payload: bytes) -> bool:
        """Publish a retained message of the bridge's own; False if the session is not
        connected (nothing is queued)."""
        return self._connected and self._send(Publish(topic, payload))

    def stop(self, timeout: float, *, goodbye: bool = True) -> None:
        """Stop within ``timeout``; ``goodbye``: publish the presence's ``disconnected``
        first (a fenced instance says goodbye to no one)."""
        deadline = time.monotonic() + timeout
        self._stopping.set()
        self._send(Stop(max(timeout - 0.5, 0.1), goodbye))
        self._thread.join(max(deadline - time.monotonic(), 0.0))
        process = self._process
        if process is not None:
            try:
                process.wait(max(deadline - time.monotonic(), 0.05))
            except subprocess.TimeoutExpired:
                log.warning("status receiver did not stop in time; killing it")
                process.kill()
                process.wait()
                self._thread.join(1.0)
        with self._send_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _send(self, command: ToChild) -> bool:
        """Whether the command went to a running child."""
        with self._send_lock:
            if self._conn is None:
                return False
            # A child that is gone gets started again by the supervisor.
            try:
                self._conn.send(command)
            except OSError:
                return False
            return True

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            if self._allowed_until is not None and \
                    time.monotonic() >= self._allowed_until():
                self._stopping.wait(ALLOW_EVERY)
                continue
            try:
                conn = self._spawn()
            except OSError:
                log.exception("could not start the status receiver")
            else:
                self._read(conn)
                self._connected = False
                self._on_caught_up(False)
                with self._send_lock:
                    conn.close()
                    if self._conn is conn:
                        self._conn = None
                if self._stopping.is_set():
                    return
                assert self._process is not None
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._process.wait(2.0)
                log.error("status receiver ended (exit code %s); starting it again",
                          self._process.returncode)
            self._stopping.wait(RESTART_DELAY)

    def _replace_hung(self) -> None:
        self._connected = False
        self.problem = f"status receiver has not answered for {HANG_TIMEOUT:g} s; replaced"
        log.error("status receiver has not answered for %g s; killing it and starting "
                  "another", HANG_TIMEOUT)
        process = self._process
        if process is not None:
            process.kill()

    def _spawn(self) -> Connection:
        ours, theirs = socket.socketpair()
        process: subprocess.Popen[bytes] | _ChildThread
        if self._in_thread:
            process = _ChildThread(theirs)
        else:
            try:
                process = subprocess.Popen(
                    [sys.executable, "-m", "bridge.status_receiver", "--fd",
                     str(theirs.fileno())],
                    pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
            except BaseException:
                ours.close()
                raise
            finally:
                theirs.close()
        conn = Connection(ours.detach())
        try:
            conn.send(self._setup)
        except OSError:
            conn.close()
            process.kill()
            process.wait()
            raise
        with self._send_lock:
            self._conn, self._process = conn, process
        return conn

    def _read(self, conn: Connection) -> None:
        heard = time.monotonic()
        told = float("-inf")
        while True:
            now = time.monotonic()
            if self._allowed_until is not None and now - told >= ALLOW_EVERY:
                told = now
                self._send(Allow(self._allowed_until()))
            # Wake for the child's words (at least every ALIVE_EVERY), when it has been
            # silent for HANG_TIMEOUT, and, with a lease, to tell it the deadline.
            wait = heard + HANG_TIMEOUT - now
            if self._allowed_until is not None:
                wait = min(wait, ALLOW_EVERY)
            try:
                if not conn.poll(max(wait, 0.0)):
                    if time.monotonic() - heard >= HANG_TIMEOUT:
                        self._replace_hung()
                        return
                    continue
                message: FromChild = conn.recv()
            except (EOFError, OSError):
                return
            heard = time.monotonic()
            if isinstance(message, Batch):
                try:
                    self._on_messages(message.messages)
                except Exception:
                    log.exception("passing received statuses on failed")
            elif isinstance(message, Unread):
                if message.problem and message.problem != self.unread:
                    log.error("%s", message.problem)
                self.unread = message.problem
            elif message.what == "up":
                self.connects += 1
                self._connected = True
                self.problem = ""
            elif message.what == "caught_up":
                self._on_caught_up(True)
            elif message.what == "missed":
                self._on_missed()
            elif message.what == "down":
                self._connected = False
                self._on_caught_up(False)
            elif message.what == "stopped":
                return


class _ChildThread:
    """The child's end on a thread of the bridge's process, behind what the supervisor uses
    of a child process (``wait``, ``kill``, ``returncode``)."""

    def __init__(self, theirs: socket.socket) -> None:
        self._socket = theirs
        self._conn = Connection(os.dup(theirs.fileno()))
        self.returncode: int | None = None
        self._thread = threading.Thread(target=self._run, name="yl-bridge-statuses-receiver",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            setup: Setup = self._conn.recv()
            _Child(self._conn, setup).run()
            self.returncode = 0
        except Exception:
            log.exception("status receiver failed")
            self.returncode = 1
        finally:
            self._conn.close()
            self._socket.close()

    def wait(self, timeout: float | None = None) -> int | None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise subprocess.TimeoutExpired("status receiver thread", timeout or 0.0)
        return self.returncode

    def kill(self) -> None:
        """A thread cannot be killed: its end of the socket pair is shut, which ends a
        receiver that still reads it (a hung one is abandoned)."""
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)


class _Child:
    """The child's end: one link, a batching sender thread, commands from the bridge."""

    def __init__(self, conn: Connection, setup: Setup) -> None:
        self.conn = conn
        options = setup.options
        self.allowed_until = float("-inf")
        self.topics = setup.topics
        self.qos = setup.qos
        self.presence = setup.presence
        self.send_lock = threading.Lock()
        self.buffer: list[Received] = []
        self.buffer_lock = threading.Lock()
        self.round: list[Received] = []
        """The retained copies of the round going on, passed on together when it is over
        (under ``buffer_lock``)."""
        self.newest: dict[str, tuple[str, int]] = {}
        """Each node's newest live status seen (session, seq), for ``_check_for_loss``
        (sender thread only)."""
        self.read = _ReadCheck(setup.options.username or setup.options.client_id,
                               setup.topics)
        self.caught_up = False
        """The session has caught up since it connected, retained copies included."""
        self.pending = threading.Event()
        """Something waits in the buffer."""
        self.urgent = threading.Event()
        """What waits in the buffer goes now, without lingering."""
        self.stopping = False
        self.stopped = threading.Event()
        self.current: tuple[mqtt.Client, int] | None = None
        self.connections = 0
        self.refresh = RetainedRefresh(setup.topics.all_nodes,
                                       bridge_sentinel_topic(options.client_id),
                                       name="yl-bridge-statuses-refresh",
                                       on_round=self._caught_up)
        self.link = Link(options, on_connect=self._on_connect, on_message=self._on_message,
                         on_down=self._on_down, on_subscribe=self.refresh.subscribed,
                         name="yl-bridge-statuses-link",
                         allow=self._allowed if setup.gated else None)

    def _allowed(self) -> bool:
        return time.monotonic() < self.allowed_until

    def run(self) -> None:
        sender = threading.Thread(target=self._send_batches, name="yl-bridge-statuses-send",
                                  daemon=True)
        sender.start()
        threading.Thread(target=self._say_alive, name="yl-bridge-statuses-alive",
                         daemon=True).start()
        self.refresh.start()
        self.link.start()
        try:
            while True:
                try:
                    command: ToChild = self.conn.recv()
                except (EOFError, OSError):
                    self.link.abandon("the bridge is gone; status receiver exiting",
                                      level=logging.INFO, with_will=True)
                    return
                if isinstance(command, Allow):
                    self.allowed_until = command.until
                elif isinstance(command, Ack):
                    self._acknowledge(command.connection, command.messages)
                elif isinstance(command, Reconnect):
                    self.link.reconnect(command.reason)
                elif isinstance(command, Publish):
                    self._publish(command.topic, command.payload)
                else:
                    presence = self.presence
                    self.link.stop(command.timeout, farewell=None if presence is None or
                                   not command.goodbye else _goodbye(presence))
                    self.stopping = True
                    self.stopped.set()
                    self.urgent.set()
                    self.pending.set()
                    sender.join(1.0)
                    self._send(SessionEvent("stopped"))
                    return
        finally:
            self.stopping = True
            self.stopped.set()
            self.urgent.set()
            self.pending.set()
            self.refresh.stop()

    def _acknowledge(self, connection: int, messages: list[tuple[int, int]]) -> None:
        current = self.current
        if current is None or current[1] != connection:
            return
        client = current[0]
        for mid, qos in messages:
            client.ack(mid, qos)

    def _publish(self, topic: str, payload: bytes) -> None:
        current = self.current
        if current is not None:
            current[0].publish(topic, payload, qos=1, retain=True)

    def _caught_up(self) -> None:
        """A retained round is over: the first after a connect says the session has caught
        up; every round says what the broker did not let the session read."""
        with self.buffer_lock:
            first = not self.caught_up
            self.caught_up = True
            self.buffer.extend(_claims_in_order(self.round))
            self.round = []
            self.buffer.append(_ROUND_OVER)
        self.urgent.set()
        self.pending.set()
        if first:
            self._send(SessionEvent("caught_up"))

    def _check_for_loss(self, entry: Received) -> None:
        """Whether statuses may have been dropped on the way: a live status more than one
        ``seq`` past the node's newest of its session (the ones between were dropped or
        expired), or one that waited at the broker ``BEHIND`` seconds or more (the session
        was far behind: the broker's queue for it may have overflowed, the newest of some
        nodes with it). Either way the retained statuses are read again once the session
        has caught up."""
        checked = entry.checked
        head = None if checked is None else checked.message
        if entry.retained or checked is None or checked.node_id is None or \
                not isinstance(head, StatusHead):
            return
        node = checked.node_id
        newest = self.newest.get(node)
        gap = newest is not None and newest[0] == head.session and head.seq > newest[1] + 1
        if newest is None or newest[0] != head.session or head.seq > newest[1]:
            self.newest[node] = (head.session, head.seq)
        behind = entry.received - entry.sent
        if behind < 1.0:
            self.refresh.live()
        if (gap or behind >= BEHIND) and self.refresh.missed():
            if gap:
                assert newest is not None
                log.warning("statuses were dropped on the way to the bridge (%s: seq %d after "
                            "%d); reading the retained statuses again", node, head.seq,
                            newest[1])
            else:
                log.warning("the bridge's session is %.0f s behind the broker, whose queue "
                            "for it may overflow; reading the retained messages again once "
                            "it has caught up", behind)
            self._send(SessionEvent("missed"))

    def _on_connect(self, client: mqtt.Client, session_present: bool) -> None:
        with self.buffer_lock:
            self.caught_up = False
        self.connections += 1
        self.current = (client, self.connections)
        subscribe_without_retained(client, [self.topics.all_states, self.topics.all_statuses],
                                   self.qos)
        self.refresh.connected(client)
        if self.presence is not None:
            client.publish(self.presence.topic, self.presence.ready, qos=1, retain=True)
        log.info("bridge subscribed to every node's state and status session_present=%s",
                 session_present)
        self._send(SessionEvent("up"))

    def _on_message(self, client: mqtt.Client, message: mqtt.MQTTMessage) -> None:
        self.refresh.received()
        if message.qos == 0 and not message.retain:
            # A live message's copy for the round's QoS 0 subscription: it is not queued
            # behind the session's QoS 1 messages, so it may overtake them; the session's own
            # subscription brings the message in order (nodes publish at QoS 1).
            return
        current = self.current
        connection = current[1] if current is not None and current[0] is client else 0
        item = Received(connection, message.mid, message.qos, message.topic,
                        bytes(message.payload), time.time(), bool(message.retain),
                        getattr(message.properties, "MessageExpiryInterval", None))
        if item.retained:
            with self.buffer_lock:
                self.round.append(item)
            return
        with self.buffer_lock:
            self.buffer.append(item)
            waiting = len(self.buffer)
        if waiting >= LINGER_BATCH or not self.topics.is_status(item.topic):
            self.urgent.set()
        self.pending.set()

    def _on_down(self, event: LinkDown) -> None:
        self.refresh.down()
        self.current = None
        with self.buffer_lock:
            self.round = []  # the next connection reads them again
        self._send(SessionEvent("down"))

    def _say_alive(self) -> None:
        while not self.stopping:
            self._send(SessionEvent("alive"))
            self.stopped.wait(ALIVE_EVERY)

    def _send_batches(self) -> None:
        while True:
            self.pending.wait()
            self.urgent.wait(LINGER)
            self.urgent.clear()
            self.pending.clear()
            with self.buffer_lock:
                batch, self.buffer = self.buffer, []
            received: list[Received] = []
            for entry in batch:
                if entry is _ROUND_OVER:
                    unread = self.read.round_over()
                    if unread is not None:
                        self._send(Unread(unread))
                    continue
                checked = entry.checked_by(self.topics)
                self._check_for_loss(checked)
                self.read.saw(checked)
                received.append(checked)
            if received:
                self._send(Batch(received))
            if self.stopping:
                return

    def _send(self, message: FromChild) -> None:
        with self.send_lock, contextlib.suppress(OSError):
            self.conn.send(message)


def _claims_in_order(copies: list[Received]) -> list[Received]:
    """A round's retained copies, passed on in one batch (one transaction of the outbox),
    every state before every status, otherwise in the order they came. Copies come per
    topic, in no order: a node's state names its session, and its status, read right after,
    is that session's newest (or, when the state ended the session, the end's snapshot,
    folded in before the end can go out instead of making it told twice)."""
    return sorted(copies, key=lambda copy: copy.topic.endswith("/status"))


_ROUND_OVER = Received(0, 0, 0, "", b"", 0.0)
"""Put in the buffer where a retained round ended (never sent to the bridge)."""


class _ReadCheck:
    """Whether the broker lets the session read both topics, as far as the messages tell.

    mosquitto grants a subscription its ACL does not allow and then sends nothing of it, so
    a login whose ACL was written for an earlier release (the bridge's states and statuses
    on two logins) reads the states only. A round of retained copies that brought the state
    of a node that is up, and no status at all since the receiver started, says statuses are
    not read (a node that is up has a fresh retained status). Sender thread only."""

    def __init__(self, login: str, topics: Topics) -> None:
        self.login = login
        self.topics = topics
        self.ready = 0
        self.statuses = 0
        self.told = ""

    def saw(self, entry: Received) -> None:
        checked = entry.checked
        message = None if checked is None else checked.message
        if isinstance(message, StateMessage):
            self.ready += message.state == "ready"
        elif isinstance(message, StatusHead):
            self.statuses += 1

    def round_over(self) -> str | None:
        """What to tell the bridge (None: nothing new)."""
        problem = ""
        if self.ready and not self.statuses:
            problem = self._problem(self.topics.all_statuses, f"{self.ready} node state(s) "
                                    "saying ready and no status")
        if problem == self.told:
            return None
        self.told = problem
        return problem

    def _problem(self, topic: str, seen: str) -> str:
        return (f"the broker sent {seen}: it may not let the bridge's login {self.login!r} "
                f"read {topic}; an ACL written for a release before 2026-12-08 gives that "
                "login the states only (deploy/install.sh adds the line, or add "
                f"'topic read {topic}' under 'user {self.login}' in the ACL, then reload "
                "mosquitto)")


def _goodbye(presence: Presence) -> Callable[[mqtt.Client], mqtt.MQTTMessageInfo]:
    def goodbye(client: mqtt.Client) -> mqtt.MQTTMessageInfo:
        return client.publish(presence.topic, presence.goodbye, qos=1, retain=True)
    return goodbye


def main() -> None:
    parser = argparse.ArgumentParser(description="the bridge's status receiver (internal)")
    parser.add_argument("--fd", type=int, required=True)
    args = parser.parse_args()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the bridge stops it
    conn = Connection(args.fd)
    setup: Setup = conn.recv()
    configure_logging(setup.logging)
    _Child(conn, setup).run()


if __name__ == "__main__":
    main()
