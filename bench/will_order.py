"""Whether mosquitto delivers a node's statuses ahead of its will: one subscriber reading
``state`` and ``status`` on one session (the bridge since 2026-12-08), against two
subscribers reading one each (the bridge's split before it), the project's broker config.

Each trial starts a node process that connects with its will (a retained ``lost``),
publishes ``ready`` and a burst of QoS 1 statuses and kills itself (``SIGKILL``) right after
the last publish call; the broker routes whatever it read from the socket, then the will.
Counted per reader: trials where a status of the dead session arrived after its ``lost``.
With ``--flood RATE`` other nodes' statuses come at that rate meanwhile (the readers' queues
are not empty).

Run: .venv/bin/python -m bench.will_order [--trials N] [--burst N] [--flood RATE]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from testkit.raw_publisher import RawPublisher
from testkit.support import Recorder

from yl_core import protocol
from yl_status.dev_broker import DevBroker

PASSWORD = "bench-secret"

NODE = r"""
import os, signal, sys, time
import paho.mqtt.client as mqtt
from paho.mqtt.client import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
from yl_core import protocol
from yl_core.protocol import ReporterCounters, Resources, StateMessage, StatusMessage

port, node, session, burst = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
topics = protocol.Topics()
def state(word):
    return protocol.encode(StateMessage(state=word, session=session,
        since="2026-01-01T00:00:00.000Z", node_name=node, version="1", interval_s=30.0))
client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=node, protocol=mqtt.MQTTv5)
client.username_pw_set("bench-node", "bench-secret")
client.will_set(topics.state(node), state("lost"), qos=1, retain=True)
client.max_inflight_messages_set(65535)
client.max_queued_messages_set(0)
connected = []
client.on_connect = lambda *a: connected.append(True)
client.connect("127.0.0.1", port, 30)
client.loop_start()
while not connected:
    time.sleep(0.001)
client.publish(topics.state(node), state("ready"), qos=1, retain=True)
for seq in range(burst):
    client.publish(topics.status(node), protocol.encode(StatusMessage(
        node_id=node, node_name=node, timestamp="2026-01-01T00:00:00.000Z", status="running",
        version="1", uptime=1.0, resources=Resources(1.0, 1.0, 1), gui={},
        reporter=ReporterCounters(seq, 0, None), session=session, seq=seq, interval_s=30.0)),
        qos=1)
os.kill(os.getpid(), signal.SIGKILL)
"""


def after_the_end(events: list[tuple[str, str, int]], session: str) -> tuple[int, bool]:
    """(statuses of ``session`` read, whether one came after its ``lost``) from one
    reader's (kind, session, seq) in the order it read them."""
    lost_seen = False
    late = False
    count = 0
    for kind, of, _ in events:
        if of != session:
            continue
        if kind == "lost":
            lost_seen = True
        elif kind == "status":
            count += 1
            late = late or lost_seen
    return count, late


def read(recorders: list[Recorder], node: str) -> list[tuple[str, str, int]]:
    """The node's messages as (kind, session, seq), in arrival order across ``recorders``."""
    found = []
    for recorder in recorders:
        for message in recorder.on(protocol.Topics().state(node)) + \
                recorder.on(protocol.Topics().status(node)):
            if message.retain:
                continue
            data = message.json()
            kind = data.get("state", "status")
            found.append((message.at, kind, data["session"], int(data.get("seq", -1))))
    found.sort()
    return [(kind, session, seq) for _, kind, session, seq in found]


def _ended_for(readers: tuple[Recorder, ...], node: str, session: str) -> bool:
    return all(("lost", session) in {(k, s) for k, s, _ in read([r], node)} for r in readers)


def _caught_up(reader: Recorder, than: Recorder, node: str, session: str) -> bool:
    return after_the_end(read([reader], node), session)[0] >= \
        after_the_end(read([than], node), session)[0]


def wait(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Whether ``check`` came true within ``timeout`` (polled)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--flood", type=float, default=0.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        broker = DevBroker(Path(name) / "broker", users={
            "bench-node": PASSWORD, "rec-one": PASSWORD, "rec-states": PASSWORD,
            "rec-statuses": PASSWORD, "bench-pub": PASSWORD},
            extra_acl="user bench-node\ntopic write yl/ar/nodes/#\n\n"
                      "user bench-pub\ntopic write yl/ar/nodes/#\n\n"
                      "user rec-one\ntopic read yl/ar/#\n\n"
                      "user rec-states\ntopic read yl/ar/#\n\n"
                      "user rec-statuses\ntopic read yl/ar/#\n").start()
        topics = protocol.Topics()
        one = Recorder(broker.host, broker.port, "rec-one", PASSWORD,
                       topics=(topics.all_nodes,)).start()
        states = Recorder(broker.host, broker.port, "rec-states", PASSWORD,
                          topics=(topics.all_states,)).start()
        statuses = Recorder(broker.host, broker.port, "rec-statuses", PASSWORD,
                            topics=(topics.all_statuses,)).start()
        stop = threading.Event()
        flood = threading.Thread(target=_flood, args=(broker.port, args.flood, stop),
                                 daemon=True)
        if args.flood:
            flood.start()
        results: dict[str, list[int]] = {"one session": [0, 0, 0], "two sessions": [0, 0, 0]}
        incomplete = 0
        try:
            for trial in range(args.trials):
                node, session = f"wo-{trial:04d}", f"{trial:012d}-will-order"
                for recorder in (one, states, statuses):
                    recorder.messages.clear()  # the flood's, read before this trial
                subprocess.run([sys.executable, "-c", NODE, str(broker.port), node, session,
                                str(args.burst)], check=False, timeout=60)
                # Everything the broker routed before the will has reached the one-session
                # reader once the will has; the split reader's statuses, once it has as many.
                if not (wait(partial(_ended_for, (one, states), node, session)) and
                        wait(partial(_caught_up, statuses, one, node, session))):
                    incomplete += 1  # a reader's queue overflowed: the broker dropped some
                    continue
                for label, readers in (("one session", [one]),
                                       ("two sessions", [states, statuses])):
                    count, late = after_the_end(read(readers, node), session)
                    results[label][0] += 1
                    results[label][1] += int(late)
                    results[label][2] += count
        finally:
            stop.set()
            for recorder in (one, states, statuses):
                recorder.stop()
            broker.stop()
    print(f"will order: {args.trials} node processes killed -9 right after a burst of "
          f"{args.burst} QoS 1 statuses" + (f", other nodes at {args.flood:.0f}/s" if
                                            args.flood else ""))
    for label, (trials, after, count) in results.items():
        print(f"   {label}: a status after the will in {after} of {trials} trials "
              f"({count / max(trials, 1):.0f} statuses read a trial)")
    if incomplete:
        print(f"   {incomplete} trial(s) left out: a reader lacked the will or statuses "
              "within 5 s (its queue at the broker overflowed)")
    return 0


def _flood(port: int, rate: float, stop: threading.Event) -> None:
    publisher = RawPublisher(port, "bench-pub", PASSWORD)
    nodes = [f"flood-{i:03d}" for i in range(100)]
    began, sent = time.monotonic(), 0
    try:
        while not stop.is_set():
            for node in nodes:
                publisher.status(node)
                sent += 1
            ahead = sent / rate - (time.monotonic() - began)
            if ahead > 0:
                stop.wait(ahead)
    finally:
        publisher.close()


if __name__ == "__main__":
    sys.exit(main())
