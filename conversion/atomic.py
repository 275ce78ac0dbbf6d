"""Atomic output directories: build everything in a temporary sibling, rename it into place at the end.

An interrupted or failed conversion (exception, Ctrl-C) removes its temporary directory, so the
output path either does not exist or holds a complete conversion. A run killed with SIGKILL can
leave `<output>.partial-<pid>` behind, never `<output>` itself; the name says what it is.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

from conversion.spec import ConversionError


@contextlib.contextmanager
def output_dir(output: str | os.PathLike) -> Iterator[Path]:
  """Yields an empty temporary directory that becomes `output` when the block succeeds."""
  final = Path(output).absolute()
  if final.exists():
    raise ConversionError(f"output {final} already exists; remove it or choose another path")
  if not final.parent.is_dir():
    raise ConversionError(f"output's parent directory {final.parent} does not exist")
  tmp = final.with_name(f"{final.name}.partial-{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir()
  try:
    yield tmp
    if final.exists():
      raise ConversionError(f"output {final} appeared while converting; leaving it alone")
    os.rename(tmp, final)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
