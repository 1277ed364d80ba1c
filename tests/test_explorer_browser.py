"""The explorer's page in a real browser: Debian's chromium, headless, driven by Selenium through
Debian's chromedriver, against a real sequencer and a real verifier on 127.0.0.1 (the page is the
verifier's, so it shows what that node verified). The page is opened before the task starts and
never reloaded: it must gain each round's accuracy point live, mark the slashed attacker, and end
showing the rewards that ``mpsnode query --json`` shows. Screenshots and the measured latencies
(page load; block made -> point drawn) are written to ``artifacts/explorer/`` (``MPS_ARTIFACTS``
elsewhere). ``.ci/run`` installs chromium; outside CI the test skips, with the reason, without it.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cli_tx import PARAMS, cli

from nodekit import LOCALHOST, REPO, Daemon, make_home, verifier

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("MPS_ARTIFACTS", REPO / "artifacts")) / "explorer"
N = 6  # clients: five honest, one attacker (scaled updates, slashed)

if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    if os.environ.get("MPS_CI"):
        raise RuntimeError("CI must run the browser tests: .ci/run installs chromium and chromium-driver")
    pytest.skip(
        "no chromium/chromedriver here (apt-get install chromium chromium-driver)", allow_module_level=True
    )

from selenium import webdriver  # noqa: E402 - only once the browser is known to be there
from selenium.webdriver.chrome.service import Service  # noqa: E402


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,2000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def page(driver, script: str):
    return driver.execute_script(script)


def wait_for(driver, script: str, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = page(driver, script)
        if value:
            return value
        if time.monotonic() > deadline:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(ARTIFACTS / "timeout.png"))
            logs = driver.get_log("browser")
            raise AssertionError(f"the page never showed {what} (screenshot in {ARTIFACTS}); console: {logs}")
        time.sleep(0.1)


@pytest.mark.parametrize("node", ["verifier", "sequencer"])
def test_the_task_page_follows_a_task_live_and_ends_as_the_cli_says(
    tmp_path: Path, daemons: list, browser, node: str
) -> None:
    make_home(tmp_path, clients=N, params=PARAMS)
    seq = Daemon(tmp_path, ["--http", f"{LOCALHOST}:0"])
    daemons.append(seq.start())
    vhome = tmp_path / "verifier"
    vhome.mkdir()
    (vhome / "genesis.json").write_text((tmp_path / "genesis.json").read_text())
    ver = verifier(vhome, (LOCALHOST, seq.port), "--http", f"{LOCALHOST}:0")
    daemons.append(ver.start())
    created = cli(seq, "client", "create-task", "--from", "user", "--digits-clients", str(N), "--alpha", "iid",
                  "--seed", "0", "--target", "0.9", "--max-rounds", "6", "--join-blocks", "100000")  # fmt: skip
    assert created.returncode == 0, created.stderr
    task = json.loads(created.stdout)["task_id"]
    url = f"http://{LOCALHOST}:{(ver if node == 'verifier' else seq).http_port}/#/task/{task}"
    shots = ARTIFACTS / node

    started = time.monotonic()
    browser.get(url)
    wait_for(browser, f"return document.querySelector('#task-status') && {task}", 20, "the task")
    load_s = time.monotonic() - started
    loaded_at = page(browser, "return window.mpsExplorer.loadedAt")
    assert page(browser, "return document.querySelectorAll('svg.curve circle.point').length") == 0
    assert page(browser, "return document.querySelector('#task-status').textContent") == "JOINING"
    shots.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(shots / "task-joining.png"))

    procs = []
    for i in range(N):
        attack = ["--attack", "scaled"] if i == N - 1 else []
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "mpsnode.cli", "client", "run", "--home", str(tmp_path), "--node",
             f"{LOCALHOST}:{seq.port}", "--from", f"client-{i}", "--task", str(task), "--digits-shard",
             f"{i}/{N}", "--alpha", "iid", "--seed", "0", *attack],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))  # fmt: skip
    try:
        wait_for(browser, "return document.querySelectorAll('svg.curve circle.point').length >= 1", 240,
                 "a first accuracy point")  # fmt: skip
        browser.save_screenshot(str(shots / "task-first-round.png"))
        for i, p in enumerate(procs):
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0 or (i == N - 1 and p.returncode == 1), err[
                -2000:
            ]  # 1: removed (slashed)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    shown = json.loads(cli(seq, "query", "task", str(task)).stdout)
    assert shown["status"] in ("COMPLETED", "EXPIRED")
    wait_for(browser, f"return document.querySelector('#task-status').textContent === '{shown['status']}'", 60,
             "the task's end")  # fmt: skip
    scored = shown["rounds_closed"] - shown["void_rounds"]
    wait_for(browser, f"return document.querySelectorAll('svg.curve circle.point').length === {scored}", 30,
             f"{scored} accuracy points")  # fmt: skip
    browser.save_screenshot(str(shots / "task-done.png"))

    assert page(browser, "return window.mpsExplorer.loadedAt") == loaded_at  # never reloaded
    points = page(browser, "return [...document.querySelectorAll('svg.curve circle.point')].map("
                  "c => [Number(c.dataset.round), Number(c.dataset.accuracyBps)])")  # fmt: skip
    events = json.loads(cli(seq, "query", "events", "--task", str(task), "--count", "100000").stdout)[
        "blocks"
    ]
    closed = [e for b in events for e in b["events"] if e["event"] == "RoundClosed" and not e["void"]]
    assert points == [[e["round"], e["accuracy_bps"]] for e in closed]
    rows = page(browser, "return [...document.querySelectorAll('#clients tr[data-address]')].map(r => "
                "[r.dataset.address, ...[1, 2, 3].map(i => r.children[i].textContent)])")  # fmt: skip
    by_address = {
        a: (state, int(units.replace(",", "")), int(paid.replace(",", ""))) for a, state, units, paid in rows
    }
    attacker = json.loads(cli(seq, "query", "account", f"client-{N - 1}").stdout)["address"]
    assert by_address[attacker][0] == "slashed"
    paid = {e["address"]: e["amount"] for b in events for e in b["events"] if e["event"] == "Rewarded"}
    for i in range(N - 1):
        address = json.loads(cli(seq, "query", "account", f"client-{i}").stdout)["address"]
        state, units, got = by_address[address]
        assert state == "participant" and units == shown["reward_units"].get(address, 0), (i, rows)
        assert got == paid.get(address, 0), (i, rows, paid)

    seen = page(browser, "return window.mpsExplorer.rounds")
    made = {}
    for e in closed:
        height = next(b["height"] for b in events if e in b["events"])
        made[e["round"]] = json.loads(cli(seq, "query", "block", str(height)).stdout)["timestamp_ms"]
    drawn = [s for s in seen if s.get("renderedMs") and s["round"] in made]
    assert [s["round"] for s in drawn] == [e["round"] for e in closed], seen  # every point arrived live
    live = [s["renderedMs"] - made[s["round"]] for s in drawn]
    to_event = [s["receivedMs"] - made[s["round"]] for s in drawn]
    to_draw = [s["renderedMs"] - s["receivedMs"] for s in drawn]
    figures = {
        "page_load_s": round(load_s, 3),
        "live_update_ms": {"median": statistics.median(live), "max": max(live), "rounds": len(live)},
        "block_to_event_ms": {"median": statistics.median(to_event), "max": max(to_event)},
        "event_to_drawn_ms": {"median": statistics.median(to_draw), "max": max(to_draw)},
        "block_time_ms": PARAMS.block_time_ms,
        "node": node,
    }
    (shots / "latency.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures))
