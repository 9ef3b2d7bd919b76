"""The fault campaign (bench/campaign.py), CI-sized: every fault kind at least once against
real processes, and the truth holds."""

from __future__ import annotations

import os
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


def test_a_short_campaign_loses_nothing_and_heals_within_bounds(tmp_path: Path) -> None:
    report = run_campaign(seed=7, seconds=SECONDS, nodes=6, workdir=tmp_path, rounds=1,
                          pause=PAUSE)
    assert_the_truth_held(report, set(KINDS) - {"database_restart"} -
                          ({"disk_full"} if os.geteuid() != 0 else set()))


def test_a_short_campaign_on_an_active_standby_pair_and_a_register_less_monitor(
        tmp_path: Path) -> None:
    """The same oracle with the bridge an active/standby pair on PostgreSQL (its instance
    killed and frozen, the database restarted) and a monitor without the register route."""
    report = run_campaign(seed=11, seconds=SECONDS, nodes=6, workdir=tmp_path,
                          register_route=False, failover=True, rounds=1, pause=PAUSE)
    assert_the_truth_held(report, set(KINDS) - {"disk_full"})
