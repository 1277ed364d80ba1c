"""An exclusive lock on a node's home (or a client's journal): one process at a time.

``ExclusiveLock(path, what)`` holds an ``fcntl.flock`` on ``path`` (created if missing) for as long
as the process keeps it, and writes its pid and role into the file; the kernel releases it when
the process ends, however it ends (``kill -9`` included), so a stale lock never blocks a restart.
A second process asking for it gets ``HomeInUse`` naming the holder's pid, before it has opened
the store or said it is ready.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from mpsnode.node.errors import HomeInUse

LOCK_FILE = ".lock"


class ExclusiveLock:
    def __init__(self, path: str | Path, what: str) -> None:
        self.path = Path(path)
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> ExclusiveLock:
        """Take the lock, or raise ``HomeInUse`` naming the process that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise HomeInUse(
                f"{self.path.parent} is in use by {holder}: stop it first, or use another directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({self.what})\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ExclusiveLock:
        return self.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def home_lock(home: str | Path, what: str) -> ExclusiveLock:
    """The lock of a node home (``HOME/.lock``), for a daemon that is about to open its store."""
    return ExclusiveLock(Path(home) / LOCK_FILE, what)
