"""How long an active/standby pair takes to hand over when the active bridge is killed.

Two bridge instances share a PostgreSQL outbox (started here as an unprivileged user), 20
nodes keep statuses coming, and the active instance gets ``kill -9`` again and again (the
killed one comes back as the standby). For each kill: the time until the standby says it is
active (``/healthz``), and until the monitor double gets its first request from it. Prints
median and max of both, and the lease setting they follow from.

Run: .venv/bin/python -m bench.failover [--kills N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from testkit.bridge_process import BridgeProcess
from testkit.broker import broker_users, running_broker
from testkit.postgres import PostgresServer
from testkit.support import (
    NODE_PASSWORD,
    TEST_ACL,
    config_dict,
    start_process,
    stop_process,
    wait_until,
    write_config,
)

from bridge.lease import LEASE, POLL, RENEW_EVERY
from yl_status.monitor_double import MonitorDouble


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=12)
    args = parser.parse_args()
    postgres = PostgresServer().start()
    double = MonitorDouble().start()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        users = broker_users()
        users.update({f"fo-{i:04d}": NODE_PASSWORD for i in range(1, 21)})
        brokers = running_broker(tmp / "broker", users, TEST_ACL)
        broker = next(brokers)
        pair = [BridgeProcess(tmp, broker, double, outbox_url=postgres.url, instance=i)
                for i in ("a", "b")]
        config = write_config(tmp / "nodes.yaml", config_dict(broker, "fo"))
        nodes = None
        active_seen: list[float] = []
        forwarding: list[float] = []
        try:
            pair[0].start(wait=False)
            wait_until(lambda: pair[0].role() == "active" and pair[0].healthy(), 20, "a")
            pair[1].start(wait=False)
            wait_until(lambda: pair[1].role() == "standby", 20, "b standing by")
            nodes = start_process(["node", "-c", str(config), "--node-id", "fo", "--count",
                                   "20", "--toggle-every", "0.05"], log_path=tmp / "nodes.log")
            wait_until(lambda: double.request_total > 100, 30, "forwarding")
            active, standby = pair
            for kill in range(args.kills):
                killed = time.monotonic()
                active.kill()
                wait_until(lambda s=standby: s.role() == "active", 10, "takeover",
                           interval=0.01)
                active_seen.append(time.monotonic() - killed)
                agent = f"(instance {standby.instance})"
                wait_until(lambda a=agent, k=killed: any(
                    r[3] > k and r[4] and r[4].endswith(a) for r in list(double.requests)),
                    10, "the new active instance forwarding", interval=0.01)
                first = min(r[3] for r in list(double.requests)
                            if r[3] > killed and r[4] and r[4].endswith(agent))
                forwarding.append(first - killed)
                print(f"kill {kill + 1:2d}: active after {active_seen[-1]:.2f} s, forwarding "
                      f"after {forwarding[-1]:.2f} s", flush=True)
                active.start(wait=False)
                wait_until(lambda a=active: a.role() == "standby", 20, "back as standby")
                active, standby = standby, active
        finally:
            if nodes is not None:
                stop_process(nodes)
            for bridge in pair:
                bridge.stop()
            double.down()
            next(brokers, None)
            postgres.remove()
    print(f"\nfailover over {len(active_seen)} kills (lease {LEASE:g} s, renewed every "
          f"{RENEW_EVERY:g} s, standby polls every {POLL:g} s):")
    print(f"  standby active:      median {statistics.median(active_seen):.2f} s, "
          f"max {max(active_seen):.2f} s")
    print(f"  forwarding resumed:  median {statistics.median(forwarding):.2f} s, "
          f"max {max(forwarding):.2f} s")


if __name__ == "__main__":
    main()
