"""Process liveness and the one-ingest-at-a-time lock of a data directory (no Dagster imports).

``IngestLock`` is an ``fcntl.flock`` on ``$MM_DATA_DIR/.ingest.lock``: the kernel releases it when the holder
dies, even by SIGKILL, so a crashed ingest never leaves a stale lock behind. The holder writes its pid into
the file so a waiting process can say whom it waits for.

``ProcessRef`` identifies a process by pid, host and start time (from ``/proc/<pid>/stat``, when there is
one), so a reused pid is not taken for the process that once had it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

LOCK_NAME = ".ingest.lock"


def process_start_time(pid: int) -> str:
    """The start time of ``pid`` in clock ticks since boot (field 22 of /proc/<pid>/stat); '' if unknown."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # the command name (field 2) is in parentheses and may hold spaces: split after the last ')'
    fields = raw[raw.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else ""


def process_started_after(pid: int, epoch_s: float) -> bool:
    """Whether the live process ``pid`` started after ``epoch_s`` (then it is not the one seen before it)."""
    ticks = process_start_time(pid)
    try:
        btime = next(int(x.split()[1]) for x in Path("/proc/stat").read_text().splitlines() if x.startswith("btime"))
    except (OSError, StopIteration, ValueError):
        return False
    if not ticks:
        return False
    return btime + int(ticks) / os.sysconf("SC_CLK_TCK") > epoch_s + 1.0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM  # exists, owned by someone else
    return True


@dataclass(frozen=True)
class ProcessRef:
    pid: int
    host: str
    start_time: str = ""

    @classmethod
    def current(cls) -> ProcessRef:
        return cls(os.getpid(), socket.gethostname(), process_start_time(os.getpid()))

    def is_current(self) -> bool:
        return self == ProcessRef.current()

    def is_dead(self) -> bool:
        """True only when sure: same host, and the pid is gone or now belongs to a later process."""
        if self.host != socket.gethostname():
            return False
        if not pid_alive(self.pid):
            return True
        return bool(self.start_time) and process_start_time(self.pid) not in ("", self.start_time)


class IngestLock:
    """Exclusive inter-process lock of one data directory; re-entrant within a process is not supported."""

    def __init__(self, data_dir: Path):
        self.path = Path(data_dir) / LOCK_NAME
        self._fd: int | None = None

    def holder_pid(self) -> int | None:
        try:
            text = self.path.read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def try_acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self._fd = fd
        return True

    def acquire(self, echo: Callable[[str], None] = print, timeout: float | None = None,
                poll: float = 0.2) -> None:
        """Block until the lock is ours (polling, so Ctrl-C and SIGTERM interrupt the wait)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        said = None
        while not self.try_acquire():
            holder = self.holder_pid()
            if holder != said:
                echo(f"waiting for ingest pid {holder or '?'} to finish (lock {self.path}) …")
                said = holder
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"ingest lock {self.path} still held by pid {holder} after {timeout:.0f}s")
            time.sleep(poll)

    def busy(self) -> int | None:
        """Without waiting: the pid of the process holding the lock (0 if unknown), or None when it is free."""
        if self.held or not self.path.exists():  # never held here: nothing to probe (and nothing created)
            return None
        if self.try_acquire():
            self.release()
            return None
        return self.holder_pid() or 0

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> IngestLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
