"""``mm-platform`` ends without the interpreter's teardown (``cli.exit_quickly``), yet everything a normal exit
does that matters still happens: the status, flushed output, exit handlers, other threads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CODE = """
import atexit, sys, threading, time
from mm_platform.cli import exit_quickly

out = sys.argv[1]
atexit.register(lambda: open(out + ".atexit", "w").write("ran"))

def slow():
    time.sleep(0.3)
    with open(out + ".thread", "w") as f:
        f.write("done")

threading.Thread(target=slow).start()

print("to stdout", end="")
print("to stderr", end="", file=sys.stderr)
exit_quickly(3)
"""


def test_exit_quickly_keeps_what_a_normal_exit_guarantees(tmp_path: Path) -> None:
    base = str(tmp_path / "probe")
    proc = subprocess.run([sys.executable, "-c", CODE, base], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3
    assert proc.stdout == "to stdout" and proc.stderr == "to stderr"
    assert Path(base + ".atexit").read_text() == "ran"
    assert Path(base + ".thread").read_text() == "done"


def test_the_program_entry_point_is_run() -> None:
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["mm-platform"] == "mm_platform.cli:run"
    proc = subprocess.run([sys.executable, "-m", "mm_platform.cli", "config", "--env-example"], check=False,
                          capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "MM_DATA_DIR" in proc.stdout
