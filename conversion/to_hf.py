"""MaxText Orbax checkpoint -> Hugging Face `LlamaForCausalLM` directory, streamed tensor by tensor.

Reads one MaxText leaf at a time (a scanned leaf holds every layer), turns each layer slice into its
Hugging Face tensor with the table's hook, casts it and appends it to the current safetensors
shard. Peak memory is one MaxText leaf plus one converted slice. Output (written into a temporary
directory, renamed into place at the end): `config.json`, `generation_config.json`, the
safetensors shards (+ index), and the tokenizer files from the vocabulary's export.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from conversion import atomic, names
from conversion import model_vocab as vocab_lib
from conversion.finite import cast, check_finite
from conversion.orbax_params import ParamsReader
from conversion.safetensors_io import DEFAULT_SHARD_BYTES, Entry, ShardedWriter, dtype_from_name
from conversion.spec import ModelSpec
from data_loaders.vocab import MultimodalVocab

log = logging.getLogger(__name__)


def _source_rules(spec: ModelSpec, reader: ParamsReader) -> list[names.Rule]:
  """The table for this checkpoint, with every leaf checked for presence, shape, and use."""
  shapes = reader.shapes()
  scanned = names.is_scanned(shapes)
  rules = names.table(spec, scanned)
  ledger = names.Ledger({"/".join(p): s for p, s in shapes.items()}, f"checkpoint {reader.step_dir}")
  ledger.check_all_present({"/".join(r.mt_path): r.leaf_shape for r in rules})
  return rules


def convert(spec: ModelSpec, checkpoint: str | os.PathLike, output: str | os.PathLike, *, vocab: MultimodalVocab | None,
            dtype: str = "bfloat16", max_shard_bytes: int = DEFAULT_SHARD_BYTES, progress: bool = True) -> Path:
  """Writes the Hugging Face model directory `output`; `vocab=None` writes no tokenizer files."""
  out_dtype = dtype_from_name(dtype)
  reader = ParamsReader(checkpoint)
  multimodal = vocab is not None and vocab_lib.is_multimodal(vocab, spec.V, "config")
  if vocab is not None:
    log.info("vocabulary: %s model (%d ids)", "multimodal" if multimodal else "text-only", spec.V)
  rules = _source_rules(spec, reader)
  plan = [Entry(name, rule.hf_shape, out_dtype) for rule in rules for name in rule.hf_names]
  with atomic.output_dir(output) as tmp:
    writer = ShardedWriter(tmp, plan, max_shard_bytes)
    try:
      with tqdm(total=len(plan), unit="tensor", desc="to-hf", disable=not progress) as bar:
        for rule in rules:
          x = reader.read(rule.mt_path)
          check_finite(x, "/".join(rule.mt_path), f"checkpoint {reader.step_dir}")
          for i, name in enumerate(rule.hf_names):
            y = cast(np.asarray(rule.hook.to_hf(rule.layer(x, i).astype(np.float32)), np.float32), out_dtype)
            check_finite(y, name, f"output {output}", after=f"the cast to {dtype}")
            writer.write(name, y)
            bar.update()
          del x
      writer.close()
    except BaseException:
      writer.abort()
      raise
    ids: dict[str, int | None] = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    if vocab is not None:
      vocab_lib.export_tokenizer(vocab, tmp, multimodal=multimodal, model_max_length=spec.max_positions)
      ids.update(bos_token_id=vocab.bos_id, eos_token_id=vocab.eos_id)
    config = spec.hf_config(dtype=dtype, **ids)
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    generation = {k: v for k, v in ids.items() if v is not None}
    (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
  log.info("wrote %s (%d tensors, %s)", output, len(plan), dtype)
  return Path(output)
