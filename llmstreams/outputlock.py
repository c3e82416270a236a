"""One run at a time per output file: an advisory lock beside it, naming its holder.

Two batch runs appending to one output would both send every request (and bill it twice).
The lock is `flock` on a small file next to the output's real path (symlinks resolved, so two
links to one file share a lock), holding the holder's pid and host for the refusal message. The
kernel drops the lock when its holder dies, however it dies, so a stale file never blocks a run.
Where `fcntl` does not exist (Windows) runs are not locked.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

from llmstreams.errors import LLMStreamsError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class OutputLockedError(LLMStreamsError):
    """Another run holds the output file."""

    hint = "Wait for that run to finish (or stop it), then run again to resume"


def lock_path(output: Path) -> Path:
    real = Path(os.path.realpath(output))
    return real.with_name(f".{real.name}.lock")


class OutputLock:
    """Held from `acquire()` to `release()`; `acquire` raises `OutputLockedError` at once if
    another process holds it, and `OSError` if the lock file cannot be made."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.path = lock_path(output)
        self._fd = -1

    def __repr__(self) -> str:
        return f"<OutputLock {str(self.path)!r} {'held' if self._fd >= 0 else 'free'}>"

    def acquire(self) -> None:
        if fcntl is None:
            return
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise OutputLockedError(
                    f"{self.output} is being written by another llmstreams batch run ({holder}); "
                    "a second run would send every request again"
                ) from None
            except BaseException:
                os.close(fd)
                raise
            # A holder that finished may have removed the file between our open and flock:
            # then this lock is on a file nobody else will find, so lock the new one.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(record).encode() + b"\n")
        self._fd = fd

    def release(self) -> None:
        if self._fd < 0:
            return
        # Removed while still held, so that no other run can lock the file being removed.
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = -1


def _holder(fd: int) -> str:
    try:
        record = json.loads(os.pread(fd, 4096, 0))
        return f"pid {int(record['pid'])} on {str(record['host'])[:100]}, since {str(record['since'])[:40]}"
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return "its pid is not recorded yet"
