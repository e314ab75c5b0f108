"""The data dir's ingest lock and process identity: real processes, real flock."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from mm_platform.lib.locks import IngestLock, ProcessRef, process_start_time

HOLD = """
import sys, time
from pathlib import Path
from mm_platform.lib.locks import IngestLock
lock = IngestLock(Path(sys.argv[1]))
lock.acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_process_ref_tells_dead_and_reused_pids():
    me = ProcessRef.current()
    assert me.start_time and me.is_current() and not me.is_dead()
    done = subprocess.run([sys.executable, "-c", "pass"], check=True)
    assert done.returncode == 0
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert ProcessRef(proc.pid, socket.gethostname(), "").is_dead()
    # a live pid whose start time differs is a reused pid: the original process is dead
    assert ProcessRef(os.getpid(), me.host, str(int(me.start_time) - 1)).is_dead()
    # another host: never judged dead from here
    assert not ProcessRef(proc.pid, me.host + "-elsewhere", "").is_dead()
    assert process_start_time(proc.pid) == ""


def test_lock_is_exclusive_names_holder_and_dies_with_it(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", os.getcwd())})
    try:
        assert holder.stdout.readline().strip() == "held"
        lock = IngestLock(tmp_path)
        assert lock.busy() == holder.pid
        said = []
        with pytest.raises(TimeoutError, match=f"pid {holder.pid}"):
            lock.acquire(echo=said.append, timeout=0.5, poll=0.05)
        assert said == [f"waiting for ingest pid {holder.pid} to finish (lock {lock.path}) …"]
        holder.send_signal(signal.SIGKILL)  # the kernel releases a flock when its holder dies
        holder.wait()
        t0 = time.monotonic()
        lock.acquire(echo=said.append, timeout=5, poll=0.05)
        assert time.monotonic() - t0 < 2 and lock.held and lock.holder_pid() == os.getpid()
        assert IngestLock(tmp_path).busy() == os.getpid()
        lock.release()
        assert IngestLock(tmp_path).busy() is None
    finally:
        holder.kill()
        holder.wait()
