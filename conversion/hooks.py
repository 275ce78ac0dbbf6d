"""Symmetric per-tensor hooks: each one converts a tensor into the Hugging Face layout and back.

Every converter in this package is a name table plus these hooks (see `names.py`, `lwm_format.py`).
A hook has `to_hf(x)` and `from_hf(x)`, exact inverses of each other on every input (the tests
check `from_hf(to_hf(x)) == x` bit for bit), so one table serves both directions and a round trip
cannot drift. Hooks work on numpy arrays of one layer (the layer axis of a scanned tensor is
handled by the caller) and compute in float32 or wider; the caller casts to the output dtype.

Layouts:
  * MaxText kernels are `[in..., out...]` (e.g. query `[E, H, D]`, out `[H, D, E]`); a torch Linear
    weight is `[out, in]` with flattened axes (q_proj `[H*D, E]`, o_proj `[E, H*D]`).
  * MaxText keeps the query kernel pre-scaled by 1/sqrt(D) (its attention does not scale q);
    Hugging Face scales in the attention op.
  * Meta/EasyLM/LWM apply RoPE to interleaved pairs (2i, 2i+1); Hugging Face and MaxText's default
    RoPE rotate halves (i, i + D/2). Converting the q/k projections needs a row permutation per head.
  * LWM (EasyLM) kernels are `[in, out]`.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from typing import Protocol, Sequence

import numpy as np


class Hook(Protocol):
  """A symmetric tensor transform between a source layout and the Hugging Face layout."""

  def to_hf(self, x: np.ndarray) -> np.ndarray:
    ...

  def from_hf(self, x: np.ndarray) -> np.ndarray:
    ...


@dataclasses.dataclass(frozen=True)
class Identity:
  """Norm scales and embeddings: same layout on both sides."""

  def to_hf(self, x: np.ndarray) -> np.ndarray:
    return x

  def from_hf(self, x: np.ndarray) -> np.ndarray:
    return x


@dataclasses.dataclass(frozen=True)
class Kernel:
  """A MaxText kernel `[in..., out...]` <-> a torch Linear weight `[prod(out), prod(in)]`.

  `shape` is the MaxText (per-layer) shape and `n_in` how many leading axes are inputs.
  """

  shape: tuple[int, ...]
  n_in: int = 1

  def _split(self) -> tuple[int, int]:
    return math.prod(self.shape[:self.n_in]), math.prod(self.shape[self.n_in:])

  def to_hf(self, x: np.ndarray) -> np.ndarray:
    n_in, n_out = self._split()
    return x.reshape(n_in, n_out).T

  def from_hf(self, x: np.ndarray) -> np.ndarray:
    return x.T.reshape(self.shape)


@dataclasses.dataclass(frozen=True)
class Transpose:
  """A 2-D `[in, out]` kernel (LWM/EasyLM, flax Dense) <-> a torch Linear weight `[out, in]`."""

  def to_hf(self, x: np.ndarray) -> np.ndarray:
    return x.T

  def from_hf(self, x: np.ndarray) -> np.ndarray:
    return x.T


@dataclasses.dataclass(frozen=True)
class ScaleQuery:
  """MaxText's query kernel is the Hugging Face one divided by sqrt(head_dim).

  Computed in float64 and rounded once. When sqrt(D) is a power of two (D = 16, 64, 256) the
  scaling is exact, so float32 -> float32 round trips are bit-exact; for D = 128 (LLaMA-2 7B)
  a bfloat16/float16 source still round-trips exactly through a float32 MaxText checkpoint
  (the float32 error is far below half a bfloat16 ulp), a float32 source to within 1 ulp.
  """

  head_dim: int

  def to_hf(self, x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float64) * math.sqrt(self.head_dim)).astype(np.float32)

  def from_hf(self, x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float64) / math.sqrt(self.head_dim)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class InterleavedRope:
  """Rows of a q/k projection `[heads*D, in]`: Meta interleaved pairs <-> Hugging Face halves.

  Within each head, Hugging Face row j is interleaved row 2j for j < D/2 and row 2(j - D/2) + 1
  otherwise ("evens, then odds"); this is transformers' `convert_llama_weights_to_hf.permute`.
  q . k is unchanged because q and k get the same permutation; v and o are never permuted.
  """

  heads: int

  def to_hf(self, x: np.ndarray) -> np.ndarray:
    rows, cols = x.shape
    return x.reshape(self.heads, rows // self.heads // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)

  def from_hf(self, x: np.ndarray) -> np.ndarray:
    rows, cols = x.shape
    return x.reshape(self.heads, 2, rows // self.heads // 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


@dataclasses.dataclass(frozen=True)
class Chain:
  """Hooks applied in order towards Hugging Face and in reverse order back."""

  hooks: tuple[Hook, ...]

  def to_hf(self, x: np.ndarray) -> np.ndarray:
    for hook in self.hooks:
      x = hook.to_hf(x)
    return x

  def from_hf(self, x: np.ndarray) -> np.ndarray:
    for hook in reversed(self.hooks):
      x = hook.from_hf(x)
    return x


def chain(*hooks: Hook) -> Hook:
  return hooks[0] if len(hooks) == 1 else Chain(tuple(hooks))


def concat_rows(parts: Sequence[np.ndarray], rows: int, fill: np.ndarray | None = None) -> np.ndarray:
  """Stacks vocabulary tables `[V_i, E]` and pads to `rows` with `fill` (default: mean row)."""
  x_VxE = np.concatenate([np.asarray(p, np.float32) for p in parts], axis=0)
  if x_VxE.shape[0] > rows:
    raise ValueError(f"vocabulary tables have {x_VxE.shape[0]} rows together, more than the {rows} the model has")
  if x_VxE.shape[0] == rows:
    return x_VxE
  pad = mean_row(x_VxE) if fill is None else fill
  return np.concatenate([x_VxE, np.broadcast_to(pad, (rows - x_VxE.shape[0], x_VxE.shape[1]))], axis=0)


def grow_rows(x_VxE: np.ndarray, rows: int, seed: int) -> np.ndarray:
  """Pads a vocabulary table `[V, E]` to `rows`: each new row is the mean row plus Gaussian noise with
  the table's per-dimension standard deviation (drawn from `seed`, so a conversion is reproducible).

  New tokens (LWM's vision codes) need rows that differ from each other and sit at the scale of the
  trained ones: rows all equal to the mean cannot be told apart at the model's input, and in the tiny
  demo the mean row's norm was 0.19 against 5.4 for a text row (issue 17: the first vision stage
  predicted the first code of a generated frame at 0.55 with mean rows, 1.00 with these).
  """
  if x_VxE.shape[0] > rows:
    raise ValueError(f"the vocabulary table has {x_VxE.shape[0]} rows, more than the {rows} the model has")
  x64 = x_VxE.astype(np.float64)
  noise = np.random.default_rng(seed).standard_normal((rows - x_VxE.shape[0], x_VxE.shape[1]))
  new = x64.mean(axis=0) + noise * x64.std(axis=0)
  return np.concatenate([np.asarray(x_VxE, np.float32), new.astype(np.float32)], axis=0)


def row_seed(tensor_name: str) -> int:
  """The seed of `grow_rows` for a Hugging Face tensor: the same new rows whichever converter grows it."""
  return zlib.crc32(tensor_name.encode())


def mean_row(x_VxE: np.ndarray) -> np.ndarray:
  """The mean of a table's rows (float64 accumulation): how new vocabulary rows start."""
  return x_VxE.astype(np.float64).mean(axis=0, keepdims=True).astype(np.float32)
