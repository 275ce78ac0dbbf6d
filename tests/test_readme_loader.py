"""The README's example of the loader without MaxText runs as written."""

import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, subprocess_env


def _example() -> str:
  readme = (REPO / "README.md").read_text()
  section = readme[readme.index("## Masked packing: the Grain loader"):]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_loader_example_runs_without_maxtext(tmp_path, tiny_lwm_data):
  shutil.copytree(tiny_lwm_data, tmp_path / "tiny_lwm_data")
  code = _example() + "\nimport sys\nassert not [m for m in sys.modules if m.split('.')[0] == 'maxtext']\n"
  proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=subprocess_env(), capture_output=True,
                        text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  shape, total = proc.stdout.strip().rsplit(" ", 1)
  assert shape == "(8, 1024)"
  assert float(total) == pytest.approx(1.0, rel=1e-5)  # final weights: lambda_text + lambda_vision
