"""``yl-status node``: simulated GUI nodes for demos and load."""

from __future__ import annotations

import logging
import random
import threading
import time

from publisher.status_publisher import StatusPublisher
from yl_core.config import Config

log = logging.getLogger(__name__)

TOGGLED_FLAGS = ("video_running", "audio_running", "face_loaded")
CHECK_EVERY = 1.0
"""How often the nodes are checked for a takeover when nothing is toggled."""


def node_ids(base: str, count: int) -> list[str]:
    if count == 1:
        return [base]
    return [f"{base}-{i:04d}" for i in range(1, count + 1)]


def run_nodes(config: Config, *, node_id: str | None, count: int, toggle_every: float,
              duration: float | None, stop: threading.Event) -> int:
    """Run ``count`` publishers, each with its own connection, until ``stop`` or ``duration``;
    every ``toggle_every`` seconds a random GUI flag flips on each (0: never).

    Returns 0 on a clean stop, 3 if a node's id was taken over by another process.
    """
    base = node_id or config.monitor.node_id
    ids = node_ids(base, count)
    publishers = [
        StatusPublisher(config, node_id=nid,
                        username=nid if count > 1 or not config.mqtt.username else None)
        for nid in ids
    ]
    for publisher in publishers:
        publisher.start()
        publisher.update_gui_status(window_active=True)
    log.info("running %d simulated node(s): %s", len(ids),
             ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else ""))
    rng = random.Random()
    deadline = None if duration is None else time.monotonic() + duration
    step = toggle_every if toggle_every > 0 else CHECK_EVERY
    try:
        while True:
            wait = step if deadline is None else min(step, deadline - time.monotonic())
            if stop.wait(max(wait, 0.0)):
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            for publisher in publishers:
                publisher.raise_if_fatal()
            for publisher in publishers if toggle_every > 0 else ():
                flag = rng.choice(TOGGLED_FLAGS)
                publisher.update_gui_status(**{flag: not publisher.gui_status().get(flag)})
    finally:
        threads = [threading.Thread(target=p.stop, args=(2.0,)) for p in publishers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return 0
