"""What one node went through: its state timeline and its resources over time, bounded.

Kept in the status app's memory and filled from what it sees on the broker (it starts empty;
nothing is read back after a restart).

- Timeline: every change of the node's ``truth.Health`` (``unknown`` aside), with its
  wall-clock time; at most ``MAX_TRANSITIONS`` per node, older than ``WINDOW`` dropped.
- Samples: one per minute (the newest status of that minute): CPU %, memory MB and up to
  ``MAX_FLAGS`` boolean GUI flags, for ``WINDOW`` (1,440 minutes) in typed arrays that grow
  to that and are then used as a ring: 20 bytes a minute. What a full day costs per node,
  measured: ``bench/README.md`` (``python -m bench.status_app_history``).
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Mapping
from typing import Any, Final

from yl_core.truth import Health

WINDOW: Final = 24 * 3600.0
SAMPLE_EVERY: Final = 60.0
SAMPLES: Final = int(WINDOW // SAMPLE_EVERY)
MAX_TRANSITIONS: Final = 2000
MAX_FLAGS: Final = 32


class NodeHistory:
    """Not thread-safe: the ``NodeView`` lock guards it."""

    __slots__ = ("_cpu", "_flags", "_mem", "_next", "_size", "_t", "flag_names", "timeline")

    def __init__(self) -> None:
        self.timeline: deque[tuple[float, Health]] = deque(maxlen=MAX_TRANSITIONS)
        self.flag_names: list[str] = []
        self._t = array("d")
        self._cpu = array("f")
        self._mem = array("f")
        self._flags = array("I")
        self._next = 0
        self._size = 0

    # --- recording ------------------------------------------------------------------------

    def state(self, at: float, word: Health) -> None:
        """The node is ``word`` from ``at`` on (a repeat of the current word is no change)."""
        if self.timeline and self.timeline[-1][1] == word:
            return
        while self.timeline and self.timeline[-1][0] > at:
            self.timeline.pop()  # a late correction: keep times in order
        self.timeline.append((at, word))

    def sample(self, at: float, cpu: float, memory_mb: float, gui: Mapping[str, Any]) -> None:
        bits = 0
        for name, value in gui.items():
            if not isinstance(value, bool):
                continue
            if name not in self.flag_names:
                if len(self.flag_names) >= MAX_FLAGS:
                    continue
                self.flag_names.append(name)
            if value:
                bits |= 1 << self.flag_names.index(name)
        last = (self._next - 1) % SAMPLES
        if self._size and at // SAMPLE_EVERY == self._t[last] // SAMPLE_EVERY:
            slot = last
        elif self._size < SAMPLES:
            self._t.append(at)
            self._cpu.append(cpu)
            self._mem.append(memory_mb)
            self._flags.append(bits)
            self._size += 1
            self._next = self._size % SAMPLES
            return
        else:
            slot = self._next
            self._next = (self._next + 1) % SAMPLES
        self._t[slot], self._cpu[slot], self._mem[slot] = at, cpu, memory_mb
        self._flags[slot] = bits

    # --- reading --------------------------------------------------------------------------

    def current(self) -> tuple[float, Health] | None:
        return self.timeline[-1] if self.timeline else None

    def down_since(self) -> float | None:
        """When the node last went down (into a word that is ``Health.down``), if it is down
        now."""
        since = None
        for at, word in reversed(self.timeline):
            if not word.down:
                break
            since = at
        return since

    def flaps(self, now: float, within: float = 3600.0) -> int:
        """How many times the node went down within the last ``within`` seconds."""
        count, before = 0, False
        for at, word in self.timeline:
            if at >= now - within and word.down and not before:
                count += 1
            before = word.down
        return count

    def export(self, now: float) -> dict[str, Any]:
        """The last ``WINDOW`` as plain data (oldest first)."""
        start = now - WINDOW
        timeline = [(at, word) for at, word in self.timeline if at >= start]
        earlier = [(at, word) for at, word in self.timeline if at < start]
        if earlier:
            timeline.insert(0, (start, earlier[-1][1]))
        order = [(self._next - self._size + i) % SAMPLES for i in range(self._size)]
        order = [i for i in order if self._t[i] >= start]
        return {
            "timeline": [{"at": at, "state": word} for at, word in timeline],
            "samples": {
                "at": [self._t[i] for i in order],
                "cpu_percent": [round(self._cpu[i], 2) for i in order],
                "memory_mb": [round(self._mem[i], 1) for i in order],
                "flags": {name: [bool(self._flags[i] >> bit & 1) for i in order]
                          for bit, name in enumerate(self.flag_names)},
            },
        }
