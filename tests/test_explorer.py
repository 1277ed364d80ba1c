"""The explorer (``--http``) against a real sequencer and verifier on 127.0.0.1: its JSON says what
the CLI's ``--json`` says, it is read-only, escaped, bounded, and no browser can stall the node.
The page itself is driven in a real headless chromium in tests/test_explorer_browser.py."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import trio
from test_cli_tx import PARAMS, cli

from mpsnode.node.connection import connect

from nodekit import LOCALHOST, REPO, Daemon, make_home


def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://{LOCALHOST}:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def api(port: int, path: str) -> dict:
    status, _, body = get(port, "/api/" + path)
    assert status == 200, (path, status, body)
    return json.loads(body)


def run_clients(node: Daemon, task: int, n: int, attackers: dict[int, str] | None = None) -> None:
    procs = []
    for i in range(n):
        attack = (attackers or {}).get(i)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "mpsnode.cli", "client", "run", "--home", str(node.home), "--node",
             f"{LOCALHOST}:{node.port}", "--from", f"client-{i}", "--task", str(task), "--digits-shard",
             f"{i}/{n}", "--alpha", "iid", "--seed", "0", *(["--attack", attack] if attack else [])],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))  # fmt: skip
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]


@pytest.fixture
def node(tmp_path: Path, daemons: list) -> Daemon:
    make_home(tmp_path, clients=6, params=PARAMS)
    daemon = Daemon(tmp_path, ["--http", f"{LOCALHOST}:0"])
    daemons.append(daemon.start())
    assert daemon.http_port is not None
    return daemon


def test_the_api_says_what_the_cli_says_about_a_task_with_a_slashed_attacker(node: Daemon) -> None:
    created = cli(node, "client", "create-task", "--from", "user", "--digits-clients", "5", "--alpha", "iid",
                  "--seed", "0", "--target", "0.5", "--max-rounds", "6", "--join-blocks", "400")  # fmt: skip
    task = json.loads(created.stdout)["task_id"]
    run_clients(node, task, 5, attackers={4: "scaled"})
    port = node.http_port
    assert port is not None
    shown = json.loads(cli(node, "query", "task", str(task)).stdout)
    page = api(port, f"tasks/{task}")
    for key in (
        "status",
        "rounds_closed",
        "accuracy_bps",
        "reward_units",
        "participants",
        "escrow",
        "billed_rounds",
    ):
        assert page[key] == shown[key], key
    assert len(page["rounds"]) == shown["rounds_closed"]
    attacker = json.loads(cli(node, "query", "account", "client-4").stdout)
    assert [s["address"] for s in page["slashes"]] == [attacker["address"]]
    assert page["slashes"][0]["rule"] and page["rounds"][page["slashes"][0]["round"] - 1]["slashed"]
    events = json.loads(cli(node, "query", "events", "--task", str(task), "--count", "100000").stdout)[
        "blocks"
    ]
    paid = {e["address"]: e["amount"] for b in events for e in b["events"] if e["event"] == "Rewarded"}
    assert {r["address"]: r["amount"] for r in page["billing"]["rewarded"]} == paid
    for name in ("client-0", "client-4"):
        cli_view = json.loads(cli(node, "query", "account", name).stdout)
        web_view = api(port, f"accounts/{cli_view['address']}")
        for key in ("balance", "bonded", "nonce", "jailed", "tasks", "unbonding"):
            assert web_view[key] == cli_view[key], (name, key)
        kinds = {h["event"] for h in web_view["history"]}
        assert ("Slashed" in kinds) == (name == "client-4") and "TaskJoined" in kinds
        assert all(len(h["state_root"]) == 64 and h["height"] > 0 for h in web_view["history"])
    listed = api(port, "tasks")["tasks"]
    assert [t["task_id"] for t in listed] == [task] and listed[0]["status"] == shown["status"]
    head = api(port, "blocks")["blocks"][0]
    block = api(port, f"blocks/{head['height']}")
    assert block["hash"] == head["hash"] and block["txs_total"] == head["txs"]
    tx_id = json.loads(created.stdout)["tx_id"]
    one = api(port, f"txs/{tx_id}")
    receipt = json.loads(cli(node, "query", "receipt", tx_id).stdout)
    assert one["state"] == "included" and one["receipt"]["tx_id"] == tx_id and one["kind"] == "CREATE_TASK"
    assert one["height"] == receipt["height"] and [e["event"] for e in one["receipt"]["events"]] == [
        e["event"] for e in receipt["events"]
    ]


def test_read_only_escaped_and_every_bad_request_is_one_line(node: Daemon) -> None:
    port = node.http_port
    assert port is not None
    status, headers, body = get(port, "/")
    assert status == 200 and b'<script src="/app.js"' in body
    csp = headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, body = get(port, "/api/tasks", method)
        assert status == 405 and "read-only" in json.loads(body)["error"], method
    cases = [
        ("/api/tasks/999", 404, "no task 999"),
        ("/api/accounts/nothex", 400, "64 hex digits"),
        ("/api/accounts/" + "ab" * 31, 400, "64 hex digits"),
        ("/api/txs/" + "00" * 32, 404, "no tx"),
        ("/api/blocks/99999", 404, "no block at height 99999"),
        ("/api/blocks?before=x", 400, "before must be a block height"),
        ("/api/reports/3", 404, "no divergence report"),
        ("/api/accounts/%3Cscript%3E", 400, "64 hex digits"),
    ]
    for path, want, why in cases:
        status, headers, body = get(port, path)
        error = json.loads(body)["error"]
        assert status == want and why in error and "\n" not in error, (path, status, body)
        assert headers["content-type"].startswith("application/json")  # never rendered as a page
    status, _, body = get(port, "/no/such/page")
    assert status == 404
    js = (REPO / "mpsnode/node/explorer/static/app.js").read_text()
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js and "eval(" not in js


def test_no_browser_can_stall_the_node(node: Daemon) -> None:
    """Slow-loris connections, streams nobody reads and a flood of streams beyond the cap: the node
    goes on making and serving blocks, and the explorer answers once they are gone."""
    port = node.http_port
    assert port is not None
    created = cli(node, "client", "create-task", "--from", "user", "--digits-clients", "6",
                  "--join-blocks", "100000")  # fmt: skip
    assert created.returncode == 0
    lingering = []
    for _ in range(40):  # headers never finished
        s = socket.create_connection((LOCALHOST, port))
        s.sendall(b"GET /api/tasks HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        lingering.append(s)
    for _ in range(20):  # streams opened and never read (the cap is 16: the rest get 503)
        s = socket.create_connection((LOCALHOST, port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        s.sendall(b"GET /api/stream HTTP/1.1\r\nHost: x\r\n\r\n")
        lingering.append(s)
    busy = [get(port, "/api/stream")[0] for _ in range(2)]
    assert busy == [503, 503], busy

    async def wire_status() -> tuple[int, float]:
        async with connect((LOCALHOST, node.port)) as client:
            start = time.monotonic()
            status = await client.status()
            return status.height, time.monotonic() - start

    before, _ = trio.run(wire_status)
    # blocks go on being made (the task joining makes none: send txs) and the wire answers at once
    for i in range(5):
        done = cli(node, "tx", "transfer", "--to", "client-1", "--amount", str(i + 1), "--from", "client-0")
        assert done.returncode == 0, done.stderr
    after, took = trio.run(wire_status)
    assert after >= before + 5 and took < 1.0, (before, after, took)
    assert api(port, "tasks")["tasks"][0]["status"] == "JOINING"  # the explorer itself still answers
    for s in lingering:
        s.close()
    deadline = time.monotonic() + 20
    while True:  # the closed streams are noticed and their places freed
        s = socket.create_connection((LOCALHOST, port))
        s.sendall(b"GET /api/stream HTTP/1.1\r\nHost: x\r\n\r\n")
        first = s.recv(64)
        s.close()
        if first.startswith(b"HTTP/1.1 200") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert first.startswith(b"HTTP/1.1 200"), first
    assert get(port, "/api/node")[0] == 200


def test_a_busy_http_port_is_one_line_and_nothing_starts(tmp_path: Path) -> None:
    make_home(tmp_path, clients=1, params=PARAMS)
    holder = socket.socket()
    holder.bind((LOCALHOST, 0))
    holder.listen()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "mpsnode.cli", "sequencer", "--home", str(tmp_path), "--listen",
             f"{LOCALHOST}:0", "--http", f"{LOCALHOST}:{holder.getsockname()[1]}"],
            cwd=REPO, capture_output=True, text=True, timeout=60)  # fmt: skip
    finally:
        holder.close()
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "cannot listen on" in last and "explorer (--http)" in last and "Traceback" not in done.stderr
    assert '"ready"' not in done.stdout
