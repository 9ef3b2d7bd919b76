"""How many nodes one bridge serves, with an SQLite outbox and with a PostgreSQL one.

For each engine, one run: mosquitto, the monitor double as the sink, one bridge process,
and statuses of 3,000 nodes offered at rising rates. A rate is sustained when the bridge
forwards at least 95 % of it without falling behind (the outbox coalesces what it cannot
forward, which would hide a shortfall: the forwarded count is what counts). For each engine it
prints the highest rate sustained, the bridge's CPU per forwarded heartbeat (its process and
its status receiver; PostgreSQL's own server processes counted apart) and RSS; then the
PostgreSQL/SQLite ratio and the sizing rule: nodes per bridge at a 30 s report interval.
The simulated nodes, mosquitto, the sink, the bridge and PostgreSQL share this machine's cores;
the plain keep-alive POST loop into the same sink says how much of the limit is the sink's.

Run: .venv/bin/python -m bench.capacity [--seconds S]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from testkit.postgres import PostgresServer

from bench import bridge as rig_module

NODES = 3000
RATES = (250, 500, 1000, 1500, 2000, 2500, 3000, 3500, 4000, 4500, 5000, 6000)
INTERVAL = 30.0
HEADROOM = 0.5
"""The sizing rule keeps half of the sustained rate free: bursts after an outage, retries."""


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            process = psutil.Process(pid)
            for p in (process, *process.children(recursive=True)):
                times = p.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def measure(engine: str, seconds: float,
            bridge_options: dict[str, Any] | None = None) -> dict[str, float]:
    postgres = PostgresServer().start() if engine == "postgresql" else None
    try:
        with tempfile.TemporaryDirectory() as name:
            rig = rig_module.Rig(Path(name), outbox_url=postgres.url if postgres else None,
                                 bridge_options=bridge_options)
            try:
                loop = rig_module.post_loop(rig.sink_url, seconds)
                nodes = [f"cap-{i:05d}" for i in range(NODES)]
                for node in nodes:
                    rig.publisher.state(node, "ready")
                    rig.publisher.status(node)
                rig_module.wait("nodes registered", rig.drained, 300)
                sustained, cpu, db_cpu = 0.0, float("nan"), float("nan")
                for rate in RATES:
                    stop = threading.Event()

                    def feed(rate: float = rate, stop: threading.Event = stop) -> None:
                        began, sent, at = time.monotonic(), 0, 0
                        while not stop.is_set():
                            rig.publisher.status(nodes[at])
                            at = (at + 1) % NODES
                            sent += 1
                            if sent % 50 == 0:
                                ahead = sent / rate - (time.monotonic() - began)
                                if ahead > 0:
                                    time.sleep(ahead)

                    feeder = threading.Thread(target=feed, daemon=True)
                    feeder.start()
                    time.sleep(1.0)
                    before, started = rig.forwarded(), time.monotonic()
                    cpu0 = cpu_seconds([rig.bridge.pid])
                    db0 = cpu_seconds([postgres.process.pid]) if postgres and \
                        postgres.process else 0.0
                    time.sleep(seconds)
                    done = rig.forwarded() - before
                    elapsed = time.monotonic() - started
                    used = cpu_seconds([rig.bridge.pid]) - cpu0
                    db_used = (cpu_seconds([postgres.process.pid]) - db0) if postgres and \
                        postgres.process else 0.0
                    stop.set()
                    feeder.join()
                    forwarded = done / elapsed
                    print(f"   {engine}: offered {rate:5d}/s, forwarded {forwarded:7.0f}/s, "
                          f"bridge CPU {used / max(done, 1) * 1e6:6.0f} us/heartbeat"
                          + (f", PostgreSQL CPU {db_used / max(done, 1) * 1e6:5.0f} us"
                             if postgres else ""), flush=True)
                    rig_module.wait("outbox drained", rig.drained, 120)
                    if forwarded < 0.95 * rate:
                        break
                    sustained = rate
                    cpu, db_cpu = used / max(done, 1), db_used / max(done, 1)
                rss = rig.rss_mb()
            finally:
                rig.close()
    finally:
        if postgres is not None:
            postgres.remove()
    return {"sustained": sustained, "cpu": cpu, "db_cpu": db_cpu, "rss": rss, "loop": loop}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--engine", choices=["sqlite", "postgresql"], action="append",
                        help="measure only this engine (repeatable; default: both)")
    args = parser.parse_args()
    results = {engine: measure(engine, args.seconds)
               for engine in args.engine or ("sqlite", "postgresql")}
    print(f"\ncapacity of one bridge ({NODES} nodes, {psutil.cpu_count()} cores shared by "
          "everything):")
    for engine, r in results.items():
        print(f"  {engine:10s}: sustained {r['sustained']:5.0f} heartbeats/s, bridge CPU "
              f"{r['cpu'] * 1e6:4.0f} us/heartbeat"
              + (f" (+ PostgreSQL {r['db_cpu'] * 1e6:.0f} us)" if engine == "postgresql"
                 else "")
              + f", RSS {r['rss']:.0f} MB; the sink alone takes {r['loop']:.0f} requests/s")
    sqlite, pg = results.get("sqlite"), results.get("postgresql")
    if sqlite and pg and sqlite["sustained"]:
        print(f"  PostgreSQL/SQLite sustained rate: {pg['sustained'] / sqlite['sustained']:.2f}")
    for engine, r in results.items():
        print(f"  sizing ({engine}): {r['sustained'] * HEADROOM * INTERVAL:,.0f} nodes per "
              f"bridge at a {INTERVAL:g} s interval (half the sustained rate)")


if __name__ == "__main__":
    main()
