"""The devnet L1: an anvil node from the npm package ``@foundry-rs/anvil`` (pinned in the
repository's package-lock.json, installed by ``make`` with ``npm ci``), started on 127.0.0.1.

``Anvil.start`` picks a free port, waits until the node answers JSON-RPC and reads the funded
development accounts' keys from the config anvil writes; ``stop`` ends it (anvil writes its
state dump then, when started with ``state=``).
"""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from mpsnode.node.errors import AnvilError

LOCALHOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[3]
READY_TIMEOUT = 30.0
DEVNET_CHAIN_ID = 31337
DEVNET_ACCOUNTS = 40  # the deployer, the sequencer, a task creator and a client each, with room to spare


def _platform_package() -> str:
    system = {"linux": "linux", "darwin": "darwin", "win32": "win32"}.get(sys.platform, sys.platform)
    machine = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    return f"anvil-{system}-{machine}"


def find_anvil() -> Path:
    """The anvil binary: ``$MPSNODE_ANVIL``, else the one ``npm ci`` put in node_modules."""
    override = os.environ.get("MPSNODE_ANVIL")
    if override:
        path = Path(override)
        if not path.is_file():
            raise AnvilError(f"MPSNODE_ANVIL={override} is not a file")
        return path
    modules = REPO_ROOT / "node_modules" / "@foundry-rs"
    for candidate in (
        modules / _platform_package() / "bin" / "anvil",
        REPO_ROOT / "node_modules" / ".bin" / "anvil",
    ):
        if candidate.is_file():
            return candidate
    raise AnvilError(
        f"anvil is not installed (looked in {modules}): run `make setup` (npm ci), or set MPSNODE_ANVIL"
    )


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        return int(s.getsockname()[1])


def rpc(url: str, method: str, params: list[Any] | None = None, timeout: float = 5.0) -> Any:
    """One JSON-RPC call (for readiness checks and anvil's own methods; the rest uses web3)."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        reply = json.loads(response.read())
    if "error" in reply:
        raise AnvilError(f"{method}: {reply['error'].get('message', reply['error'])}")
    return reply["result"]


@dataclass
class Anvil:
    """One anvil process on 127.0.0.1; a context manager that stops it on exit."""

    port: int = 0
    accounts: int = DEVNET_ACCOUNTS
    state: Path | None = None  # load from and dump to this file (anvil's --state)
    block_time: float | None = None  # None: a block per transaction
    log_path: Path | None = None
    private_keys: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None
    _config: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    def start(self, workdir: Path) -> Anvil:
        """Start anvil and wait until it answers; ``AnvilError`` with anvil's last words if not."""
        binary = find_anvil()
        workdir.mkdir(parents=True, exist_ok=True)
        self._config = workdir / f"anvil-{os.getpid()}-{id(self)}.json"
        self.log_path = self.log_path or workdir / "anvil.log"
        if self.port:
            with socket.socket() as probe:
                if probe.connect_ex((LOCALHOST, self.port)) == 0:
                    raise AnvilError(
                        f"{LOCALHOST}:{self.port} is in use: choose another port (0: a free one)"
                    )
        for _attempt in range(5):
            port = self.port or free_port()
            argv = [
                str(binary),
                "--host",
                LOCALHOST,
                "--port",
                str(port),
                "--accounts",
                str(self.accounts),
                "--chain-id",
                str(DEVNET_CHAIN_ID),
                "--config-out",
                str(self._config),
            ]
            if self.state is not None:
                argv += ["--state", str(self.state)]
            if self.block_time is not None:
                argv += ["--block-time", str(self.block_time)]
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            self.proc = subprocess.Popen(
                argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
            self.port = port
            if self._wait_ready():
                return self
            self.stop()
            if self.port and not self._port_taken():
                break
            self.port = 0  # lost a race for the port: pick another
        tail = self.log_path.read_text(errors="replace")[-600:] if self.log_path.exists() else ""
        raise AnvilError(f"anvil did not start on {LOCALHOST}:{port}: {tail.strip() or 'no output'}")

    def _port_taken(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex((LOCALHOST, self.port)) == 0

    def _wait_ready(self) -> bool:
        """True once anvil answers and its config file is whole (it is written in pieces, not
        renamed into place: a read may catch half of it); its keys are then ``private_keys``."""
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                rpc(self.url, "eth_chainId", timeout=1.0)
                if self._config is not None and self._config.exists():
                    self.private_keys = list(json.loads(self._config.read_text())["private_keys"])
                    return True
            except (OSError, urllib.error.URLError, AnvilError, ValueError, KeyError):
                pass
            time.sleep(0.05)
        return False

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (anvil dumps its state then) or SIGKILL, and wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):  # slow, or a second Ctrl-C: kill it
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._config is not None:
            self._config.unlink(missing_ok=True)

    def __enter__(self) -> Anvil:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
