"""Reading our YAML config files without MaxText: lookup, the `base_config` chain, early peeks.

MaxText is slow to import and fixes JAX's platform at import time, so the launcher must read a
few keys (such as `hardware`) before importing it. The chain is followed exactly as MaxText's
`pyconfig` does: a relative `base_config` is looked up next to the file, then in MaxText's
installed configs directory.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Iterable

import yaml

import maxtext_configs


class ConfigError(ValueError):
  """A config file or override is wrong; the message names the file, line or argument."""


def maxtext_configs_dir() -> str:
  """MaxText's installed configs directory, found without importing MaxText."""
  if "MAXTEXT_CONFIGS_DIR" in os.environ:
    return os.environ["MAXTEXT_CONFIGS_DIR"]
  spec = importlib.util.find_spec("maxtext")
  if spec is None or not spec.submodule_search_locations:
    raise ConfigError("the maxtext package is not installed (run `make setup`)")
  return os.path.join(list(spec.submodule_search_locations)[0], "configs")


def resolve_config_file(name: str) -> str:
  """Finds a config: an existing path, else a shipped file under `maxtext_configs/`."""
  if not name.endswith(".yml"):
    raise ConfigError(f"config file {name!r} must end in '.yml' (MaxText only reads '.yml' config files)")
  if os.path.isfile(name):
    return os.path.abspath(name)
  for candidate in (maxtext_configs.CONFIG_DIR / name, maxtext_configs.CONFIG_DIR / Path(name).name):
    if candidate.is_file():
      return str(candidate)
  raise ConfigError(f"config file {name!r} not found (looked relative to {os.getcwd()} and in {maxtext_configs.CONFIG_DIR})")


def _parent_config(config_file: str, base: str) -> str:
  """Where MaxText looks for `base_config: base`: next to the file, then in its own configs dir."""
  if os.path.isabs(base):
    return base
  beside = os.path.join(os.path.dirname(config_file), base)
  return beside if os.path.isfile(beside) else os.path.join(maxtext_configs_dir(), base)


def _load(path: str, parse):
  """`parse(file)` on the YAML file at `path`; a syntax error or unreadable file becomes a ConfigError
  naming the file and line (a CLI answers `prog: error: ...`, rc 2, not a traceback)."""
  try:
    with open(path, encoding="utf-8") as f:
      return parse(f)
  except yaml.YAMLError as e:
    mark = getattr(e, "context_mark", None) or getattr(e, "problem_mark", None)  # where the bad construct starts
    where = f"{path}:{mark.line + 1}" if mark is not None else path
    context = getattr(e, "context", None)
    problem = getattr(e, "problem", None) or str(e)
    raise ConfigError(f"{where}: not valid YAML: {context + ', ' if context else ''}{problem}") from e
  except (OSError, UnicodeDecodeError) as e:
    raise ConfigError(f"{path}: cannot read the config file: {e}") from e


def config_chain(config_file: str) -> list[tuple[str, dict[str, int]]]:
  """The `base_config` chain from `config_file` upwards: (path, {top-level key: line number})."""
  chain = []
  path: str | None = config_file
  while path is not None:
    if any(p == path for p, _ in chain):
      raise ConfigError(f"{path}: base_config chain loops back to this file")
    if not os.path.isfile(path):
      raise ConfigError(f"{chain[-1][0] if chain else path}: base_config file {path!r} not found")
    node = _load(path, yaml.compose)
    keys: dict[str, int] = {}
    base = None
    if node is not None:
      if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{path}: a config file must be a mapping of key: value")
      for key_node, value_node in node.value:
        keys[key_node.value] = key_node.start_mark.line + 1
        if key_node.value == "base_config":
          base = value_node.value
    chain.append((path, keys))
    path = _parent_config(path, base) if base else None
  return chain


def peek(config_file: str, overrides: Iterable[str], key: str) -> Any:
  """A scalar key's value before full resolution (env M_KEY, then key=value, then the YAML chain).

  Used for settings needed before MaxText is imported, such as `hardware` (JAX_PLATFORMS).
  """
  if f"M_{key.upper()}" in os.environ:
    return os.environ[f"M_{key.upper()}"]
  for arg in reversed(list(overrides)):
    k, sep, v = arg.partition("=")
    if sep and k == key:
      try:
        return yaml.safe_load(v)
      except yaml.YAMLError as e:
        raise ConfigError(f"command-line argument {arg!r}: not valid YAML: {getattr(e, 'problem', e)}") from e
  for path, keys in config_chain(config_file):
    if key in keys:
      return (_load(path, yaml.safe_load) or {}).get(key)
  return None


DATA_DIR_REFERENCE = "${lwm_data_dir}"


def uses_data_dir(config_file: str, overrides: Iterable[str]) -> bool:
  """Whether the training sources (`lwm_data_sources`, unresolved) name files under `${lwm_data_dir}`.

  The shipped stage YAMLs do; training one of them without `lwm_data_dir` is an error, not a
  silent read of `/books3-.../*.jsonl`.
  """
  sources = peek(config_file, overrides, "lwm_data_sources") or []
  files = [f for s in sources if isinstance(s, dict) for f in ([s.get("files")] if isinstance(s.get("files"), str)
                                                                 else list(s.get("files") or []))]
  return any(DATA_DIR_REFERENCE in str(f) for f in files)


def topology_overrides(config_file: str, overrides: Iterable[str]) -> list[str]:
  """compile_topology=<lwm_topology> for an AOT check, unless the command line sets one (`lwm-train
  --check`, `lwm-generate --check`)."""
  if any(a.partition("=")[0] == "compile_topology" for a in overrides):
    return []
  topology = peek(config_file, overrides, "lwm_topology")
  return [f"compile_topology={topology}", "compile_topology_num_slices=1"] if topology else []


def check_topology(config_file: str, overrides: Iterable[str]) -> list[str]:
  """`topology_overrides`, which an AOT check needs: ConfigError when neither the config nor the command
  line names a TPU topology."""
  extra = topology_overrides(config_file, overrides)
  if not any(a.startswith("compile_topology=") for a in [*overrides, *extra]):
    raise ConfigError(f"{config_file}: --check needs a TPU topology: set lwm_topology in the config or pass "
                      "compile_topology=v4-512 (for example)")
  return extra
