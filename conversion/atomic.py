"""Atomic output directories: build everything in a temporary sibling, rename it into place at the end.

An interrupted or failed conversion (exception, Ctrl-C, SIGTERM) removes its temporary directory,
so the output path either does not exist or holds a complete conversion. SIGTERM is turned into a
`Terminated` exception while the directory is being built, so it unwinds like Ctrl-C does; the
previous handler is back before the final rename. Only a run killed with SIGKILL (or a crash) leaves
`<output>.partial-<pid>` behind, never `<output>` itself. Each temporary directory holds a marker
file naming its target and process; the next run to the same target removes a leftover whose
marker matches and whose process is gone, and leaves anything else alone with a warning (it is
not ours, or its run may still be going).

Directories and files are created with the process umask (plain `mkdir`/`open`), like any tool's
output.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Iterator

from conversion.spec import ConversionError

log = logging.getLogger(__name__)
MARKER = ".lwm-convert-partial.json"


class Terminated(BaseException):
  """SIGTERM arrived while an output directory was being built (a BaseException, like KeyboardInterrupt)."""

  def __init__(self, signum: int = signal.SIGTERM):
    super().__init__(f"signal {signum}")
    self.signum = signum


def _raise_terminated(signum, _frame):
  raise Terminated(signum)


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:   # someone else's live process
    return True
  return True


def _leftover_is_ours_and_dead(path: Path, final: Path) -> str | None:
  """Why the leftover `path` must stay, or None when a dead run of ours to `final` left it."""
  try:
    pid = int(path.name.rsplit(".partial-", 1)[1])
  except ValueError:
    pid = 0
  if pid <= 0:
    return "its name has no process id"
  marker = path / MARKER
  if path.is_symlink() or not path.is_dir() or marker.is_symlink() or not marker.is_file():
    return f"it is not a directory with our marker file {MARKER}"
  try:
    record = json.loads(marker.read_text(encoding="utf-8"))
  except (OSError, ValueError) as e:
    return f"its marker file is unreadable ({e})"
  if not isinstance(record, dict) or record.get("pid") != pid or record.get("target") != str(final):
    return f"its marker file names another run ({record!r})"
  if pid != os.getpid() and _pid_alive(pid):
    return f"process {pid} is still running"
  return None


def _remove_leftovers(final: Path) -> None:
  """Removes the `<final>.partial-<pid>` directories of earlier killed runs to the same target."""
  prefix = f"{final.name}.partial-"   # compared as a string: the name may hold glob characters
  for path in sorted(p for p in final.parent.iterdir() if p.name.startswith(prefix)):
    reason = _leftover_is_ours_and_dead(path, final)
    if reason is None:
      log.warning("removing %s, left by an earlier run that was killed", path)
      shutil.rmtree(path)
    else:
      log.warning("leaving %s alone: %s", path, reason)


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
  """SIGTERM raises `Terminated` inside the block (main thread only: elsewhere signals cannot be set)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = signal.signal(signal.SIGTERM, _raise_terminated)
  try:
    yield
  finally:
    # None: the previous handler was not set from Python; the default is the best restoration.
    signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


@contextlib.contextmanager
def output_dir(output: str | os.PathLike) -> Iterator[Path]:
  """Yields an empty temporary directory that becomes `output` when the block succeeds."""
  final = Path(output).absolute()
  if final.exists():
    raise ConversionError(f"output {final} already exists; remove it or choose another path")
  if not final.parent.is_dir():
    raise ConversionError(f"output's parent directory {final.parent} does not exist")
  _remove_leftovers(final)
  tmp = final.with_name(f"{final.name}.partial-{os.getpid()}")
  with _sigterm_raises():
    try:
      tmp.mkdir()
    except FileExistsError as e:   # _remove_leftovers left it: not provably ours to remove
      raise ConversionError(f"{tmp} exists and is not a leftover of this converter; remove it") from e
    try:
      (tmp / MARKER).write_text(json.dumps({"pid": os.getpid(), "target": str(final)}), encoding="utf-8")
      yield tmp
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      raise
  try:
    if final.exists():
      raise ConversionError(f"output {final} appeared while converting; leaving it alone")
    os.rename(tmp, final)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  (final / MARKER).unlink()   # after the rename, so that a leftover always carries its marker
