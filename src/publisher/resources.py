"""Process resource figures for the heartbeat, from psutil."""

from __future__ import annotations

import threading
import time

import psutil

from yl_core.protocol import Resources


class ResourceSampler:
    """Samples this process. ``cpu_percent`` is primed at construction so a report measures
    the time since then instead of psutil's meaningless first 0.0; a report sooner than
    ``MIN_CPU_WINDOW`` after priming gives the process's average since it started."""

    MIN_CPU_WINDOW = 0.1
    """CPU is measured over at least this many seconds; more frequent samples reuse it."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self._lock = threading.Lock()
        self._process.cpu_percent(None)
        self._measured_at = time.monotonic()
        self._cpu: float | None = None
        self.started = time.monotonic()

    def sample(self) -> Resources:
        with self._lock:
            now = time.monotonic()
            if now - self._measured_at >= self.MIN_CPU_WINDOW:
                self._cpu = self._process.cpu_percent(None)
                self._measured_at = now
            elif self._cpu is None:
                self._cpu = self._lifetime_cpu_percent()
            cpu = self._cpu
            with self._process.oneshot():
                memory = self._process.memory_info().rss
                threads = self._process.num_threads()
        return Resources(cpu_percent=round(cpu, 1), memory_mb=round(memory / 2**20, 1),
                         threads=threads)

    def _lifetime_cpu_percent(self) -> float:
        """Average CPU since the process started: the first report's value when it comes
        too soon after priming for a meaningful window."""
        times = self._process.cpu_times()
        alive = max(time.time() - self._process.create_time(), 1e-3)
        return 100.0 * (times.user + times.system) / alive

    def uptime(self) -> float:
        return round(time.monotonic() - self.started, 3)
