"""Hugging Face Llama (LLaMA-2, LWM-Text, our own exports) -> MaxText Orbax checkpoint.

Reads safetensors, or PyTorch `pytorch_model*.bin` files without torch (`torch_bin.py`; the
LWM-Text models on the Hub ship only those).

The output is step 0 of a params-only checkpoint: train from it with
`load_parameters_path=<output>/0/items`. Each MaxText leaf is assembled from its Hugging Face
tensors (all layers of a scanned leaf) and written on its own, so peak memory is one MaxText
leaf plus one source tensor.

`--extend-vocab` grows a text model to the multimodal vocabulary (the stage-2 start): the
embedding and output-head rows of the new ids (vision codes, `<eof>`, `<eov>`, reserved and
padding rows) start as the mean of the existing text rows plus Gaussian noise with the text rows'
per-dimension spread (`hooks.grow_rows`, seeded by the tensor's name: reproducible). The mean keeps
new rows inside the distribution the network has seen and starts the new ids near the average text
logit (Hewitt, "Initializing New Word Embeddings for Pretrained Language Models", 2021, and
transformers' `mean_resizing`, whose noise is 1e-9 of the covariance); why the noise is at full
scale, measured: `hooks.grow_rows`.

`write_maxtext` is the shared back half of `from-hf` and `from-lwm`: any source that presents
tensors under Hugging Face names and layouts can be written as a MaxText checkpoint.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from conversion import atomic, hooks, names, safetensors_io, torch_bin
from conversion.finite import cast, check_finite
from conversion.orbax_params import ParamsWriter
from conversion.safetensors_io import dtype_from_name
from conversion.spec import ConversionError, ModelSpec, check_hf_config, read_hf_config
from conversion.model_vocab import describe
from data_loaders.vocab import MultimodalVocab

log = logging.getLogger(__name__)
VOCAB_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")


class HfSource(Protocol):
  """Tensors under Hugging Face names and layouts."""

  def shapes(self) -> dict[str, tuple[int, ...]]:
    ...

  def get(self, name: str) -> np.ndarray:
    ...


def open_weights(hf_dir: Path) -> HfSource:
  """The weights of a Hugging Face directory: safetensors, else PyTorch `.bin` files (read without torch)."""
  if (hf_dir / safetensors_io.INDEX_FILE).is_file() or (hf_dir / safetensors_io.SINGLE_FILE).is_file():
    return safetensors_io.ShardedReader(hf_dir)
  if (hf_dir / torch_bin.INDEX_FILE).is_file() or (hf_dir / torch_bin.SINGLE_FILE).is_file():
    return torch_bin.TorchBinReader(hf_dir)
  raise ConversionError(f"{hf_dir}: no weights ({safetensors_io.SINGLE_FILE}, {safetensors_io.INDEX_FILE}, "
                        f"{torch_bin.SINGLE_FILE} or {torch_bin.INDEX_FILE})")


class _WithoutTiedHead:
  """A tied model whose files still hold `lm_head.weight` (older PyTorch state dicts keep the alias).

  The copy is checked to equal the embedding, then left out, so the ledger sees each tensor once.
  """

  def __init__(self, source: HfSource, where: str):
    head, embed = source.get(VOCAB_TENSORS[1]), source.get(VOCAB_TENSORS[0])
    if head.shape != embed.shape or not np.array_equal(head, embed):
      raise ConversionError(f"{where}: tie_word_embeddings is true but lm_head.weight differs from "
                            "model.embed_tokens.weight")
    self._source = source

  def shapes(self) -> dict[str, tuple[int, ...]]:
    return {k: v for k, v in self._source.shapes().items() if k != VOCAB_TENSORS[1]}

  def get(self, name: str) -> np.ndarray:
    return self._source.get(name)


def check_extension(vocab: MultimodalVocab | None, source_rows: int, spec: ModelSpec, extend: bool, where: str) -> None:
  """Vocabulary size rules: equal sizes, or --extend-vocab from the text to the multimodal vocabulary."""
  if not extend:
    if source_rows != spec.V:
      raise ConversionError(f"{where}: vocabulary size mismatch: the source has {source_rows} ids, the config "
                            f"vocab_size={spec.V} (use --extend-vocab to grow a text model to the multimodal vocabulary)")
    return
  if vocab is None:
    raise ConversionError("--extend-vocab needs the multimodal vocabulary")
  if source_rows != vocab.text_size or spec.V != vocab.size:
    raise ConversionError(f"{where}: --extend-vocab grows a text model ({vocab.text_size} ids) to the multimodal "
                          f"vocabulary ({vocab.size} ids); the source has {source_rows} ids and the config "
                          f"vocab_size={spec.V} ({describe(vocab)})")


def write_maxtext(spec: ModelSpec, source: HfSource, source_rows: int, output: str | os.PathLike, *, dtype: str,
                  where: str, progress: bool = True) -> Path:
  """Writes `<output>/0/items` from `source`; vocabulary tables with `source_rows` rows are grown to V."""
  out_dtype = dtype_from_name(dtype)
  src_rules = names.table(spec.with_(V=source_rows), spec.scan_layers)
  dst_rules = names.table(spec, spec.scan_layers)
  ledger = names.Ledger(source.shapes(), where)
  ledger.check_all_present(names.hf_shapes(src_rules))
  total = sum(len(r.hf_names) for r in src_rules)
  with atomic.output_dir(output) as tmp:
    writer = ParamsWriter(tmp / "0", spec.scan_layers)
    with tqdm(total=total, unit="tensor", desc="to-maxtext", disable=not progress) as bar:
      for src, dst in zip(src_rules, dst_rules, strict=True):
        leaf = np.empty(dst.leaf_shape, out_dtype)
        layers = np.moveaxis(leaf, names.SCAN_AXIS, 0) if dst.scanned else leaf[None]
        for i, name in enumerate(src.hf_names):
          ledger.take(name, src.hf_shape)
          x = np.asarray(source.get(name), np.float32)
          check_finite(x, name, where)
          if x.shape != dst.hf_shape:   # a vocabulary table being grown (checked by check_extension)
            x = hooks.grow_rows(x, dst.hf_shape[0], hooks.row_seed(name))
          layers[i] = cast(dst.hook.from_hf(x), out_dtype)
          bar.update()
        check_finite(leaf, "/".join(dst.mt_path), f"output {output}", after=f"the cast to {out_dtype}")
        writer.add(dst.mt_path, leaf)
        del leaf, layers
    ledger.finish()
    writer.finish()
  log.info("wrote %s (load with load_parameters_path=%s/0/items)", output, output)
  return Path(output)


def convert(spec: ModelSpec, hf_dir: str | os.PathLike, output: str | os.PathLike, *, vocab: MultimodalVocab | None,
            extend_vocab: bool = False, dtype: str = "float32", progress: bool = True) -> Path:
  """Hugging Face directory -> MaxText checkpoint at `output` (`<output>/0/items`)."""
  hf_dir = Path(hf_dir)
  source_rows = check_hf_config(read_hf_config(hf_dir), spec, str(hf_dir / "config.json"))
  check_extension(vocab, source_rows, spec, extend_vocab, str(hf_dir))
  if extend_vocab:
    log.info("extending the vocabulary from %d to %d ids (new rows: the text rows' mean + noise at their spread)",
             source_rows, spec.V)
  source = open_weights(hf_dir)
  if spec.tie_embeddings and VOCAB_TENSORS[1] in source.shapes():
    source = _WithoutTiedHead(source, str(hf_dir))
  return write_maxtext(spec, source, source_rows, output, dtype=dtype, where=str(hf_dir), progress=progress)
