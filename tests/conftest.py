"""Shared test set-up: the numba cache, and ``daemons``, which kills every process a test started."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parent.parent / ".numba_cache"))


@pytest.fixture
def daemons() -> Iterator[list]:
    """Append a test's processes here (``nodekit.Daemon`` or ``subprocess.Popen``); all are killed after it."""
    started: list = []
    yield started
    for p in started:
        if isinstance(p, subprocess.Popen):
            if p.poll() is None:
                p.kill()
                p.wait(30)
        else:
            p.kill()
