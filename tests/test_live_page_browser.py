"""The live view in headless Chromium: a node dying turns its row lost without a reload."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from testkit.broker import broker_users, running_broker
from testkit.support import (
    NODE_PASSWORD,
    VIEWER_PASSWORD,
    VIEWER_USER,
    answers,
    config_dict,
    start_process,
    stop_process,
    wait_until,
    write_config,
)

from tests.conftest import ARTIFACTS
from yl_status.dev_broker import DevBroker, free_port

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture
def browser() -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("chromium and chromium-driver are not installed (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="yl-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--window-size=1200,700"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def row_health(driver: Any, node_id: str) -> str | None:
    """The health word the page shows for a node (read in one step: rows are re-rendered)."""
    result = driver.execute_script(
        "const row = document.querySelector(`#nodes .row[data-node='${arguments[0]}']`);"
        "return row ? row.querySelector('.badge').textContent : null;", node_id)
    return str(result) if result is not None else None


def test_a_killed_node_turns_lost_on_screen_without_reload(
        tmp_path: Path, broker: DevBroker, browser: Any) -> None:
    port = free_port()
    serve_cfg = config_dict(broker, local_server={"port": port, "mqtt_username": "yl-viewer",
                                                  "mqtt_password": "viewer-secret"})
    server = start_process(["serve", "-c", str(write_config(tmp_path / "s.yaml", serve_cfg))],
                           log_path=tmp_path / "serve.log")
    node_cfg = write_config(tmp_path / "n.yaml", config_dict(broker, "node-2"))
    node = start_process(["node", "-c", str(node_cfg), "--toggle-every", "0.5"],
                         log_path=tmp_path / "node.log")
    other = start_process(["node", "-c", str(write_config(tmp_path / "o.yaml",
                                                          config_dict(broker, "node-3")))],
                          log_path=tmp_path / "other.log")
    base = f"http://127.0.0.1:{port}/"
    try:
        wait_until(lambda: answers(base + "nodes"), timeout=15, what="status app")
        browser.get(base)
        wait_until(lambda: row_health(browser, "node-2") == "ready", timeout=15,
                   what="node-2 online on screen")
        wait_until(lambda: row_health(browser, "node-3") == "ready", timeout=15,
                   what="node-3 online on screen")
        marker = browser.execute_script("window.__noReload = 42; return window.__noReload;")
        assert marker == 42
        killed = time.monotonic()
        node.kill()
        node.wait()
        wait_until(lambda: row_health(browser, "node-2") == "lost", timeout=5,
                   what="node-2 lost on screen")
        assert time.monotonic() - killed < 5
        assert browser.execute_script("return window.__noReload;") == 42, "page reloaded"
        assert row_health(browser, "node-3") == "ready"
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "live-view.png"))
    finally:
        stop_process(node)
        stop_process(other)
        stop_process(server)




class _Page:
    """A page served from an origin of its own that reads ``target`` with ``fetch()``."""

    def __init__(self, target: str) -> None:
        html = ("<!doctype html><title>waiting</title><script>"
                f"fetch({target!r}).then(r => r.json())"
                ".then(j => { document.title = 'read:' + j.status; })"
                ".catch(e => { document.title = 'refused:' + e.name; });"
                "</script>").encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(html)))
                self.end_headers()
                self.wfile.write(html)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def test_the_monitors_dashboard_reads_health_from_the_browser_and_no_other_page_does(
        tmp_path: Path, broker: DevBroker, browser: Any) -> None:
    port = free_port()
    health = f"http://127.0.0.1:{port}/health"
    dashboard, stranger = _Page(health), _Page(health)
    serve_cfg = config_dict(broker, monitor={"url": f"http://localhost:{dashboard.port}"},
                            local_server={"port": port, "mqtt_username": "yl-viewer",
                                          "mqtt_password": "viewer-secret"})
    server = start_process(["serve", "-c", str(write_config(tmp_path / "s.yaml", serve_cfg))],
                           log_path=tmp_path / "serve.log")
    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/nodes"), timeout=15, what="status app")
        browser.get(f"http://localhost:{dashboard.port}/")
        wait_until(lambda: browser.title != "waiting", timeout=10, what="dashboard fetch")
        assert browser.title == "read:unhealthy"
        browser.get(f"http://localhost:{stranger.port}/")
        wait_until(lambda: browser.title != "waiting", timeout=10, what="stranger fetch")
        assert browser.title == "refused:TypeError"
    finally:
        stop_process(server)
        dashboard.close()
        stranger.close()


FLEET, DOOMED, PER_PROCESS = 900, 100, 100
"""Nodes run 100 to a process (as many connections as one Python process starts briskly)."""
BASES = [f"fleet{i}" for i in range(1, FLEET // PER_PROCESS + 1)]


@pytest.fixture
def fleet_broker(tmp_path: Path) -> Iterator[DevBroker]:
    users = broker_users()
    users.update({f"{base}-{i:04d}": NODE_PASSWORD for base in BASES
                  for i in range(1, PER_PROCESS + 1)})
    users.update({f"doomed-{i:04d}": NODE_PASSWORD for i in range(1, DOOMED + 1)})
    yield from running_broker(tmp_path / "broker", users)


def shown(driver: Any) -> list[tuple[str, str]]:
    """(node, health) of every visible row, top to bottom."""
    rows = driver.execute_script(
        "return [...document.querySelectorAll('#nodes .row')].filter(r => !r.hidden)"
        ".map(r => [r.dataset.node, r.dataset.health]);")
    return [(str(a), str(b)) for a, b in rows]


def test_a_thousand_nodes_problems_first_with_filters_search_and_a_node_history(
        tmp_path: Path, fleet_broker: DevBroker, browser: Any) -> None:
    broker = fleet_broker
    port = free_port()
    serve_cfg = config_dict(broker, local_server={"port": port, "mqtt_username": VIEWER_USER,
                                                  "mqtt_password": VIEWER_PASSWORD})
    server = start_process(["serve", "-c", str(write_config(tmp_path / "s.yaml", serve_cfg))],
                           log_path=tmp_path / "serve.log")
    page = f"http://127.0.0.1:{port}/"
    node_cfg = write_config(tmp_path / "n.yaml", config_dict(broker, "fleet"))
    fleet: list[Any] = []
    try:
        # Listening before the nodes open a thousand connections, one of which could
        # otherwise take the free port chosen for it.
        wait_until(lambda: answers(page + "nodes"), timeout=15, what="status app")
        fleet = [start_process(["node", "-c", str(node_cfg), "--node-id", name, "--count",
                                str(PER_PROCESS), "--toggle-every", "0"],
                               log_path=tmp_path / f"{name}.log") for name in BASES]
        doomed = start_process(["node", "-c", str(node_cfg), "--node-id", "doomed", "--count",
                                str(DOOMED), "--toggle-every", "0"],
                               log_path=tmp_path / "doomed.log")
        fleet.append(doomed)
        browser.get(page)
        wait_until(lambda: sum(h == "ready" for _, h in shown(browser)) == FLEET + DOOMED,
                   timeout=120, what="1,000 nodes online on screen")
        started = time.time()
        doomed.kill()
        doomed.wait()
        killed = time.time()
        wait_until(lambda: [h for _, h in shown(browser)[:DOOMED]] == ["lost"] * DOOMED,
                   timeout=15, what="the killed nodes on top")
        top = shown(browser)
        assert {n for n, _ in top[:DOOMED]} == {f"doomed-{i:04d}" for i in range(1, DOOMED + 1)}
        assert {h for _, h in top[DOOMED:]} == {"ready"}
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "live-view-1000.png"))

        browser.find_element("css selector", "button.chip[data-health='lost']").click()
        filtered = shown(browser)
        assert len(filtered) == DOOMED
        assert {h for _, h in filtered} == {"lost"}
        browser.find_element("css selector", "button.chip[data-health='all']").click()
        assert len(shown(browser)) == FLEET + DOOMED
        search = browser.find_element("id", "search")
        search.send_keys("fleet4-0021")
        assert shown(browser) == [("fleet4-0021", "ready")]
        search.clear()
        search.send_keys(" ")  # an input event with an empty query
        assert len(shown(browser)) == FLEET + DOOMED

        browser.get(page + "nodes/doomed-0007")
        wait_until(lambda: browser.execute_script(
            "return document.querySelectorAll('#transitions tr').length") >= 2,
            timeout=10, what="the node's transitions")
        rows = browser.execute_script(
            "return [...document.querySelectorAll('#transitions tr')]"
            ".map(r => [r.dataset.state, Number(r.dataset.at)]);")
        assert [state for state, _ in rows] == ["lost", "ready"]
        lost_at, ready_at = rows[0][1], rows[1][1]
        assert killed - 0.5 <= lost_at <= killed + 2
        assert ready_at <= started
        browser.save_screenshot(str(ARTIFACTS / "node-detail.png"))
    finally:
        for process in fleet:
            stop_process(process, timeout=30)
        stop_process(server)
