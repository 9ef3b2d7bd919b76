"""The fault campaign (``testkit.campaign``) at full length, with its report.

Run: .venv/bin/python -m bench.campaign [--seed S] [--minutes M] [--nodes N] [--keep DIR]
[--no-register-route] [--failover]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from testkit import campaign
from testkit.campaign import run_campaign


def main() -> int:
    parser = argparse.ArgumentParser(description=(campaign.__doc__ or "").splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--no-register-route", action="store_true",
                        help="a monitor without POST /api/ar/nodes/register")
    parser.add_argument("--failover", action="store_true",
                        help="an active/standby pair of bridges on PostgreSQL")
    parser.add_argument("--keep", type=Path, default=None,
                        help="a folder to keep the logs in (default: a temporary one)")
    args = parser.parse_args()
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    report = run_campaign(seed=args.seed, seconds=args.minutes * 60, nodes=args.nodes,
                          register_route=not args.no_register_route, failover=args.failover,
                          workdir=args.keep)
    print(report.table())
    for line in report.details[:40]:
        print("  " + line)
    ok = report.total_lost == 0 and report.total_regressions == 0 and not report.details
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
