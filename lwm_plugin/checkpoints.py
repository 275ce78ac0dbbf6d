"""Checkpoint conversion for a config: the Python API behind `lwm-convert` (and the demo, `lwm-eval`, `lwm-generate`).

Each function resolves CONFIG.yml (a path or a shipped name, with `key=value` overrides) the way
`lwm-train` does, turns it into the plain `conversion.spec.ModelSpec` and vocabulary the
`conversion` library takes, and runs one conversion. Errors are `conversion.spec.ConversionError`
or `lwm_plugin.config.files.ConfigError`, naming the file, key or tensor; outputs are written
atomically (a failed or interrupted run leaves no output directory). Conversion runs on the host
CPU: callers set `JAX_PLATFORMS=cpu` before JAX is imported (the CLI does).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Sequence

from conversion import extend_vocab as extend_vocab_lib
from conversion import from_hf as from_hf_lib
from conversion import from_lwm as from_lwm_lib
from conversion import model_vocab
from conversion import to_hf as to_hf_lib
from conversion.orbax_params import quiet_failed_read_noise
from conversion.spec import ConversionError, ModelSpec
from lwm_plugin import integration
from lwm_plugin.config.files import ConfigError, resolve_config_file
from lwm_plugin.config.lwm_config import check_keys
from lwm_plugin.model_source import ModelSource, UsageError, imported_items

DEFAULT_SHARD_BYTES = 5 << 30

__all__ = ["extend_vocab", "from_hf", "from_lwm", "import_for_inference", "quiet_failed_read_noise", "resolve", "to_hf"]


def resolve(config_file: str, overrides: Sequence[str] = ()) -> Any:
  """The resolved config (our key checks first, then MaxText's resolution on the host CPU)."""
  integration.check_conversion()  # the MaxText pieces the converters use are the ones we know
  path = resolve_config_file(config_file)
  check_keys(path, overrides)
  return integration.resolve_config(["lwm-convert", path, "hardware=cpu", "skip_jax_distributed_system=true",
                                     *overrides])


def _weight_dtype(config: Any, dtype: str) -> str:
  return dtype or str(getattr(config.weight_dtype, "value", config.weight_dtype))


def to_hf(config_file: str, checkpoint: str, output: str, *, overrides: Sequence[str] = (), dtype: str = "bfloat16",
          tokenizer: bool = True, max_shard_bytes: int = DEFAULT_SHARD_BYTES, progress: bool = False) -> None:
  """MaxText Orbax params (`<run>/checkpoints/<step>/items`) -> a Hugging Face LlamaForCausalLM directory."""
  config = resolve(config_file, overrides)
  vocab = model_vocab.load(config) if tokenizer else None
  to_hf_lib.convert(ModelSpec.from_config(config), checkpoint, output, vocab=vocab, dtype=dtype,
                    max_shard_bytes=max_shard_bytes, progress=progress)


def from_hf(config_file: str, hf_dir: str, output: str, *, overrides: Sequence[str] = (), dtype: str = "",
            extend_vocab: bool = False, progress: bool = False) -> None:
  """A Hugging Face Llama directory -> a MaxText Orbax checkpoint (`output/0/items`)."""
  config = resolve(config_file, overrides)
  vocab = model_vocab.load(config) if extend_vocab else None
  from_hf_lib.convert(ModelSpec.from_config(config), hf_dir, output, vocab=vocab, extend_vocab=extend_vocab,
                      dtype=_weight_dtype(config, dtype), progress=progress)


def import_for_inference(config_file: str, source: ModelSource, import_dir: Path, *,
                         overrides: Sequence[str] = ()) -> Path:
  """The MaxText items directory of `--model`: itself, or its Hugging Face weights imported (float32) into
  `import_dir` (replaced if present; removed again if the import fails, with UsageError naming the model)."""
  if not source.is_hf:
    return source.path
  if import_dir.exists():
    shutil.rmtree(import_dir)
  try:
    from_hf(config_file, str(source.path), str(import_dir), overrides=overrides, dtype="float32")
  except (ConversionError, ConfigError) as e:
    shutil.rmtree(import_dir, ignore_errors=True)
    raise UsageError(f"--model {source.path}: importing the Hugging Face model failed: {e}") from e
  except BaseException:
    shutil.rmtree(import_dir, ignore_errors=True)
    raise
  return imported_items(import_dir)


def from_lwm(config_file: str, lwm_params: str, output: str, *, overrides: Sequence[str] = (), dtype: str = "",
             extend_vocab: bool = False, progress: bool = False) -> None:
  """A released LWM/EasyLM Jax params file -> a MaxText Orbax checkpoint (`output/0/items`)."""
  config = resolve(config_file, overrides)
  from_lwm_lib.convert(ModelSpec.from_config(config), lwm_params, output, vocab=model_vocab.load(config),
                       extend_vocab=extend_vocab, dtype=_weight_dtype(config, dtype), progress=progress)


def extend_vocab(config_file: str, checkpoint: str, output: str, *, overrides: Sequence[str] = (), dtype: str = "",
                 progress: bool = False) -> None:
  """A text model's MaxText params -> the same model with CONFIG.yml's multimodal vocabulary."""
  config = resolve(config_file, overrides)
  extend_vocab_lib.convert(ModelSpec.from_config(config), checkpoint, output, vocab=model_vocab.load(config),
                           dtype=dtype, progress=progress)
