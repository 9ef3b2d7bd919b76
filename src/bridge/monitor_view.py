"""What the bridge knows of YL-monitor, and the look that keeps it true.

The monitor's node list says which API it serves (``monitor.profile: auto``), that it
answers, and which nodes it knows. A look runs at start, every ``monitor.look_interval``, and
as the only probe while the monitor is failing: after an outage nothing is delivered until a
look has said which nodes the monitor still knows (a monitor restarted without its table
would take a known node's next heartbeat as its registration, and not record it). On the
nodes API a node the monitor forgot, or shows otherwise than it was told, is told its current
truth again (``Outbox.reconcile``). Failures pause deliveries with jittered exponential
backoff (or the monitor's ``Retry-After``): ``bridge.breaker``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from bridge.breaker import Breaker
from bridge.metrics import Metrics
from bridge.monitor_client import (
    NODES,
    V1_NODES,
    Answer,
    Dialogue,
    MonitorClient,
    Outcome,
    listed_nodes,
)
from bridge.outbox import Outbox, Told
from yl_core.config import Config

log = logging.getLogger(__name__)

PROFILES = ("nodes-api", "v1")
"""The APIs ``monitor.profile: auto`` looks for, in this order."""


class MonitorView:
    """The monitor as the bridge last saw it: its API (``profile``), whether it answers
    (``breaker``), which nodes it knows, whether it has a register route. The forwarder's
    thread only."""

    def __init__(self, config: Config, outbox: Outbox, metrics: Metrics,
                 client: MonitorClient, notify: Callable[[Iterable[str]], None]) -> None:
        """``notify``: nodes to deliver for (those the monitor is to be told again)."""
        self.outbox = outbox
        self.metrics = metrics
        self.client = client
        self._notify = notify
        self._values = config.monitor.status_values
        self._url = config.monitor.url
        self._auto = config.monitor.profile == "auto"
        self.profile: str | None = None if self._auto else config.monitor.profile
        """The API the monitor serves (None: not known yet)."""
        self.look_due = 0.0
        """When the monitor is looked at next (at once after an outage)."""
        self._logged_profile: str | None = None
        self._known: set[str] | None = None
        """The nodes a v1 monitor lists (None: its list was not understood)."""
        self.unknown_nodes: set[str] = set()
        """Nodes a v1 monitor does not list: it would answer 200 and store nothing."""
        self._said_knows_none = False
        """A v1 monitor that knows no nodes at all was said to (once, until it knows one)."""
        self.register_route: bool | None = None
        """Whether the monitor has ``/api/ar/nodes/register`` (None: not known)."""
        self._look_every = config.monitor.look_interval
        """How often the monitor's node list is read again while all is well."""
        self._look_started = 0.0
        self._shown_otherwise: set[str] = set()
        """Nodes the monitor showed otherwise than told at the last look (logged once)."""
        self.breaker = Breaker(0.2, max(config.monitor.retry_delay, 0.5))
        self.metrics.api(self.profile)

    @property
    def url(self) -> str:
        return self._url

    @property
    def reachable(self) -> bool:
        return self.breaker.reachable

    @property
    def last_problem(self) -> str:
        return self.breaker.last_problem

    def failed(self, answer: Answer) -> None:
        """Pause all deliveries (not for a bridge that may not send: it waits for its
        lease)."""
        if answer.outcome is Outcome.NOT_ACTIVE:
            return
        if self.breaker.reachable and self._auto:
            self.profile = None  # the monitor that comes back may be another release
        self.breaker.failed(answer.reason, answer.retry_after)

    def retry(self, answer: Answer) -> bool:
        """A request to be tried again later: count it and pause; the node has more."""
        if answer.outcome is not Outcome.NOT_ACTIVE:
            self.metrics.inc("retries")
        self.failed(answer)
        return True

    def forgot(self, node: str) -> None:
        """The monitor said it does not know a node it was told of: look again soon."""
        log.warning("monitor at %s no longer knows node %s (restarted without its nodes?); "
                    "introducing it again", self._url, node)
        self.look_due = 0.0

    def look(self) -> Dialogue:
        """Read the monitor's node list: which API it serves (the first of ``PROFILES`` whose
        list answers 2xx, for ``monitor.profile: auto``), that it answers, and which nodes
        it knows."""
        answer = Answer(Outcome.NOT_FOUND, None, "")
        for profile in PROFILES if self.profile is None else (self.profile,):
            self._look_started = time.monotonic()
            answer = yield self.client.nodes_request(profile)
            if answer.outcome in (Outcome.RETRY, Outcome.NOT_ACTIVE):
                self.retry(answer)
                return False
            if answer.outcome is Outcome.DELIVERED:
                self._use(profile)
                self._know(answer)
                return False
        if self.profile is not None:
            # It answers, but not with its node list: deliver without knowing which nodes it
            # knows (each unknown node is asked for, or registered, on its own).
            self.breaker.answered()
            self.look_due = time.monotonic() + self._look_every
            return False
        problem = (f"monitor at {self._url} serves neither the nodes API (GET {NODES}) nor v1 "
                   f"(GET {V1_NODES}): {answer.reason}; check monitor.url")
        if self._logged_profile != "none":
            self._logged_profile = "none"
            log.error("%s; keeping every message until it does", problem)
        self.metrics.api("none")
        self.breaker.reachable = False  # said above, once: not again as "unavailable"
        self.failed(Answer(Outcome.RETRY, answer.status, problem))
        return False

    def _use(self, profile: str) -> None:
        self.profile = profile
        self.client.use_profile(profile)
        self.metrics.api(profile)
        if self._logged_profile != profile:
            self._logged_profile = profile
            log.info("monitor at %s serves the %s API; using it", self._url, profile)

    def _know(self, answer: Answer) -> None:
        """The monitor's node list: the nodes it knows from now on. On the nodes API, a node
        it forgot, or shows otherwise than it was told, is told its current truth again."""
        self.breaker.answered()
        self.look_due = time.monotonic() + self._look_every
        listed = listed_nodes(answer.body)
        if self.profile == "v1":
            self._known = None if listed is None else set(listed)
            if self._known:
                self._said_knows_none = False
        if listed is None:
            log.warning("the monitor's node list (GET %s) has a shape not understood; each "
                        "node is looked up on its own", V1_NODES if self.profile == "v1"
                        else NODES)
        elif self.profile == "nodes-api":
            words: dict[Told, str] = {"up": self._values.online, "down": self._values.offline}
            again = self.outbox.reconcile(listed, words, self._look_started)
            for node in set(again) - self._shown_otherwise:
                log.warning("monitor at %s %s node %s; telling it the node's current truth "
                            "again", self._url, "shows otherwise than it was told of"
                            if node in listed else "no longer lists", node)
            self._shown_otherwise = set(again)
            if again:
                self.metrics.inc("retold", len(again))
                self._notify(again)

    def knows(self, node: str) -> bool:
        """Whether a v1 monitor lists ``node`` (True when it cannot be told)."""
        if self._known is None or node in self._known:
            self.unknown_nodes.discard(node)
            return True
        if node not in self.unknown_nodes:
            self.unknown_nodes.add(node)
            if self._known:
                log.warning("monitor at %s does not know node %s: it would answer 200 and "
                            "store nothing; add the node to the monitor's node list",
                            self._url, node)
            elif not self._said_knows_none:
                self._said_knows_none = True
                log.warning(
                    "monitor at %s knows no nodes at all, so it would answer 200 and store "
                    "nothing (node %s): its nodes.yaml did not load. YL-monitor 1.0.6 ships "
                    "'host:0.0.0.0' without a space after the colon, which YAML cannot read; "
                    "write 'host: 0.0.0.0' in both of its nodes.yaml files, add the node, and "
                    "restart the monitor", self._url, node)
        return False
