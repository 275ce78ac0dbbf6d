"""Atomic output directories: real SIGKILL and SIGTERM on a child process, leftovers, the umask."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, subprocess_env
from conversion import atomic

# A child that builds `out` and waits inside the block: the test signals it there.
_CHILD = """
import os, sys, time
from pathlib import Path
from conversion import atomic
out = Path(sys.argv[1])
try:
  with atomic.output_dir(out) as tmp:
    (tmp / "half.bin").write_bytes(b"x" * 1000)
    (out.parent / "ready").write_text(str(tmp))
    time.sleep(60)
except atomic.Terminated as e:
  sys.exit(128 + e.signum)
"""


def _child_in_block(out):
  proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(out)], env=subprocess_env(), cwd=REPO)
  ready = out.parent / "ready"
  deadline = time.monotonic() + 120
  while not ready.exists():
    assert proc.poll() is None, f"child exited early with rc {proc.returncode}"
    assert time.monotonic() < deadline, "child never reached the block"
    time.sleep(0.05)
  return proc, ready.read_text()


def _names(path):
  return sorted(p.name for p in path.iterdir())


def test_sigterm_removes_the_temporary_directory(tmp_path):
  proc, tmp = _child_in_block(tmp_path / "out")
  assert tmp.endswith(f"out.partial-{proc.pid}")
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=60) == 128 + signal.SIGTERM
  assert _names(tmp_path) == ["ready"]


def test_sigkill_leftover_is_removed_by_the_next_run_to_the_same_target(tmp_path, caplog):
  proc, tmp = _child_in_block(tmp_path / "out")
  proc.kill()
  assert proc.wait(timeout=60) == -signal.SIGKILL
  leftover = tmp_path / f"out.partial-{proc.pid}"
  assert json.loads((leftover / atomic.MARKER).read_text()) == {"pid": proc.pid, "target": str(tmp_path / "out")}
  with caplog.at_level(logging.WARNING, logger="conversion.atomic"):
    with atomic.output_dir(tmp_path / "out") as tmp:
      (tmp / "done").write_text("ok")
  assert f"removing {leftover}" in caplog.text
  assert _names(tmp_path) == ["out", "ready"] and _names(tmp_path / "out") == ["done"]


def test_leftovers_that_are_not_provably_ours_and_dead_stay(tmp_path, caplog):
  target = tmp_path / "out"
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    cases = {
        "out.partial-1234567": None,                                             # no marker
        f"out.partial-{sleeper.pid}": {"pid": sleeper.pid, "target": str(target)},   # its process is alive
        "out.partial-7654321": {"pid": 7654321, "target": str(tmp_path / "other")},  # another target
        "out.partial-7654322": {"pid": 1, "target": str(target)},                  # pid differs from the name
    }
    for name, marker in cases.items():
      (tmp_path / name).mkdir()
      if marker is not None:
        (tmp_path / name / atomic.MARKER).write_text(json.dumps(marker))
    with caplog.at_level(logging.WARNING, logger="conversion.atomic"):
      with atomic.output_dir(target):
        pass
  finally:
    sleeper.kill()
    sleeper.wait()
  assert _names(tmp_path) == sorted(["out", *cases])
  for reason in ("not a directory with our marker file", f"process {sleeper.pid} is still running",
                 "names another run", "names another run"):
    assert reason in caplog.text


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_output_follows_the_umask(tmp_path, umask):
  old = os.umask(umask)
  try:
    with atomic.output_dir(tmp_path / "out") as tmp:
      (tmp / "file").write_text("x")
  finally:
    os.umask(old)
  assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~umask
  assert (tmp_path / "out" / "file").stat().st_mode & 0o777 == 0o666 & ~umask
  assert _names(tmp_path / "out") == ["file"]   # the marker does not outlive the rename
