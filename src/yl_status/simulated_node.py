"""``yl-status node``: simulated GUI nodes for demos and load."""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from types import FrameType

from publisher.status_publisher import StatusPublisher
from yl_core.config import Config

log = logging.getLogger(__name__)

TOGGLED_FLAGS = ("video_running", "audio_running", "face_loaded")
LOOP_TICK = 0.5
"""How often the simulated main loop turns (and looks for a takeover)."""


def node_ids(base: str, count: int) -> list[str]:
    if count == 1:
        return [base]
    return [f"{base}-{i:04d}" for i in range(1, count + 1)]


def run_nodes(config: Config, *, node_id: str | None, count: int, toggle_every: float,
              duration: float | None, stop: threading.Event,
              hang_seconds: float = 0.0) -> int:
    """Run ``count`` publishers, each with its own connection, until ``stop`` or ``duration``;
    every ``toggle_every`` seconds a random GUI flag flips on each (0: never).

    The calling thread plays the GUI's main loop: it turns every ``LOOP_TICK`` seconds and
    tells each publisher so (``loop_turned``). With ``hang_seconds``, SIGUSR1 blocks it that
    long while the publishers' threads go on: a hung GUI, to see it reported.

    Returns 0 on a clean stop; raises ``SessionTakenOverError`` if a node's id was taken over
    by another process.
    """
    base = node_id or config.monitor.node_id
    ids = node_ids(base, count)
    publishers = [
        StatusPublisher(config, node_id=nid,
                        username=nid if count > 1 or not config.mqtt.username else None)
        for nid in ids
    ]
    if hang_seconds > 0:
        def hang(signum: int, frame: FrameType | None) -> None:
            log.warning("main loop blocked for %.1f s (SIGUSR1)", hang_seconds)
            # A lock's wait, not time.sleep: under libfaketime (the clock-skew runs)
            # sleeping fails with EINVAL.
            threading.Event().wait(hang_seconds)

        signal.signal(signal.SIGUSR1, hang)
    for publisher in publishers:
        publisher.start()
        publisher.update_gui_status(window_active=True)
    log.info("running %d simulated node(s): %s", len(ids),
             ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else ""))
    rng = random.Random()
    now = time.monotonic()
    deadline = None if duration is None else now + duration
    next_toggle = now + toggle_every if toggle_every > 0 else float("inf")
    try:
        while True:
            for publisher in publishers:
                publisher.loop_turned()
                publisher.raise_if_fatal()
            now = time.monotonic()
            if now >= next_toggle:
                next_toggle = now + toggle_every
                for publisher in publishers:
                    flag = rng.choice(TOGGLED_FLAGS)
                    publisher.update_gui_status(**{flag: not publisher.gui_status().get(flag)})
            wait = min(LOOP_TICK, next_toggle - now)
            if deadline is not None:
                wait = min(wait, deadline - now)
            if stop.wait(max(wait, 0.0)) or (deadline is not None and
                                             time.monotonic() >= deadline):
                break
    finally:
        threads = [threading.Thread(target=p.stop, args=(2.0,)) for p in publishers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return 0
