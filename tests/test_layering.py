"""The layering of the project's packages (README "Layout"), read from the code's own imports.

data_loaders (the token space) <- conversion (checkpoint formats) <- lwm_plugin (kernels, the
MaxText seam, config, apps); maxtext_configs holds data files only. Every arrow between packages
points down this list, no module takes part in an import cycle (function-local imports count),
data_loaders never reaches MaxText, and the few function-local project imports are listed here
with their reason.
"""

from __future__ import annotations

from helpers.import_graph import ImportGraph

from conftest import REPO

PACKAGES = ("data_loaders", "conversion", "lwm_plugin", "maxtext_configs")
# Allowed arrows between top-level packages (from -> to): each points down the layering.
DOWNWARD = {("conversion", "data_loaders"), ("lwm_plugin", "data_loaders"), ("lwm_plugin", "conversion"),
            ("lwm_plugin", "maxtext_configs")}
# Function-local project imports, each with its reason (at most 5): the launcher's two halves and lwm-vision.
LOCAL_IMPORTS: dict[tuple[str, str], str] = {
    ("lwm_plugin/launch.py", "lwm_plugin.train_apps"):
        "JAX reads JAX_PLATFORMS on import: lwm-train and lwm-convert set it (config `hardware`, --check) first",
    ("lwm_plugin/launch.py", "lwm_plugin.decode_apps"):
        "JAX reads JAX_PLATFORMS on import: lwm-eval, lwm-generate and lwm-make-qa set it (config `hardware`) first",
    ("lwm_plugin/vision/vision_cli.py", "lwm_plugin.vision.commands"):
        "JAX and Beam after the command line is checked: --platform sets JAX_PLATFORMS, usage errors stay instant",
}


def _graph() -> ImportGraph:
  return ImportGraph.scan(REPO, PACKAGES)


def test_no_import_cycles():
  cycles = _graph().cycles()
  assert not cycles, f"import cycles (function-local imports included): {cycles}"


def test_package_arrows_point_down():
  arrows = _graph().package_arrows()
  assert arrows <= DOWNWARD, f"arrows against the layering: {sorted(arrows - DOWNWARD)}"
  two_way = sorted((a, b) for a, b in arrows if (b, a) in arrows)
  assert not two_way, f"two-way package arrows: {two_way}"


def test_data_loaders_never_reach_maxtext_or_other_packages():
  graph = _graph()
  reached = graph.reaches("data_loaders")
  assert all(m.startswith("data_loaders") for m in reached), sorted(m for m in reached if not m.startswith("data_"))
  with_maxtext = sorted(m for m in reached if "maxtext" in graph.external[m])
  assert not with_maxtext, f"data_loaders reaches MaxText through {with_maxtext}"


def test_function_local_project_imports_are_few_and_explained():
  local = {(f, target) for f, _, target in _graph().local}
  unexplained = sorted(local - set(LOCAL_IMPORTS))
  assert not unexplained, f"function-local project imports without a reason in LOCAL_IMPORTS: {unexplained}"
  assert len(LOCAL_IMPORTS) <= 5
  stale = sorted(set(LOCAL_IMPORTS) - local)
  assert not stale, f"LOCAL_IMPORTS lists imports that no longer exist: {stale}"


def test_the_scanner_sees_cycles_local_imports_and_arrows(tmp_path):
  """The checks above can fail: a two-package tree with a hidden cycle and an upward arrow."""
  (tmp_path / "low").mkdir()
  (tmp_path / "high").mkdir()
  (tmp_path / "low" / "__init__.py").write_text("")
  (tmp_path / "high" / "__init__.py").write_text("")
  (tmp_path / "low" / "a.py").write_text("import maxtext\nfrom low import b\n")
  (tmp_path / "low" / "b.py").write_text("def f():\n  from low import a\n  from high import c\n")
  (tmp_path / "high" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n  from low import a\n")
  graph = ImportGraph.scan(tmp_path, ("low", "high"))
  assert graph.cycles() == [["low.a", "low.b"]]
  assert graph.package_arrows() == {("low", "high")}
  assert sorted(t for _, _, t in graph.local) == ["high.c", "low.a"]
  assert "maxtext" in graph.external["low.a"] and "high.c" in graph.reaches("low")


def test_module_names_are_unique_across_packages():
  """No two modules share a name in different packages, and no `x.py` sits beside an `x/` package."""
  graph = _graph()
  names: dict[str, list[str]] = {}
  for module, path in graph.files.items():
    if path.name not in ("__init__.py", "__main__.py"):
      names.setdefault(path.stem, []).append(module)
  assert not {n: ms for n, ms in names.items() if len(ms) > 1}
  packages = {m for m, p in graph.files.items() if p.name == "__init__.py"}
  assert not sorted(m for m in graph.files if m in packages and graph.files[m].name != "__init__.py")
  assert not sorted(p for p in packages if (REPO / (p.replace(".", "/") + ".py")).exists())
