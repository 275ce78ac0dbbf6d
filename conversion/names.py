"""The MaxText <-> Hugging Face name table for the LLaMA-2 block, with a symmetric hook per tensor.

Names come from MaxText's own table (`checkpoint_conversion.utils.param_mapping`,
`LLAMA31_MAXTEXT_TO_HF_PARAM_MAPPING`): MaxText 0.2.5 has no llama2 entry, but its Llama-3.1 entry
describes the same decoder block (`decoder_block: llama2`) with the same Hugging Face names. Its
hooks do not fit: they are built for one direction at a time and include the interleaved-RoPE
permutation that MaxText's default (rotate-half) RoPE does not need, so the hooks are ours
(`conversion.hooks`). Its save helpers do not fit either: they need the whole model in memory
and write in place (see `orbax_params.py`, `safetensors_io.py`).

A `Rule` maps one MaxText leaf to its Hugging Face tensors: one, or L of them for a scanned
layer leaf, whose layer axis is `param_scan_axis` = 1.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping

import numpy as np
from maxtext.checkpoint_conversion.utils import param_mapping

from conversion import hooks
from conversion.spec import ConversionError, ModelSpec

Path = tuple[str, ...]
SCAN_AXIS = 1


@dataclasses.dataclass(frozen=True)
class Rule:
  """One MaxText leaf (path under `params/params`) and its Hugging Face tensor(s)."""

  mt_path: Path
  hf_names: tuple[str, ...]
  hook: hooks.Hook
  mt_shape: tuple[int, ...]   # per layer
  hf_shape: tuple[int, ...]
  scanned: bool

  @property
  def leaf_shape(self) -> tuple[int, ...]:
    """The stored MaxText shape (with the layer axis when scanned)."""
    if not self.scanned:
      return self.mt_shape
    return self.mt_shape[:SCAN_AXIS] + (len(self.hf_names),) + self.mt_shape[SCAN_AXIS:]

  def layer(self, x: np.ndarray, i: int) -> np.ndarray:
    return np.take(x, i, axis=SCAN_AXIS) if self.scanned else x

  def stack(self, layers: list[np.ndarray]) -> np.ndarray:
    return np.stack(layers, axis=SCAN_AXIS) if self.scanned else layers[0]


def _per_layer(spec: ModelSpec) -> dict[Path, tuple[tuple[int, ...], tuple[int, ...], hooks.Hook]]:
  """Per-layer MaxText shape, HF shape and hook, keyed by the path below `layers`."""
  E, H, K, D, M = spec.E, spec.H, spec.K, spec.D, spec.M
  return {
      ("self_attention", "query", "kernel"):
          ((E, H, D), (H * D, E), hooks.chain(hooks.ScaleQuery(D), hooks.Kernel((E, H, D)))),
      ("self_attention", "key", "kernel"): ((E, K, D), (K * D, E), hooks.Kernel((E, K, D))),
      ("self_attention", "value", "kernel"): ((E, K, D), (K * D, E), hooks.Kernel((E, K, D))),
      ("self_attention", "out", "kernel"): ((H, D, E), (E, H * D), hooks.Kernel((H, D, E), n_in=2)),
      ("mlp", "wi_0", "kernel"): ((E, M), (M, E), hooks.Kernel((E, M))),
      ("mlp", "wi_1", "kernel"): ((E, M), (M, E), hooks.Kernel((E, M))),
      ("mlp", "wo", "kernel"): ((M, E), (E, M), hooks.Kernel((M, E))),
      ("pre_self_attention_layer_norm", "scale"): ((E,), (E,), hooks.Identity()),
      ("post_self_attention_layer_norm", "scale"): ((E,), (E,), hooks.Identity()),
  }


def table(spec: ModelSpec, scanned: bool) -> list[Rule]:
  """Every MaxText leaf of the model with its Hugging Face names, shapes and hook."""
  names = param_mapping.LLAMA31_MAXTEXT_TO_HF_PARAM_MAPPING({"num_hidden_layers": spec.L}, None, scan_layers=scanned)
  per_layer = _per_layer(spec)
  top = {
      ("token_embedder", "embedding"): ((spec.V, spec.E), (spec.V, spec.E), hooks.Identity()),
      ("decoder", "decoder_norm", "scale"): ((spec.E,), (spec.E,), hooks.Identity()),
      ("decoder", "logits_dense", "kernel"): ((spec.E, spec.V), (spec.V, spec.E), hooks.Kernel((spec.E, spec.V))),
  }
  rules = []
  for key, hf in names.items():
    path = tuple(key.split("-"))
    if path[0] != "params":
      raise ConversionError(f"unexpected MaxText name {key!r} in MaxText's Llama table")
    path = path[1:]
    if path == ("decoder", "logits_dense", "kernel") and spec.tie_embeddings:
      continue  # logits_via_embedding: no separate head
    if path in top:
      mt_shape, hf_shape, hook = top[path]
    else:
      # ("decoder", "layers", ...) when scanned, ("decoder", "layers_<i>", ...) otherwise.
      mt_shape, hf_shape, hook = per_layer[path[2:]]
    hf_names = tuple(hf) if isinstance(hf, list) else (hf,)
    rules.append(Rule(path, hf_names, hook, mt_shape, hf_shape, scanned=isinstance(hf, list)))
  return rules


def hf_shapes(rules: Iterable[Rule]) -> dict[str, tuple[int, ...]]:
  return {name: rule.hf_shape for rule in rules for name in rule.hf_names}


def is_scanned(mt_paths: Iterable[Path]) -> bool:
  """Whether a checkpoint's params use the scanned layout (`decoder/layers/...`)."""
  paths = list(mt_paths)
  if any(p[:2] == ("decoder", "layers") for p in paths):
    return True
  if any(len(p) > 1 and p[1].startswith("layers_") for p in paths):
    return False
  raise ConversionError("the checkpoint has no decoder layers under params/params/decoder")


class Ledger:
  """Asserts that every source tensor is consumed exactly once and nothing else is asked for."""

  def __init__(self, shapes: Mapping[str, tuple[int, ...]], where: str):
    self._shapes = dict(shapes)
    self._used: set[str] = set()
    self._where = where

  def take(self, name: str, want_shape: tuple[int, ...]) -> None:
    if name not in self._shapes:
      raise ConversionError(f"{self._where}: missing tensor {name!r}")
    if name in self._used:
      raise ConversionError(f"{self._where}: tensor {name!r} consumed twice (a converter table bug)")
    have = tuple(self._shapes[name])
    if have != tuple(want_shape):
      raise ConversionError(f"{self._where}: tensor {name!r} has shape {have}, expected {tuple(want_shape)}")
    self._used.add(name)

  def check_all_present(self, wanted: Mapping[str, tuple[int, ...]]) -> None:
    """Up-front check (before any output is written): missing tensors and shape mismatches."""
    missing = sorted(set(wanted) - set(self._shapes))
    if missing:
      more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
      raise ConversionError(f"{self._where}: missing tensor(s) {missing[:5]}{more}")
    for name, shape in wanted.items():
      if tuple(self._shapes[name]) != tuple(shape):
        raise ConversionError(f"{self._where}: tensor {name!r} has shape {tuple(self._shapes[name])}, "
                              f"expected {tuple(shape)}")
    self.check_no_extra(wanted)

  def check_no_extra(self, wanted: Iterable[str]) -> None:
    extra = sorted(set(self._shapes) - set(wanted))
    if extra:
      more = f" and {len(extra) - 5} more" if len(extra) > 5 else ""
      raise ConversionError(f"{self._where}: unexpected tensor(s) {extra[:5]}{more} (not part of a Llama model "
                            "with this config)")

  def finish(self) -> None:
    unused = sorted(set(self._shapes) - self._used)
    if unused:
      raise ConversionError(f"{self._where}: tensor(s) never consumed: {unused[:5]}")
