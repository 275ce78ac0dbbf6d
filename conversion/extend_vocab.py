"""MaxText checkpoint -> MaxText checkpoint with the vocabulary grown from text to multimodal.

The start of LWM's vision-language stages (paper Sec. 4.2): the final Text-1M checkpoint, whose
embedding and output head have the 32000 text rows, becomes a params-only checkpoint with the
40448 multimodal rows (`lwm_vision_1k.yml` loads it with `load_parameters_path=<output>/0/items`).

The new rows follow exactly `from-hf --extend-vocab`'s rule (`from_hf.py` explains it: each new
row is the mean text row plus noise at the text rows' spread, `hooks.grow_rows`, seeded by the
tensor's name), because the same code grows them: every vocabulary leaf goes through its Hugging
Face view (`hook.to_hf` of the text-size table), `hooks.grow_rows` and back (`hook.from_hf` of
the multimodal table). Every other leaf is copied unchanged, in its stored dtype (training
checkpoints are float32). One leaf is in memory at a time; the output is written into a temporary
directory and renamed into place at the end.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from conversion import atomic, hooks, names
from conversion.finite import cast, check_finite
from conversion.from_hf import VOCAB_TENSORS, check_extension
from conversion.orbax_params import ParamsReader, ParamsWriter
from conversion.safetensors_io import dtype_from_name
from conversion.spec import ConversionError, ModelSpec
from data_loaders.vocab import MultimodalVocab

log = logging.getLogger(__name__)


def _grow(src: names.Rule, dst: names.Rule, x: np.ndarray, dtype: np.dtype) -> np.ndarray:
  """A vocabulary leaf with `src.hf_shape[0]` rows -> `dst.hf_shape[0]` rows, new rows drawn by `hooks.grow_rows`."""
  layers = [dst.hook.from_hf(hooks.grow_rows(src.hook.to_hf(src.layer(x, i).astype(np.float32)), dst.hf_shape[0],
                                             hooks.row_seed(name))) for i, name in enumerate(src.hf_names)]
  return cast(dst.stack(layers), dtype)


def convert(spec: ModelSpec, checkpoint: str | os.PathLike, output: str | os.PathLike, *, vocab: MultimodalVocab,
            dtype: str = "", progress: bool = True) -> Path:
  """Writes `<output>/0/items`: `checkpoint`'s params with the text vocabulary grown to `spec.V` rows.

  `spec` describes the multimodal model (vocab_size = `vocab.size`); the checkpoint must hold the
  same model with `vocab.text_size` rows. `dtype` '' keeps each leaf's stored dtype.
  """
  reader = ParamsReader(checkpoint)
  where = f"checkpoint {reader.step_dir}"
  shapes = reader.shapes()
  scanned = names.is_scanned(shapes)
  check_extension(vocab, vocab.text_size, spec, True, where)  # the config must describe the multimodal model
  src_rules, dst_rules = names.table(spec.with_(V=vocab.text_size), scanned), names.table(spec, scanned)
  embed = next(r for r in dst_rules if r.hf_names == (VOCAB_TENSORS[0],))
  if shapes.get(embed.mt_path) == embed.leaf_shape:
    raise ConversionError(f"{where}: already has the multimodal vocabulary ({spec.V} ids); load it as it is")
  ledger = names.Ledger({"/".join(p): s for p, s in shapes.items()}, where)
  ledger.check_all_present({"/".join(r.mt_path): r.leaf_shape for r in src_rules})
  log.info("extending the vocabulary from %d to %d ids (new rows: the text rows' mean + noise at their spread)",
           vocab.text_size, spec.V)
  with atomic.output_dir(output) as tmp:
    writer = ParamsWriter(tmp / "0", scanned)
    for src, dst in tqdm(list(zip(src_rules, dst_rules, strict=True)), unit="leaf", desc="extend-vocab",
                         disable=not progress):
      key = "/".join(src.mt_path)
      ledger.take(key, src.leaf_shape)
      x = reader.read(src.mt_path)
      check_finite(x, key, where)
      out_dtype = dtype_from_name(dtype) if dtype else x.dtype
      y = _grow(src, dst, x, out_dtype) if src.hf_shape != dst.hf_shape else cast(x, out_dtype)
      check_finite(y, "/".join(dst.mt_path), f"output {output}", after=f"the cast to {out_dtype}")
      writer.add(dst.mt_path, y)
      del x, y
    ledger.finish()
    writer.finish()
  log.info("wrote %s (load with load_parameters_path=%s/0/items)", output, output)
  return Path(output)

