"""A CLI's usage-error probe: run `main(argv)` in an empty directory, expect rc 2, nothing written, no traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence


def _files(root: Path) -> set[Path]:
  return {p.relative_to(root) for p in root.rglob("*")}


def probe_usage_error(main: Callable[[Sequence[str]], int], argv: Sequence[str], tmp_path: Path, monkeypatch,
                      capsys, *, keep=()) -> str:
  """Runs `main(argv)` in `tmp_path/cwd` (with the `keep` files: (name, writer) pairs); returns stderr after
  asserting exit code 2, that no new file exists and that no traceback was printed."""
  work = tmp_path / "cwd"
  work.mkdir()
  for name, make in keep:
    make(work / name)
  monkeypatch.chdir(work)
  before = _files(work)
  rc = main(argv)
  err = capsys.readouterr().err
  assert rc == 2, err
  assert _files(work) == before, sorted(map(str, _files(work) - before))
  assert "Traceback" not in err
  return err
