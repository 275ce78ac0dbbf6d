"""Released LWM / EasyLM Jax checkpoints -> MaxText Orbax checkpoint with the merged vocabulary.

LWM's parameter tree (`lwm/llama.py`, `lwm/vision_llama.py`; layers scanned on axis 0, or
`h/<i>/...` unscanned):

  transformer/wte/embedding [T, E]           transformer/vte/embedding [8448, E]   (vision models)
  transformer/h/scan_decoder/attention/{wq,wk,wv,wo}/kernel [L, in, out]
  transformer/h/scan_decoder/feed_forward/{w1 gate, w3 up, w2 down}/kernel [L, in, out]
  transformer/h/scan_decoder/{attention_norm,ffn_norm}/kernel [L, E]
  transformer/ln_f/kernel [E]   lm_head/kernel [E, T]   vision_head/kernel [E, 8448]  (vision models)

This module is a name table from those names to Hugging Face names with symmetric hooks (kernels
transposed; q/k rows permuted from Meta's interleaved RoPE pairs to rotate-half, the layout of
Hugging Face and of MaxText's default RoPE), presented as an `HfSource`, so `from_hf.write_maxtext`
does the rest (query pre-scaling by 1/sqrt(D), MaxText layout). The text and vision tables become
one table: text ids first, vision id v at `text_size + v` (the vocabulary's layout), with any
padding rows up to the vocabulary size set to the mean row. LWM trains with a separate softmax per
modality; the merged model has one softmax over both (the LWM loss masking is a training matter).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from conversion import hooks
from conversion.finite import check_finite
from conversion.from_hf import check_extension, write_maxtext
from conversion.lwm_checkpoint import Key, LwmFile
from conversion.spec import ConversionError, ModelSpec
from conversion.model_vocab import check_lwm_tables
from data_loaders.vocab import MultimodalVocab

log = logging.getLogger(__name__)

SCANNED = ("transformer", "h", "scan_decoder")
EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"
TEXT_EMBED, VISION_EMBED = ("transformer", "wte", "embedding"), ("transformer", "vte", "embedding")
TEXT_HEAD, VISION_HEAD = ("lm_head", "kernel"), ("vision_head", "kernel")

# Below a layer: LWM name -> (Hugging Face name below `model.layers.<i>.`, kind).
_LAYER = {
    ("attention", "wq", "kernel"): ("self_attn.q_proj.weight", "q"),
    ("attention", "wk", "kernel"): ("self_attn.k_proj.weight", "k"),
    ("attention", "wv", "kernel"): ("self_attn.v_proj.weight", "kernel"),
    ("attention", "wo", "kernel"): ("self_attn.o_proj.weight", "kernel"),
    ("feed_forward", "w1", "kernel"): ("mlp.gate_proj.weight", "kernel"),
    ("feed_forward", "w3", "kernel"): ("mlp.up_proj.weight", "kernel"),
    ("feed_forward", "w2", "kernel"): ("mlp.down_proj.weight", "kernel"),
    ("attention_norm", "kernel"): ("input_layernorm.weight", "norm"),
    ("ffn_norm", "kernel"): ("post_attention_layernorm.weight", "norm"),
}


def _layer_hook(kind: str, spec: ModelSpec) -> hooks.Hook:
  return {
      "q": hooks.chain(hooks.Transpose(), hooks.InterleavedRope(spec.H)),
      "k": hooks.chain(hooks.Transpose(), hooks.InterleavedRope(spec.K)),
      "kernel": hooks.Transpose(),
      "norm": hooks.Identity(),
  }[kind]


def _layer_shape(sub: Key, spec: ModelSpec) -> tuple[int, ...]:
  """LWM per-layer shape ([in, out] kernels)."""
  E, M = spec.E, spec.M
  return {
      ("attention", "wq", "kernel"): (E, spec.H * spec.D), ("attention", "wk", "kernel"): (E, spec.K * spec.D),
      ("attention", "wv", "kernel"): (E, spec.K * spec.D), ("attention", "wo", "kernel"): (spec.H * spec.D, E),
      ("feed_forward", "w1", "kernel"): (E, M), ("feed_forward", "w3", "kernel"): (E, M),
      ("feed_forward", "w2", "kernel"): (M, E), ("attention_norm", "kernel"): (E,), ("ffn_norm", "kernel"): (E,),
  }[sub]


class LwmSource:
  """An LWM params file seen as Hugging Face tensors (`from_hf.HfSource`)."""

  def __init__(self, lwm: LwmFile, spec: ModelSpec, vocab: MultimodalVocab | None, extend_vocab: bool):
    self._lwm, self._spec = lwm, spec
    self._where = str(lwm.path)
    # HF name -> (LWM key, layer index or None, hook)
    self._map: dict[str, tuple[Key, int | None, hooks.Hook]] = {}
    self._shapes: dict[str, tuple[int, ...]] = {}
    self._cache: tuple[Key, np.ndarray] | None = None
    keys = set(lwm.keys())
    self.vision = VISION_EMBED in keys or VISION_HEAD in keys
    self._add_layers(keys)
    self._add_top(keys)
    self._add_vocab(keys, vocab, extend_vocab)
    unknown = sorted("/".join(k) for k in keys - self._used_keys())
    if unknown:
      raise ConversionError(f"{self._where}: unexpected tensor(s) {unknown[:5]} (not part of an LWM Llama model)")

  def _used_keys(self) -> set[Key]:
    used = {key for key, _, _ in self._map.values()}
    return used | ({VISION_EMBED, VISION_HEAD} if self.vision else set())

  def _check_shape(self, key: Key, want: tuple[int, ...]) -> None:
    have = self._lwm.shape(key)
    if have != want:
      raise ConversionError(f"{self._where}: tensor {'/'.join(key)} has shape {have}, expected {want} for this config")

  def _add_layers(self, keys: set[Key]) -> None:
    spec = self._spec
    scanned = any(k[:3] == SCANNED for k in keys)
    for sub, (hf_suffix, kind) in _LAYER.items():
      if scanned:
        key = SCANNED + sub
        self._require(key, keys)
        self._check_shape(key, (spec.L,) + _layer_shape(sub, spec))
      for i in range(spec.L):
        key = SCANNED + sub if scanned else ("transformer", "h", str(i)) + sub
        if not scanned:
          self._require(key, keys)
          self._check_shape(key, _layer_shape(sub, spec))
        hf_shape = tuple(reversed(_layer_shape(sub, spec)))
        self._put(f"model.layers.{i}.{hf_suffix}", key, i if scanned else None, _layer_hook(kind, spec), hf_shape)

  def _add_top(self, keys: set[Key]) -> None:
    key = ("transformer", "ln_f", "kernel")
    self._require(key, keys)
    self._check_shape(key, (self._spec.E,))
    self._put("model.norm.weight", key, None, hooks.Identity(), (self._spec.E,))

  def _add_vocab(self, keys: set[Key], vocab: MultimodalVocab | None, extend_vocab: bool) -> None:
    spec = self._spec
    if spec.tie_embeddings:
      raise ConversionError("LWM models have a separate output head; the config has logits_via_embedding=true")
    for key in (TEXT_EMBED, TEXT_HEAD) + ((VISION_EMBED, VISION_HEAD) if self.vision else ()):
      self._require(key, keys)
    text_rows = self._lwm.shape(TEXT_EMBED)[0]
    vision_rows = self._lwm.shape(VISION_EMBED)[0] if self.vision else 0
    if self.vision:
      if vocab is None:
        raise ConversionError("a vision LWM checkpoint needs the multimodal vocabulary")
      check_lwm_tables(vocab, text_rows, vision_rows, self._where)
      if spec.V != vocab.size:
        raise ConversionError(f"{self._where}: vocabulary size mismatch: a vision model needs the multimodal "
                              f"vocabulary ({vocab.size} ids), the config has vocab_size={spec.V}")
      self.rows = spec.V
    else:
      check_extension(vocab, text_rows, spec, extend_vocab, self._where)
      self.rows = text_rows
    self._check_shape(TEXT_EMBED, (text_rows, spec.E))
    self._check_shape(TEXT_HEAD, (spec.E, text_rows))
    if self.vision:
      self._check_shape(VISION_EMBED, (vision_rows, spec.E))
      self._check_shape(VISION_HEAD, (spec.E, vision_rows))
    self._put(EMBED, TEXT_EMBED, None, hooks.Identity(), (self.rows, spec.E))
    self._put(HEAD, TEXT_HEAD, None, hooks.Transpose(), (self.rows, spec.E))

  def _require(self, key: Key, keys: set[Key]) -> None:
    if key not in keys:
      raise ConversionError(f"{self._where}: missing tensor {'/'.join(key)}")

  def _put(self, name: str, key: Key, layer: int | None, hook: hooks.Hook, hf_shape: tuple[int, ...]) -> None:
    self._map[name] = (key, layer, hook)
    self._shapes[name] = hf_shape

  def shapes(self) -> dict[str, tuple[int, ...]]:
    return dict(self._shapes)

  def _read(self, key: Key) -> np.ndarray:
    """One LWM tensor, cached: the layers of a scanned tensor are asked for one after another."""
    if self._cache is None or self._cache[0] != key:
      self._cache = None   # free the previous tensor before reading the next
      x = np.asarray(self._lwm.read(key), np.float32)
      check_finite(x, "/".join(key), self._where)
      self._cache = (key, x)
    return self._cache[1]

  def get(self, name: str) -> np.ndarray:
    key, layer, hook = self._map[name]
    if name in (EMBED, HEAD) and self.vision:
      vision_key = VISION_EMBED if name == EMBED else VISION_HEAD
      parts = [hook.to_hf(self._read(k)) for k in (key, vision_key)]
      return hooks.concat_rows(parts, self.rows)
    x = self._read(key)
    return hook.to_hf(x[layer] if layer is not None else x)


def convert(spec: ModelSpec, lwm_file: str | os.PathLike, output: str | os.PathLike, *, vocab: MultimodalVocab | None,
            extend_vocab: bool = False, dtype: str = "float32", progress: bool = True) -> Path:
  """LWM params file -> MaxText checkpoint at `output` (`<output>/0/items`)."""
  source = LwmSource(LwmFile(lwm_file), spec, vocab, extend_vocab)
  log.info("LWM checkpoint: %s model, %d vocabulary rows", "vision" if source.vision else "text", source.rows)
  return write_maxtext(spec, source, source.rows, output, dtype=dtype, where=str(lwm_file), progress=progress)
