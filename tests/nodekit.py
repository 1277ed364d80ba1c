"""Test kit for daemons: a devnet home, the real ``mpsnode sequencer`` or ``verifier`` process on
127.0.0.1, raw sockets.

``Daemon.start`` runs ``python -m mpsnode.cli sequencer --listen 127.0.0.1:0`` and reads the port
from the ready line it prints; ``stop`` sends SIGTERM and waits, ``kill`` sends SIGKILL. The
``daemon`` fixture factory kills whatever is still running at teardown, even on failure.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

import genesis as genesis_tool
from mpsnode.consensus import crypto
from mpsnode.consensus.encoding import decode
from mpsnode.consensus.genesis import Genesis
from mpsnode.consensus.params import Params
from mpsnode.node.messages import Msg
from mpsnode.node.wire import LENGTH, PROTOCOL_VERSION, encode_frame

REPO = Path(__file__).resolve().parent.parent
LOCALHOST = "127.0.0.1"


def make_home(path: Path, clients: int = 6, params: Params | None = None) -> genesis_tool.Network:
    return genesis_tool.make_network(
        path, clients=clients, devnet_keys=True, params=params, listen=f"{LOCALHOST}:0"
    )


@dataclass
class Daemon:
    home: Path
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    port: int = 0
    metrics_port: int | None = None
    http_port: int | None = None  # the explorer's, when started with --http
    starts: int = 0
    # what runs: ``python <command> --home H --listen 127.0.0.1:0 <args>``; ``name`` names the log file
    command: tuple[str, ...] = ("-m", "mpsnode.cli", "sequencer")
    name: str = "sequencer"

    @property
    def address(self) -> tuple[str, int]:
        return (LOCALHOST, self.port)

    def start(self, timeout: float = 60.0) -> Daemon:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        err = open(self.home / f"{self.name}-{self.starts}.log", "w")  # noqa: SIM115 - closed by the process end
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                *self.command,
                "--home",
                str(self.home),
                "--listen",
                f"{LOCALHOST}:0",
                *self.args,
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
        )
        err.close()
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = ""
        while not line:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.name} exited ({self.proc.wait()}): {self.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not get ready")
        ready = json.loads(line)
        self.port, self.metrics_port = ready["port"], ready["metrics_port"]
        self.http_port = ready.get("http_port")
        return self

    def metrics_text(self) -> str:
        """The daemon's Prometheus exposition (it must run with ``--metrics``)."""
        assert self.metrics_port is not None, f"{self.name} runs without --metrics"
        with urllib.request.urlopen(f"http://{LOCALHOST}:{self.metrics_port}/metrics", timeout=10) as resp:
            return resp.read().decode()

    def metrics(self) -> dict[str, float]:
        """Every sample, keyed as the exposition writes it: ``name`` or ``name{label="value",...}``."""
        out = {}
        for family in text_string_to_metric_families(self.metrics_text()):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                out[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
        return out

    def log_text(self) -> str:
        return (self.home / f"{self.name}-{self.starts}.log").read_text()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def rss_kib(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")


# ---------------------------------------------------------------------------------------------
# Raw sockets, for peers that misbehave on purpose


def verifier(home: Path, upstream: tuple[str, int], *args: str) -> Daemon:
    """A ``mpsnode verifier`` process following ``upstream`` (not started); ``home`` needs genesis.json."""
    return Daemon(
        home,
        ["--upstream", f"{upstream[0]}:{upstream[1]}", *args],
        command=("-m", "mpsnode.cli", "verifier"),
        name="verifier",
    )


def raw_connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection((LOCALHOST, port), timeout=timeout)
    return sock


def hello_frame(g: Genesis, req_id: int = 1) -> bytes:
    return encode_frame([int(Msg.HELLO), req_id, PROTOCOL_VERSION, g.chain_id, g.hash(), 0])


def read_message(sock: socket.socket) -> list | None:
    """One message, or None at end of stream."""
    head = _read_exact(sock, 4)
    if head is None:
        return None
    (n,) = LENGTH.unpack(head)
    body = _read_exact(sock, n)
    if body is None:
        return None
    return decode(body, max_bytes=n, max_str_len=8192, max_array_len=1 << 16)


def _read_exact(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        try:
            chunk = sock.recv(n - len(data))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        data += chunk
    return data


def read_until_closed(sock: socket.socket, limit: int = 64 << 20) -> bytes:
    """Everything the node sends until it closes the connection."""
    out = b""
    while len(out) < limit:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        out += chunk
    return out


def key(name: str) -> crypto.Keypair:
    return genesis_tool.devnet_key(name)
