"""`data_loaders.atomic_file`: complete files only, with the umask's permissions (not mkstemp's 0600)."""

import os
import stat

import pytest

from data_loaders.atomic_file import atomic_path
from data_loaders.synthetic_corpus import write_jsonl


@pytest.fixture
def umask_027():
  old = os.umask(0o027)
  yield
  os.umask(old)


def _mode(path):
  return stat.S_IMODE(path.stat().st_mode)


def test_files_get_the_umask_permissions(tmp_path, umask_027):
  with atomic_path(tmp_path / "sub" / "a.txt") as tmp:
    with open(tmp, "w", encoding="utf-8") as f:
      f.write("x")
  assert _mode(tmp_path / "sub" / "a.txt") == 0o640
  write_jsonl(tmp_path / "c.jsonl", [{"text": "a"}])  # the tiny corpus's writer
  assert _mode(tmp_path / "c.jsonl") == 0o640 and (tmp_path / "c.jsonl").read_text() == '{"text":"a"}\n'
  os.umask(0o002)
  write_jsonl(tmp_path / "d.jsonl", [])
  assert _mode(tmp_path / "d.jsonl") == 0o664


def test_a_failed_write_leaves_nothing(tmp_path):
  (tmp_path / "keep.txt").write_text("old")
  with pytest.raises(RuntimeError):
    with atomic_path(tmp_path / "keep.txt") as tmp:
      with open(tmp, "w", encoding="utf-8") as f:
        f.write("half")
      raise RuntimeError("interrupted")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"] and (tmp_path / "keep.txt").read_text() == "old"
