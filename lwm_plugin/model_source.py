"""Where an inference command's weights are: a MaxText items directory or a Hugging Face export.

`lwm-eval` and `lwm-generate` take `--model PATH`, either a MaxText checkpoint
(`<run>/checkpoints/<step>/items`, or the step directory holding `items/`) or a Hugging Face
directory written by `lwm-convert to-hf` (a `config.json` and weights). `locate_model` tells which
and checks it before any work; it reads only small files and imports nothing heavy, so a command line
can call it before MaxText is imported. A Hugging Face directory is imported back into a MaxText
checkpoint by `lwm_plugin.checkpoints.import_for_inference`, so both kinds run the same forward.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path


class UsageError(ValueError):
  """A request refused before any work, with nothing written (CLIs: `prog: error: ...`, rc 2)."""


HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


@dataclasses.dataclass(frozen=True)
class ModelSource:
  """A checked `--model` (an absolute path): a Hugging Face directory to import (`is_hf`), or a MaxText items
  directory."""
  path: Path
  is_hf: bool


def locate_model(model: str) -> ModelSource:
  """Checks `--model` and says what it is; UsageError naming the path if it is neither kind."""
  path = Path(model)
  if (path / "config.json").is_file():
    try:
      config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
      raise UsageError(f"--model {model}: config.json is not readable JSON ({e})") from e
    if not isinstance(config, dict) or not any((path / name).is_file() for name in HF_WEIGHTS):
      raise UsageError(f"--model {model}: a Hugging Face directory needs a config.json object and weights "
                       f"({' or '.join(HF_WEIGHTS)})")
    return ModelSource(path.resolve(), True)
  if path.name != "items" and (path / "items").is_dir():
    path = path / "items"
  if not path.is_dir():
    raise UsageError(f"--model {model}: neither a MaxText checkpoint items directory nor a Hugging Face directory "
                     "(no config.json)")
  return ModelSource(path.resolve(), False)


def imported_items(import_dir: Path) -> Path:
  """The MaxText items directory (absolute, as MaxText's loader requires) a Hugging Face model is imported
  into under `import_dir`."""
  return import_dir.resolve() / "0" / "items"
