"""The run directory `<base_output_directory>/<run_name>`: who wrote it, and the full resolved config.

MaxText resumes from whatever checkpoints sit under `<run dir>/checkpoints`, whichever config wrote
them: two configs sharing a run name would silently continue each other's runs (or fail with an
unrelated shape error). At start `lwm-train` writes `lwm_run.json` beside the checkpoints: the
config file, the stage and the model's dimensions (the fingerprint). A later start whose stage or
model differs from the fingerprint while checkpoints exist is refused with a message naming both
configs; checkpoints without a fingerprint (not written by `lwm-train`) are refused too.

`lwm_config.json` beside it holds the fully resolved config (every key, the content of MaxText's
`Config param` lines, which `lwm-train` turns off on the terminal).

Paths may be local or `gs://...` (etils `epath`, as Orbax uses); a file is written under a
temporary name and renamed, with the process umask's permissions. No MaxText import.
"""

from __future__ import annotations

import json
import os
from typing import Any

from etils import epath

from lwm_plugin.config.files import ConfigError

FINGERPRINT_FILE = "lwm_run.json"
CONFIG_FILE = "lwm_config.json"
# The keys that fix the checkpoint's parameter shapes.
MODEL_KEYS = ("model_name", "decoder_block", "base_num_decoder_layers", "base_emb_dim", "base_num_query_heads",
              "base_num_kv_heads", "head_dim", "base_mlp_dim", "vocab_size")


def run_dir(config: Any) -> epath.Path:
  """`<base_output_directory>/<run_name>`, where MaxText writes the run's checkpoints and metrics."""
  return epath.Path(config.base_output_directory) / config.run_name


def fingerprint(config: Any, config_file: str) -> dict[str, Any]:
  """What identifies the run's checkpoints: stage and model dimensions (compared), config file (named)."""
  values = config.model_dump(mode="json", include=set(MODEL_KEYS))
  return {"config_file": config_file, "stage": config.lwm_stage, "model": {key: values[key] for key in MODEL_KEYS}}


def _describe(fp: dict[str, Any]) -> str:
  model = ", ".join(f"{k}={v}" for k, v in fp["model"].items())
  return f"{fp['config_file']} (stage {fp['stage']!r}; {model})"


def _checkpoints(directory: epath.Path) -> list[str]:
  checkpoints = directory / "checkpoints"
  return sorted(p.name for p in checkpoints.iterdir() if p.name.isdigit()) if checkpoints.is_dir() else []


def check_resume(config: Any, config_file: str) -> None:
  """Raises ConfigError if the run directory holds checkpoints of another config (or of an unknown one)."""
  directory = run_dir(config)
  steps = _checkpoints(directory)
  if not steps:
    return
  mine = fingerprint(config, config_file)
  record = directory / FINGERPRINT_FILE
  hint = f"choose another run_name (run_name=... on the command line) or base_output_directory, or remove {directory}"
  if not record.exists():
    raise ConfigError(f"{directory} holds checkpoints (steps {', '.join(steps)}) but no {FINGERPRINT_FILE}: they were "
                      f"not written by lwm-train, and resuming them with {config_file} is unchecked; {hint}")
  try:
    theirs = json.loads(record.read_text())
  except json.JSONDecodeError as e:
    raise ConfigError(f"{record}: not valid JSON ({e}); {hint}") from None
  if {k: theirs.get(k) for k in ("stage", "model")} != {k: mine[k] for k in ("stage", "model")}:
    raise ConfigError(f"run_name {config.run_name!r}: {directory} holds checkpoints (steps {', '.join(steps)}) of "
                      f"{_describe(theirs)}; this run is {_describe(mine)} and would resume them; {hint}")


def write_atomic(path: epath.Path, text: str) -> None:
  """`path` appears complete or not at all (a temporary sibling, then a rename)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
  tmp.write_text(text)
  tmp.replace(path)


def record_start(config: Any, config_file: str) -> epath.Path:
  """Writes `lwm_run.json` and `lwm_config.json` under the run directory; returns the latter's path."""
  directory = run_dir(config)
  write_atomic(directory / FINGERPRINT_FILE, json.dumps(fingerprint(config, config_file), indent=1) + "\n")
  resolved = directory / CONFIG_FILE
  write_atomic(resolved, json.dumps(config.model_dump(mode="json"), indent=1, sort_keys=True) + "\n")
  return resolved
