"""One supervised MQTT 5 connection, shared by the publisher, the bridge and the status app.

A ``Link`` owns a supervisor thread that connects (never on the caller's thread), runs paho's
network thread while connected, and reconnects with jittered exponential backoff. Every
connection uses a fresh paho client, so nothing queued for a dead connection is replayed on
the next one. Callbacks given to the link are wrapped so that an exception is logged
instead of killing the loop, and must be short. ``on_connect``, ``on_message``,
``on_subscribe`` and ``on_publish`` run on paho's network thread of the current connection;
``on_down`` runs there too when a connection drops, on the supervisor thread when an attempt
fails, and on the caller's thread of ``abandon()``: it must take what locks it needs.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from yl_core.config import ENV_CONFIG_PATH, MqttConfig, TlsConfig

log = logging.getLogger(__name__)

SESSION_TAKEN_OVER: Final = 142
ALLOW_POLL: Final = 0.1
_FATAL_CONNACK: Final = frozenset({132})  # unsupported protocol version


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True
    expiry: int | None = None
    """MQTT 5 message expiry of the will, in seconds."""


@dataclass(frozen=True)
class LinkOptions:
    """Everything needed to (re)connect; see ``options_from_config``."""

    client_id: str
    host: str
    port: int
    keepalive: int = 10
    username: str | None = None
    password: str | None = None
    tls: TlsConfig = field(default_factory=TlsConfig)
    clean_start: bool = True
    session_expiry: int = 0
    will: Will | None = None
    manual_ack: bool = False
    receive_maximum: int | None = None
    """How many unacknowledged QoS 1 messages the broker may send at once (MQTT 5 Receive
    Maximum); None: the broker's own limit (mosquitto's ``max_inflight_messages``, 20)."""
    backoff_initial: float = 0.25
    backoff_max: float = 30.0
    connect_timeout: float = 5.0
    login_source: str | None = None
    """Where the login was configured (a config file, ``<defaults>``): named when the broker
    refuses a connection that has no password."""


def options_from_config(mqtt_config: MqttConfig, client_id: str, *, source: str | None = None,
                        **overrides: Any) -> LinkOptions:
    """``source``: the config's ``source``, named if the broker refuses a missing login."""
    values: dict[str, Any] = {
        "login_source": source,
        "client_id": client_id,
        "host": mqtt_config.host,
        "port": mqtt_config.port,
        "keepalive": mqtt_config.keepalive,
        "username": mqtt_config.username,
        "password": mqtt_config.password,
        "tls": mqtt_config.tls,
    }
    values.update(overrides)
    return LinkOptions(**values)


@dataclass(frozen=True)
class LinkDown:
    """Why a connection ended (or never came up)."""

    reason: str
    fatal: bool = False


ConnectHandler = Callable[[mqtt.Client, bool], None]
MessageHandler = Callable[[mqtt.Client, mqtt.MQTTMessage], None]
DownHandler = Callable[[LinkDown], None]
FarewellHandler = Callable[[mqtt.Client], "mqtt.MQTTMessageInfo | None"]


_ANONYMOUS_REFUSED = frozenset({130, 134, 135})
"""CONNACK reasons mosquitto gives a client without a username when anonymous access is off
(protocol error with ``use_username_as_clientid``, bad user name or password, not
authorized)."""


def _login_hint(source: str | None) -> str:
    keys = "mqtt.username and mqtt.password"
    if source is None:
        return f"configure a login ({keys})"
    if source.startswith("<"):
        return (f"no config file was read ({source}): write one with {keys}, and name it "
                f"with -c or ${ENV_CONFIG_PATH}")
    return f"add {keys} to {source} (or set ${ENV_CONFIG_PATH} to a file that has them)"


def _describe(code: Any) -> str:
    if isinstance(code, ReasonCode):
        return f"{code.getName()} ({code.value})"
    return str(code)


class Link:
    """A connection that stays up by itself until ``stop()``.

    ``on_connect(client, session_present)`` runs on paho's thread after every successful
    CONNACK (birth, subscriptions); ``on_message`` for every message; ``on_down`` whenever a
    connection ends or an attempt fails (see the module's note on threads). ``connected`` is
    true between CONNACK and the drop.
    """

    def __init__(
        self,
        options: LinkOptions,
        *,
        on_connect: ConnectHandler | None = None,
        on_message: MessageHandler | None = None,
        on_down: DownHandler | None = None,
        on_publish: Callable[[int, int], None] | None = None,
        on_subscribe: Callable[[mqtt.Client, int], None] | None = None,
        name: str = "mqtt-link",
        allow: Callable[[], bool] | None = None,
    ) -> None:
        """``allow``: asked before every connection attempt; while it says False the link
        waits instead (a standby bridge must not take the active one's session over)."""
        self.options = options
        self._allow = allow
        self._on_connect = on_connect
        self._on_message = on_message
        self._on_down = on_down
        self._on_publish = on_publish
        self._on_subscribe = on_subscribe
        self._name = name
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._client: mqtt.Client | None = None
        self._connected = False
        self._dropped = False
        self._refused = False
        self._fatal: LinkDown | None = None
        self._farewell: FarewellHandler | None = None
        self._with_will = False
        """Disconnect with reason 4 (MQTT 5): the broker publishes the will all the same."""
        self._farewell_timeout = 0.0
        self._thread: threading.Thread | None = None
        self._last_failure: str | None = None
        self._failures = 0
        self._requested = False
        self.connect_count = 0

    # --- public ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        with self._lock:
            return self._connected

    @property
    def fatal(self) -> LinkDown | None:
        """Set when the link gave up for good (session taken over)."""
        return self._fatal

    @property
    def client(self) -> mqtt.Client | None:
        """The paho client while connected, for ``publish``/``ack`` from any thread."""
        with self._lock:
            return self._client if self._connected else None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._supervise, name=self._name, daemon=True)
        self._thread.start()

    def reconnect(self, reason: str) -> None:
        """Drop the current connection (from any thread); the link connects again, and a
        persistent session gets its unacknowledged messages redelivered."""
        client = self.client
        if client is not None:
            log.warning("%s: reconnecting: %s", self._name, reason)
            self._requested = True
            client.disconnect()

    def abandon(self, reason: str, *, level: int = logging.ERROR,
                with_will: bool = False) -> None:
        """Give up for good (from any thread): disconnect and never reconnect. ``level``: of
        the log line saying why (an expected end is not an error). ``with_will``: the
        process the connection speaks for is gone; the broker publishes its will."""
        self._with_will = self._with_will or with_will
        if self._fatal is None:
            self._fatal = LinkDown(reason, fatal=True)
            log.log(level, "%s: %s", self._name, reason)
        self._stopping.set()
        self._wake.set()
        self._notify_down(self._fatal)

    def stop(self, timeout: float = 2.0, farewell: FarewellHandler | None = None) -> bool:
        """Stop within ``timeout`` seconds; returns whether everything finished in time.

        ``farewell(client)`` runs on the link's thread if connected, and the link waits for
        the message it returns to be acknowledged before disconnecting.
        """
        deadline = time.monotonic() + max(timeout, 0.0)
        self._farewell = farewell
        self._farewell_timeout = max(timeout - 0.2, timeout * 0.8, 0.0)
        self._stopping.set()
        self._wake.set()
        thread = self._thread
        if thread is None:
            return True
        if thread is not threading.current_thread():
            thread.join(max(deadline - time.monotonic(), 0.0))
        return not thread.is_alive()

    # --- supervisor thread ----------------------------------------------------------------

    def _supervise(self) -> None:
        attempt = 0
        try:
            while not self._stopping.is_set():
                if self._allow is not None and not self._allow():
                    self._stopping.wait(ALLOW_POLL)
                    continue
                client = self._new_client()
                if not self._connect(client):
                    attempt += 1
                    self._stopping.wait(self._backoff(attempt))
                    continue
                up_since = self._run_connection(client)
                if self._fatal is not None:
                    return
                if self._stopping.is_set():
                    return
                if self._requested:
                    # Our own reconnect (to have unacknowledged messages sent again) is no
                    # failure of the broker's: come back after the shortest backoff, however
                    # many came before.
                    self._requested = False
                    attempt = 0
                    self._stopping.wait(self._backoff(0))
                    continue
                attempt = 0 if up_since is not None and time.monotonic() - up_since > 5 else \
                    attempt + 1
                self._stopping.wait(self._backoff(attempt))
        except Exception:
            log.exception("%s: supervisor crashed", self._name)

    def _backoff(self, attempt: int) -> float:
        return backoff_delay(attempt, self.options.backoff_initial, self.options.backoff_max)

    def _new_client(self) -> mqtt.Client:
        o = self.options
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=o.client_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
            manual_ack=o.manual_ack,
        )
        client.connect_timeout = o.connect_timeout
        client.max_inflight_messages_set(100)
        if o.username is not None:
            client.username_pw_set(o.username, o.password)
        if o.tls.enabled:
            context = ssl.create_default_context(cafile=o.tls.ca_file)
            if o.tls.cert_file:
                context.load_cert_chain(o.tls.cert_file, o.tls.key_file)
            client.tls_set_context(context)
        if o.will is not None:
            props = None
            if o.will.expiry is not None:
                props = new_properties(PacketTypes.WILLMESSAGE)
                props.MessageExpiryInterval = o.will.expiry
            client.will_set(o.will.topic, o.will.payload, o.will.qos, o.will.retain, props)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        client.on_publish = self._handle_publish
        client.on_subscribe = self._handle_subscribe
        return client

    def _connect(self, client: mqtt.Client) -> bool:
        o = self.options
        props = new_properties(PacketTypes.CONNECT)
        if o.session_expiry:
            props.SessionExpiryInterval = o.session_expiry
        if o.receive_maximum is not None:
            props.ReceiveMaximum = o.receive_maximum
        self._dropped = False
        self._wake.clear()
        try:
            client.connect(o.host, o.port, o.keepalive, clean_start=o.clean_start,
                           properties=props)
        except (OSError, ValueError) as exc:
            reason = f"cannot reach broker {o.host}:{o.port}: {exc}"
            self._note_failure(reason)
            self._notify_down(LinkDown(reason))
            return False
        sock = client.socket()
        if isinstance(sock, socket.socket):
            with suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._client = client
        client.loop_start()
        return True

    def _run_connection(self, client: mqtt.Client) -> float | None:
        """Wait until the connection drops or the link stops; returns when it came up."""
        o = self.options
        connack_deadline = time.monotonic() + o.connect_timeout + o.keepalive
        up_since: float | None = None
        while True:
            if up_since is None and not self._connected:
                self._wake.wait(max(connack_deadline - time.monotonic(), 0.0))
            else:
                self._wake.wait()
            self._wake.clear()
            if self._connected and up_since is None:
                up_since = time.monotonic()
            if self._stopping.is_set():
                self._shutdown(client)
                return up_since
            if self._dropped:
                break
            if up_since is None and time.monotonic() > connack_deadline:
                self._note_failure(f"no CONNACK from {o.host}:{o.port}")
                self._notify_down(LinkDown("no CONNACK"))
                break
        self._discard(client)
        return up_since

    def _shutdown(self, client: mqtt.Client) -> None:
        farewell = self._farewell
        if self._connected and farewell is not None and self._fatal is None:
            try:
                info = farewell(client)
                if info is not None:
                    info.wait_for_publish(self._farewell_timeout)
            except (RuntimeError, ValueError) as exc:
                log.warning("%s: final message not sent: %s", self._name, exc)
            except Exception:
                log.exception("%s: final message failed", self._name)
        with self._lock:
            self._connected = False
        try:
            if self._with_will:
                client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT,
                                                        "Disconnect with will message"))
            else:
                client.disconnect()
        except Exception:
            log.debug("%s: disconnect failed", self._name, exc_info=True)
        self._discard(client)

    def _discard(self, client: mqtt.Client) -> None:
        with self._lock:
            self._connected = False
            if self._client is client:
                self._client = None
        client.loop_stop()
        for attr in ("_sockpairR", "_sockpairW"):
            pair = getattr(client, attr, None)
            if pair is not None:
                with suppress(OSError):
                    pair.close()
                setattr(client, attr, None)

    def _note_failure(self, message: str, *, level: int = logging.WARNING) -> None:
        self._failures += 1
        if message != self._last_failure:
            log.log(level, "%s: %s (retrying with backoff)", self._name, message)
            self._last_failure = message
        else:
            log.debug("%s: %s (attempt %d)", self._name, message, self._failures)

    def _notify_down(self, event: LinkDown) -> None:
        call_listener(self._on_down, event, name=f"{self._name} on_down")

    # --- paho callbacks (paho's thread): short, never raise -------------------------------

    def _handle_connect(self, client: mqtt.Client, userdata: Any, flags: Any,
                        reason_code: ReasonCode, properties: Any) -> None:
        try:
            if reason_code.is_failure:
                fatal = reason_code.value in _FATAL_CONNACK
                why = _describe(reason_code)
                no_login = not self.options.password and \
                    reason_code.value in _ANONYMOUS_REFUSED
                if no_login:
                    # mosquitto refuses a login without a username in several ways (130,
                    # 134, 135, depending on its settings); say what it means here.
                    who = "a connection without a username" if self.options.username is None \
                        else f"user {self.options.username!r} without a password"
                    why = (f"the broker refused {who} ({why}): anonymous access is off; "
                           f"{_login_hint(self.options.login_source)}")
                self._note_failure(f"broker refused connection: {why}",
                                   level=logging.ERROR if no_login else logging.WARNING)
                self._refused = True
                self._notify_down(LinkDown(f"refused: {why}", fatal))
                self._dropped = True
                self._wake.set()
                return
            if self._failures:
                log.info("%s: connected to %s:%d after %d failed attempt(s)", self._name,
                         self.options.host, self.options.port, self._failures)
            else:
                log.info("%s: connected to %s:%d", self._name, self.options.host,
                         self.options.port)
            self._failures = 0
            self._last_failure = None
            self.connect_count += 1
            with self._lock:
                self._connected = True
            self._wake.set()
            if self._on_connect is not None:
                self._on_connect(client, bool(flags.session_present))
        except Exception:
            log.exception("%s: on_connect handler failed", self._name)

    def _handle_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any,
                           reason_code: ReasonCode, properties: Any) -> None:
        try:
            with self._lock:
                was_connected, self._connected = self._connected, False
            self._dropped = True
            self._wake.set()
            refused, self._refused = self._refused, False
            if self._stopping.is_set() or (refused and not was_connected):
                return  # the refusal was reported; paho's disconnect after it says less
            code = reason_code.value if isinstance(reason_code, ReasonCode) else None
            if code == SESSION_TAKEN_OVER:
                event = LinkDown(
                    f"another client connected with id {self.options.client_id!r} "
                    "(session taken over); stopping instead of fighting over the id",
                    fatal=True)
                self._fatal = event
                log.error("%s: %s", self._name, event.reason)
            else:
                event = LinkDown(f"connection lost: {_describe(reason_code)}")
                if was_connected:
                    log.warning("%s: %s; reconnecting", self._name, event.reason)
            self._notify_down(event)
        except Exception:
            log.exception("%s: on_disconnect handler failed", self._name)

    def _handle_message(self, client: mqtt.Client, userdata: Any,
                        message: mqtt.MQTTMessage) -> None:
        try:
            if self._on_message is not None:
                self._on_message(client, message)
        except Exception:
            log.exception("%s: message handler failed on %r", self._name, message.topic)

    def _handle_subscribe(self, client: mqtt.Client, userdata: Any, mid: int,
                          reason_codes: Any, properties: Any) -> None:
        try:
            if self._on_subscribe is not None:
                self._on_subscribe(client, mid)
        except Exception:
            log.exception("%s: subscribe handler failed", self._name)

    def _handle_publish(self, client: mqtt.Client, userdata: Any, mid: int,
                        reason_code: ReasonCode, properties: Any) -> None:
        try:
            if self._on_publish is not None:
                self._on_publish(mid, reason_code.value)
        except Exception:
            log.exception("%s: publish handler failed", self._name)


def backoff_delay(attempt: int, initial: float, maximum: float) -> float:
    """Exponential backoff with jitter: ``initial`` doubled ``attempt`` times, capped at
    ``maximum``, then a random point in its upper half (so that many clients that failed
    together do not come back together)."""
    ceiling = min(maximum, initial * 2 ** min(attempt, 20))
    return random.uniform(ceiling / 2, ceiling)


def call_listener(listener: Callable[..., object] | None, *args: object, name: str) -> None:
    """Call an application's callback from one of our threads; never let it raise into us."""
    if listener is None:
        return
    try:
        listener(*args)
    except Exception:
        log.exception("%s listener failed", name)


def new_properties(packet_type: int) -> Properties:
    """MQTT 5 properties for one packet type (paho's constructor is untyped)."""
    return Properties(packet_type)  # type: ignore[no-untyped-call]


def publish_ok(info: mqtt.MQTTMessageInfo) -> bool:
    return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS
