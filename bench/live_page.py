"""What one update of the live page costs in Chromium at 1,000 nodes.

The status app (the real Flask app, served by waitress in this process) shows a
``NodeView`` of 1,000 nodes, 100 of them lost, every other one sending a new status each
second, as the broker subscriber would feed it. Headless Chromium polls ``/nodes`` once a
second; the page records, per update, its scripting time and the time to the next frame
(style, layout and paint) with the Performance API. Baseline, in the same page and run: the
original page's way (build every row of a table anew and replace the table) on the same data.

Run: .venv/bin/python -m bench.live_page [--nodes N] [--seconds S]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
import time
from typing import Any

from waitress.server import create_server

from status_app import NodeView, create_app
from yl_core.config import parse_config
from yl_core.protocol import (
    ReporterCounters,
    Resources,
    State,
    StateMessage,
    StatusMessage,
    encode,
)

SESSION = "b" * 24
ORIGINAL_RENDER = r"""
const data = latest, started = performance.now();
const table = document.createElement("table");
table.style.width = "100%";
const body = table.appendChild(document.createElement("tbody"));
const made = data.nodes.map(node => {
  const tr = document.createElement("tr");
  const cells = [node.node_id, node.health, String(node.status_age_s),
                 JSON.stringify(node.gui), node.resources ? node.resources.cpu_percent : "",
                 node.resources ? node.resources.memory_mb : "", node.version || ""];
  for (const text of cells) tr.appendChild(document.createElement("td")).textContent = text;
  return tr;
});
body.replaceChildren(...made);
document.getElementById("table").replaceChildren(table);
const scripted = performance.now() - started;
const done = arguments[arguments.length - 1];
requestAnimationFrame(() => setTimeout(() => done([scripted, performance.now() - started]), 0));
"""


def state(word: State) -> bytes:
    return encode(StateMessage(state=word, session=SESSION, since="2026-01-01T00:00:00.000Z",
                               node_name="GUI", version="1.4", interval_s=1.0))


def status(node: str, seq: int) -> bytes:
    return encode(StatusMessage(
        node_id=node, node_name=f"Studio {node[-4:]}", timestamp="2026-01-01T00:00:00.000Z",
        status="running", version="1.4", uptime=float(seq),
        resources=Resources(float(seq % 90), 300.0 + seq % 50, 12),
        gui={"window_active": True, "video_running": seq % 4 < 2, "audio_running": False,
             "face_loaded": True},
        reporter=ReporterCounters(seq, 0, None), session=SESSION, seq=seq, interval_s=1.0))


def feed(view: NodeView, ids: list[str], lost: int, stop: threading.Event) -> None:
    seq = 0
    while not stop.wait(1.0):
        seq += 1
        for i, node in enumerate(ids[lost:]):
            if (i + seq) % 2 == 0:
                view.ingest(f"yl/ar/nodes/{node}/status", status(node, seq))


def percentiles(values: list[float]) -> str:
    values = sorted(values)
    p95 = values[min(len(values) - 1, int(len(values) * 0.95))]
    return f"median {statistics.median(values):6.1f} ms  p95 {p95:6.1f} ms  (n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    ids = [f"gui-{i:04d}" for i in range(args.nodes)]
    lost = args.nodes // 10
    view = NodeView()
    view.set_broker(True, "bench")
    for node in ids:
        view.ingest(f"yl/ar/nodes/{node}/state", state("ready"))
        view.ingest(f"yl/ar/nodes/{node}/status", status(node, 0))
    for node in ids[:lost]:
        view.ingest(f"yl/ar/nodes/{node}/state", state("lost"))
    config = parse_config({"monitor": {"node_id": ids[0]}}, "<bench>")
    server = create_server(create_app(config, view), host="127.0.0.1", port=0, threads=4)
    serving = threading.Thread(target=server.run, daemon=True)
    serving.start()
    stop = threading.Event()
    feeder = threading.Thread(target=feed, args=(view, ids, lost, stop), daemon=True)
    feeder.start()
    profile = tempfile.mkdtemp(prefix="yl-bench-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                 "--window-size=1400,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(
        executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver"),
        options=options)
    try:
        driver.get(f"http://127.0.0.1:{server.effective_port}/")
        time.sleep(3.0)
        driver.execute_script("performance.clearMeasures();")
        time.sleep(args.seconds)
        entries: list[Any] = driver.execute_script(
            "return performance.getEntriesByType('measure').map(e => [e.name, e.duration]);")
        ours = [d for name, d in entries if name == "update"]
        ours_frame = [d for name, d in entries if name == "update-frame"]
        shown = driver.execute_script("return document.querySelectorAll('#nodes .row').length;")
        driver.set_script_timeout(30)
        original = [driver.execute_async_script(ORIGINAL_RENDER) for _ in range(15)]
    finally:
        driver.quit()
        stop.set()
        server.close()
        shutil.rmtree(profile, ignore_errors=True)
    print(f"{args.nodes} nodes ({lost} lost), {len(ids) - lost} sending a status every 2 s, "
          f"{shown} rows on the page")
    print(f"  this page, scripting      {percentiles(ours)}")
    print(f"  this page, to next frame  {percentiles(ours_frame)}")
    print(f"  original, scripting       {percentiles([o[0] for o in original])}")
    print(f"  original, to next frame   {percentiles([o[1] for o in original])}")
    print(f"  ratio to next frame (this / original, medians): "
          f"{statistics.median(ours_frame) / statistics.median([o[1] for o in original]):.2f}")


if __name__ == "__main__":
    main()
