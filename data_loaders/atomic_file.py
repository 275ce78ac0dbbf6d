"""Files that appear complete or not at all, with the permissions of an ordinary new file.

`atomic_path(path)` yields a temporary name beside `path`; when the block succeeds the file gets
the mode `open()` would have given it (0o666 minus the process umask: `tempfile.mkstemp` makes
0600) and is renamed onto `path`; when it fails the temporary file is removed. Used for the
corpus JSONL, pre-tokenized files, the demo report and the needle results and heatmaps.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


def creation_mode() -> int:
  """0o666 minus the process umask (read by setting it and putting it back: there is no getter)."""
  umask = os.umask(0o022)
  os.umask(umask)
  return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
  """A temporary file name in `path`'s directory (created) that becomes `path` when the block succeeds."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  os.close(fd)
  try:
    yield tmp
    os.chmod(tmp, creation_mode())
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise
