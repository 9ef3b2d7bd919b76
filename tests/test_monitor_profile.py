"""Which API the monitor serves (``monitor.profile: auto``) and what the bridge may tell a v1
monitor: the forwarder on a real outbox against the monitor double over a socket."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from testkit.support import incoming, received, wait_until

from bridge.forwarder import Forwarder
from bridge.incoming import Received
from bridge.outbox import Outbox
from tests.test_forwarder import config_for, forwarding
from tests.test_outbox import state, status, status_message
from yl_status.monitor_double import MonitorDouble


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.sqlite3")
    yield box
    box.close()


def node_state(node: str, word: str) -> Received:
    return state(word, node=node)


def v1_posts(double: MonitorDouble, node: str) -> int:
    return double.request_count(f"/api/v1/ar/heartbeat?node_id={node}")


@pytest.mark.parametrize("api", ["nodes-api", "v1"])
def test_auto_finds_the_api_the_monitor_serves_and_says_so_once(
        tmp_path: Path, outbox: Outbox, api: str, caplog: pytest.LogCaptureFixture) -> None:
    double = MonitorDouble(api=api, known=("n1",)).start()
    caplog.set_level(logging.INFO, logger="bridge")
    try:
        with forwarding(config_for(double.url, tmp_path), outbox) as forwarder:
            for seq in (1, 2, 3):
                forwarder.notify(outbox.record([status(seq)])[1])
                wait_until(lambda: outbox.depth() == (0, 0), timeout=5, what="delivered")
            assert forwarder.profile == api
            text = forwarder.metrics.render().decode()
            assert f'yl_bridge_monitor_api{{profile="{api}"}} 1.0' in text
        if api == "v1":
            assert v1_posts(double, "n1") >= 1
        else:
            assert double.history("n1")[-1].body["gui"] == {"seq": 3}
        said = [r.getMessage() for r in caplog.records if "API; using it" in r.getMessage()]
        assert said == [f"monitor at {double.url} serves the {api} API; using it"]
    finally:
        double.down()


def test_a_monitor_serving_neither_api_keeps_everything_and_says_why(
        tmp_path: Path, outbox: Outbox, caplog: pytest.LogCaptureFixture) -> None:
    double = MonitorDouble(api="nodes-api").start()
    double.fail_with(404)  # a wrong URL: everything is 404
    try:
        outbox.record([node_state("n1", "ready"), status(1)])
        with forwarding(config_for(double.url, tmp_path), outbox) as forwarder:
            wait_until(lambda: "serves neither" in forwarder.last_problem, timeout=5,
                       what="the problem named")
            assert not forwarder.reachable
            assert 'yl_bridge_monitor_api{profile="none"} 1.0' in \
                forwarder.metrics.render().decode()
            wait_until(lambda: double.request_count("/api/ar/nodes") >= 3, timeout=10,
                       what="asked again")
            assert outbox.depth() == (1, 1)
            errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert len(errors) == 1
            assert "check monitor.url" in errors[0].getMessage()
            double.fail_with(None)
            wait_until(lambda: outbox.depth() == (0, 0), timeout=10, what="delivered after")
            assert forwarder.reachable
            assert forwarder.profile == "nodes-api"
        assert double.history("n1")[-1].reason == "ready"
    finally:
        double.down()


def test_a_monitor_that_comes_back_as_another_release_is_asked_again(
        tmp_path: Path, outbox: Outbox) -> None:
    """The held status reaches the v1 monitor once (the refresh of up nodes is off here: it
    would post again on its own clock)."""
    first = MonitorDouble().start()
    with forwarding(config_for(first.url, tmp_path, v1_refresh=0), outbox) as forwarder:
        forwarder.notify(outbox.record([status(1)])[1])
        wait_until(lambda: outbox.depth() == (0, 0), timeout=5, what="delivered first")
        assert forwarder.profile == "nodes-api"
        first.down()
        forwarder.notify(outbox.record([status(2)])[1])
        wait_until(lambda: not forwarder.reachable, timeout=5, what="monitor down")
        second = MonitorDouble(first.port, api="v1", known=("n1",)).start()
        try:
            wait_until(lambda: outbox.depth() == (0, 0), timeout=15, what="delivered again")
            assert forwarder.profile == "v1"
            assert v1_posts(second, "n1") == 1
        finally:
            second.down()


def test_v1_never_posts_for_a_node_that_is_down(tmp_path: Path, outbox: Outbox) -> None:
    double = MonitorDouble(api="v1", known=("n1",)).start()
    try:
        config = config_for(double.url, tmp_path, profile="v1")
        with forwarding(config, outbox) as forwarder:
            forwarder.notify(outbox.record([node_state("n1", "ready"), status(1)])[1])
            wait_until(lambda: outbox.depth() == (0, 0), timeout=5, what="ready delivered")
            alive = v1_posts(double, "n1")
            assert alive >= 1
            for word in ("lost", "disconnected"):
                forwarder.notify(outbox.record([node_state("n1", "ready"),
                                                node_state("n1", word)])[1])
            wait_until(lambda: outbox.depth() == (0, 0), timeout=5, what="all handled")
        assert v1_posts(double, "n1") == alive + 1  # the second ready only
    finally:
        double.down()


def test_v1_says_loudly_when_the_monitor_does_not_know_a_node(
        tmp_path: Path, outbox: Outbox, caplog: pytest.LogCaptureFixture) -> None:
    double = MonitorDouble(api="v1", known=("user-gui",)).start()
    try:
        with forwarding(config_for(double.url, tmp_path), outbox) as forwarder:
            for seq in (1, 2):
                forwarder.notify(outbox.record([status(seq)])[1])
                wait_until(lambda: outbox.depth() == (0, 0), timeout=5, what="handled")
            forwarder.notify(outbox.record([status(1, node="user-gui")])[1])
            wait_until(lambda: outbox.depth() == (0, 0), timeout=5, what="delivered")
            assert forwarder.unknown_nodes == {"n1"}
            text = forwarder.metrics.render().decode()
            assert 'yl_bridge_rejected_total{reason="unknown_at_monitor"} 2.0' in text
        assert v1_posts(double, "n1") == 0
        assert v1_posts(double, "user-gui") == 1
        said = [r.getMessage() for r in caplog.records if "does not know node" in r.getMessage()]
        assert len(said) == 1
        assert "n1" in said[0]
    finally:
        double.down()


def deliver(forwarder: Forwarder, outbox: Outbox, entry: Received) -> None:
    """Record ``entry`` and wait until the forwarder has delivered it."""
    forwarder.notify(outbox.record([entry])[1])
    wait_until(lambda: outbox.depth() == (0, 0), timeout=5, what="delivered")


def hung(seq: int, since: str | None) -> Received:
    message = replace(status_message(seq), not_responding_since=since)
    return incoming("n1", message, received())


@pytest.mark.parametrize("api", ["nodes-api", "v1"])
def test_a_hung_gui_is_offline_not_responding_or_for_v1_not_posted(
        tmp_path: Path, outbox: Outbox, api: str) -> None:
    double = MonitorDouble(api=api, known=("n1",)).start()
    try:
        with forwarding(config_for(double.url, tmp_path, profile=api), outbox) as forwarder:
            deliver(forwarder, outbox, status(1))
            posts = v1_posts(double, "n1")
            deliver(forwarder, outbox, hung(2, "2026-01-01T00:00:05.000Z"))
            deliver(forwarder, outbox, hung(3, "2026-01-01T00:00:05.000Z"))
            if api == "v1":
                assert v1_posts(double, "n1") == posts
            else:
                sent = [(h.status, h.reason) for h in double.history("n1")]
                assert sent[-2:] == [("offline", "not_responding")] * 2
            deliver(forwarder, outbox, hung(4, None))
        if api == "v1":
            assert v1_posts(double, "n1") == posts + 1
        else:
            last = double.history("n1")[-1]
            assert (last.status, last.reason, last.body["gui"]) == ("online", "ready", {"seq": 4})
    finally:
        double.down()


@pytest.mark.parametrize("api", ["nodes-api", "v1"])
def test_the_bridge_logs_each_change_of_what_the_monitor_shows_once(
        tmp_path: Path, outbox: Outbox, api: str, caplog: pytest.LogCaptureFixture) -> None:
    double = MonitorDouble(api=api, known=("n1",)).start()
    caplog.set_level(logging.INFO, logger="bridge")
    try:
        with forwarding(config_for(double.url, tmp_path, profile=api), outbox) as forwarder:
            for entry in (status(1), status(2), hung(3, "2026-01-01T00:00:05.000Z"),
                          hung(4, "2026-01-01T00:00:05.000Z"), status(5)):
                deliver(forwarder, outbox, entry)
    finally:
        double.down()
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("node n1")]
    if api == "nodes-api":
        assert said == ["node n1 is online at the monitor (ready)",
                        "node n1 is offline at the monitor (not_responding)",
                        "node n1 is online at the monitor (ready)"]
    else:
        assert said == ["node n1 is online at the monitor (ready)",
                        "node n1 is down (not_responding): a v1 monitor cannot be told "
                        "offline; it finds out by its own process scan",
                        "node n1 is online at the monitor (ready)"]


def test_v1_that_knows_no_nodes_at_all_is_told_of_once_with_the_likely_cause_and_fix(
        tmp_path: Path, outbox: Outbox, caplog: pytest.LogCaptureFixture) -> None:
    """YL-monitor 1.0.6 as committed: its nodes.yaml does not load, it lists no node and
    answers every heartbeat 200 without storing it."""
    double = MonitorDouble(api="v1", known=()).start()
    try:
        with forwarding(config_for(double.url, tmp_path), outbox) as forwarder:
            for node in ("n1", "n2"):
                forwarder.notify(outbox.record([status(1, node=node)])[1])
                wait_until(lambda: outbox.depth() == (0, 0), timeout=5, what="handled")
            assert forwarder.unknown_nodes == {"n1", "n2"}
        said = [r.getMessage() for r in caplog.records if "knows no nodes" in r.getMessage()]
        assert len(said) == 1, said
        assert "nodes.yaml did not load" in said[0]
        assert "write 'host: 0.0.0.0'" in said[0]
        assert not [r for r in caplog.records if "does not know node" in r.getMessage()]
        assert v1_posts(double, "n1") == 0
    finally:
        double.down()
