"""Only allow-listed modules import MaxText; the loader and kernels import without it (layers: test_layering.py)."""

import ast
import subprocess
import sys

from conftest import REPO

PACKAGES = ("lwm_plugin", "data_loaders", "conversion", "maxtext_configs", "benchmarks")

# Modules allowed to import `maxtext`: the seam, the config class and the entry points.
ALLOWED = {
    "lwm_plugin/config/lwm_config.py",
    # Converters reuse MaxText's own conversion pieces: its Llama name table (param_mapping) and
    # its checkpoint storage options (checkpoint_context), so our checkpoints match what it loads.
    "conversion/names.py",
    "conversion/orbax_params.py",
    # A benchmark entry point whose peer is MaxText's own converter (run as a script, never imported).
    "benchmarks/convert_1b.py",
}
ALLOWED_DIRS = ("lwm_plugin/integration/",)


def _imports_maxtext(path) -> bool:
  tree = ast.parse(path.read_text(), filename=str(path))
  for node in ast.walk(tree):
    if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "maxtext" for a in node.names):
      return True
    if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "maxtext":
      return True
  return False


def test_only_allow_listed_modules_import_maxtext():
  offenders = []
  for package in PACKAGES:
    for path in sorted((REPO / package).rglob("*.py")):
      rel = path.relative_to(REPO).as_posix()
      if _imports_maxtext(path) and rel not in ALLOWED and not rel.startswith(ALLOWED_DIRS):
        offenders.append(rel)
  assert not offenders, f"these modules import maxtext but are not allow-listed: {offenders}"


def test_allow_list_has_no_stale_entries():
  """An entry whose module no longer imports MaxText (or no longer exists) would hide a future regression."""
  stale = sorted(rel for rel in ALLOWED if not (REPO / rel).is_file() or not _imports_maxtext(REPO / rel))
  assert not stale, f"ALLOWED lists modules that no longer import maxtext: {stale}"
  empty = sorted(d for d in ALLOWED_DIRS if not any(_imports_maxtext(p) for p in (REPO / d).rglob("*.py")))
  assert not empty, f"ALLOWED_DIRS lists folders where nothing imports maxtext: {empty}"


def test_the_check_sees_imports():
  assert _imports_maxtext(REPO / "lwm_plugin" / "config" / "lwm_config.py")  # the scanner is not blind


def test_maxtext_free_packages_import_without_maxtext():
  code = ("import sys, data_loaders, lwm_plugin, lwm_plugin.config.settings, lwm_plugin.config.files, maxtext_configs\n"
          "import lwm_plugin.ring_attention, lwm_plugin.kernels.ring.hlo, lwm_plugin.kernels.ring.layouts\n"
          "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'maxtext')\n"
          "assert not bad, bad\n")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=300)
