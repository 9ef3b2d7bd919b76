"""The fault campaign (bench/campaign.py), CI-sized: every fault kind at least once against
real processes, and the truth holds. The two campaigns run side by side, each with its own
broker, bridge(s), monitor double and status app."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from testkit.campaign import KINDS, Report, run_campaign

pytestmark = pytest.mark.integration

SECONDS = 200.0
"""A bound: each run is one round of every kind (each takes a few seconds)."""
PAUSE = (0.3, 0.9)


def assert_the_truth_held(report: Report, expected: set[str]) -> None:
    print(report.table())
    assert expected <= {kind for kind, count in report.events.items() if count}, report.table()
    assert report.total_lost == 0, report.details
    assert report.total_regressions == 0, report.details
    for kind in report.events:
        assert report.after_heal.get(kind, 0.0) <= report.bound(kind), report.details
    assert not report.details


def test_short_campaigns_lose_nothing_and_heal_within_bounds(tmp_path: Path) -> None:
    """One bridge on SQLite with a monitor that has the register route; and an
    active/standby pair on PostgreSQL (its instance killed and frozen, the database
    restarted) with a monitor without it. The same oracle for both."""
    with ThreadPoolExecutor(2, thread_name_prefix="campaign") as pool:
        single = pool.submit(run_campaign, seed=7, seconds=SECONDS, nodes=6,
                             workdir=tmp_path / "single", rounds=1, pause=PAUSE)
        pair = pool.submit(run_campaign, seed=11, seconds=SECONDS, nodes=6,
                           workdir=tmp_path / "pair", register_route=False, failover=True,
                           rounds=1, pause=PAUSE)
        reports = single.result(), pair.result()
    assert_the_truth_held(reports[0], set(KINDS) - {"database_restart"} -
                          ({"disk_full"} if os.geteuid() != 0 else set()))
    assert_the_truth_held(reports[1], set(KINDS) - {"disk_full"})
