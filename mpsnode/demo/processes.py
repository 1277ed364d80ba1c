"""The demo's daemons: ``python -m mpsnode.cli ...`` child processes, started, awaited and stopped.

Each prints one JSON ready line on stdout and logs to its own file; on Linux each is asked to get
SIGTERM when the demo dies (even by SIGKILL), so no daemon outlives it.
"""

from __future__ import annotations

import ctypes
import json
import selectors
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOCALHOST = "127.0.0.1"
READY_TIMEOUT = 120.0  # seconds for a daemon to print its ready line (a first run compiles numba kernels)


def _prctl() -> Any:
    """libc's prctl, looked up once in the parent (the child, between fork and exec, only calls it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM this child when the demo process dies (even by SIGKILL): no leftover daemons."""
    _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class NodeProcess:
    """A daemon started as ``python -m mpsnode.cli ...`` that prints one JSON ready line on stdout."""

    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[str] | None = None
    ready: dict[str, Any] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return int(self.ready["port"])

    @property
    def address(self) -> str:
        return f"{LOCALHOST}:{self.port}"

    def start(self, timeout: float = READY_TIMEOUT) -> NodeProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w") as log:
            # own session: a Ctrl-C in the terminal reaches the demo, which stops its children in order
            # preexec_fn only calls prctl (resolved beforehand): nothing in it can wait on a lock
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mpsnode.cli", *self.argv],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                text=True,
                start_new_session=True,
                preexec_fn=_die_with_parent if _PRCTL is not None else None,
            )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DemoFailed(
                        f"the {self.name} did not get ready in {timeout:.0f} s; see {self.log_path}"
                    )
                if sel.select(min(left, 0.5)):
                    line = self.proc.stdout.readline()
                    if not line:
                        raise DemoFailed(
                            f"the {self.name} exited with code {self.proc.wait()} while starting:\n"
                            + self.log_tail()
                        )
                    self.ready = json.loads(line)
                    return self

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text().splitlines()
        except OSError:
            return ""
        return "\n".join("    " + t for t in text[-lines:])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait, SIGKILL if it does not stop; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):  # slow, or a second Ctrl-C: kill it
                self.proc.kill()
                self.proc.wait(timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


class DemoFailed(Exception):
    """The demo cannot go on (a daemon did not start, the sequencer went away); the message says why."""


def mpsnode_command() -> str:
    """How to call ``mpsnode`` from here: the plain name when it is on PATH, else this venv's script
    (``make demo`` runs from ``.venv`` without activating it)."""
    script = Path(sys.executable).parent / "mpsnode"
    found = shutil.which("mpsnode")
    if not script.exists() or (found is not None and Path(found).resolve() == script.resolve()):
        return "mpsnode"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)
