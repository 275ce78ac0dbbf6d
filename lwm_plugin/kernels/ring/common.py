"""What every ring-attention hop implementation shares: block sizes, the mask rule, block skipping,
and the `HopImpl` interface the ring loop calls.

The mask rule (one place, used by every hop implementation): query token i sees key token j iff

    kv_segment_ids[j] == q_segment_ids[i] != 0   and   (not causal or kv_positions[j] <= q_positions[i]).

Segment id 0 marks padding. Causality comes from positions, never from array order, so any token
layout is exact. A block of (query rows x key columns) is skipped when per-row summaries prove the
rule false for every pair: the segment-id ranges of the valid (non-zero) tokens do not overlap, or
(causal) the smallest key position is after the largest query position. The summaries are
conservative (a computed block may still be fully masked, the element mask then zeroes it); they
are never optimistic, so skipping is exact.

Shape legend: B batch, L local length, H query heads, K kv heads, D head dim; `n` a block count.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Protocol

import jax
import jax.numpy as jnp

_BIG = jnp.iinfo(jnp.int32).max


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Query and key block sizes (tokens) inside one hop; None means the hop implementation's default.

  Backward sizes default to the forward ones when those are given, else to the implementation's
  backward defaults. A block larger than the local length is clipped to it; a local length that is
  not a multiple of the block is padded internally with masked tokens, so any length works.
  Compiled Pallas kernels add hardware constraints (checked eagerly on that backend): Mosaic TPU
  blocks are multiples of 128 tokens, Triton GPU blocks powers of two of at least 16.
  """

  block_q: int | None = None
  block_kv: int | None = None
  block_q_bwd: int | None = None
  block_kv_bwd: int | None = None

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if value is not None and (not isinstance(value, int) or value <= 0):
        raise ValueError(f"BlockSizes.{field.name} must be a positive int or None, got {value!r}")

  def resolve(self, default_fwd: tuple[int, int], default_bwd: tuple[int, int]) -> "BlockSizes":
    """All four sizes set: explicit values, else (backward) the explicit forward ones, else the defaults."""
    block_q = self.block_q or default_fwd[0]
    block_kv = self.block_kv or default_fwd[1]
    return BlockSizes(block_q, block_kv, self.block_q_bwd or self.block_q or default_bwd[0],
                      self.block_kv_bwd or self.block_kv or default_bwd[1])

  @property
  def fwd(self) -> tuple[int, int]:
    if self.block_q is None or self.block_kv is None:
      raise ValueError(f"unresolved block sizes {self}: call resolve() first")
    return self.block_q, self.block_kv

  @property
  def bwd(self) -> tuple[int, int]:
    if self.block_q is None or self.block_kv is None:
      raise ValueError(f"unresolved block sizes {self}: call resolve() first")
    return (self.block_q_bwd or self.block_q, self.block_kv_bwd or self.block_kv)


def token_mask(q_seg_BxLq, q_pos_BxLq, kv_seg_BxLk, kv_pos_BxLk, causal: bool):
  """The mask rule, element-wise: bool [B, Lq, Lk]."""
  mask = (q_seg_BxLq[:, :, None] == kv_seg_BxLk[:, None, :]) & (kv_seg_BxLk[:, None, :] != 0)
  if causal:
    mask &= kv_pos_BxLk[:, None, :] <= q_pos_BxLq[:, :, None]
  return mask


class Summary(NamedTuple):
  """Per-row, per-block bounds over valid (segment != 0) tokens; [B, n] int32 each.

  An all-padding block has min = int32 max and max = -int32 max, so it overlaps nothing.
  """

  seg_min: jax.Array
  seg_max: jax.Array
  pos_min: jax.Array
  pos_max: jax.Array


def summarize(seg_BxL, pos_BxL, block: int) -> Summary:
  """Bounds per block of `block` tokens (L must be a multiple of `block`)."""
  b, length = seg_BxL.shape
  seg = seg_BxL.reshape(b, length // block, block)
  pos = pos_BxL.reshape(b, length // block, block)
  valid = seg != 0
  lo = lambda x: jnp.where(valid, x, _BIG).min(axis=-1)
  hi = lambda x: jnp.where(valid, x, -_BIG).max(axis=-1)
  return Summary(lo(seg), hi(seg), lo(pos), hi(pos))


def summaries_overlap(q_seg_min, q_seg_max, q_pos_max, kv_seg_min, kv_seg_max, kv_pos_min, causal: bool):
  """The mask rule lifted to block summaries: may any pair be unmasked? Works on scalars and arrays.

  Pallas kernels evaluate it on scalars per tile (skip decision), the wrappers on whole tables.
  """
  overlap = (q_seg_min <= kv_seg_max) & (kv_seg_min <= q_seg_max)
  if causal:
    overlap = overlap & (kv_pos_min <= q_pos_max)
  return overlap


def block_visibility(q: Summary, kv: Summary, causal: bool):
  """bool [B, nq, nk]: may any (query block i, key block j) pair of batch row b be unmasked?"""
  return summaries_overlap(q.seg_min[:, :, None], q.seg_max[:, :, None], q.pos_max[:, :, None],
                           kv.seg_min[:, None, :], kv.seg_max[:, None, :], kv.pos_min[:, None, :], causal)


def visible(q: Summary, kv: Summary, causal: bool):
  """bool [nq, nk]: may any (query block i, key block j) pair be unmasked in any batch row?"""
  return block_visibility(q, kv, causal).any(axis=0)


def visible_range(vis_Bxnxm):
  """int32 [B, n] first and last index j with vis[b, i, j] (both 0 where none is visible).

  Kernels clamp their K/V (or Q) block index into this range, so the blocks before the first and
  after the last visible one re-use a block already in memory instead of fetching a new one.
  """
  m = vis_Bxnxm.shape[-1]
  index = jnp.arange(m, dtype=jnp.int32)
  first = jnp.where(vis_Bxnxm, index, m).min(axis=-1)
  last = jnp.where(vis_Bxnxm, index, -1).max(axis=-1)
  none = last < 0
  return jnp.where(none, 0, first).astype(jnp.int32), jnp.where(none, 0, last).astype(jnp.int32)


def pad_to(x, multiple: int, axis: int = 1):
  """Zero-pads `axis` up to a multiple of `multiple` (zero segment id = padding, masked)."""
  extra = -x.shape[axis] % multiple
  if not extra:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, extra)
  return jnp.pad(x, widths)


def dot_precision(dtype) -> jax.lax.Precision:
  """fp32 inputs get true fp32 matmuls (no TF32 / bf16 passes); low-precision inputs the default."""
  return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else jax.lax.Precision.DEFAULT


class HopFwd(Protocol):

  def __call__(self, q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, q_seg_BxL, kv_seg_BxL, q_pos_BxL, kv_pos_BxL, *,
               scale: float, causal: bool, block_sizes: BlockSizes) -> tuple[jax.Array, jax.Array]:
    """One hop forward: (o_BxLxHxD float32 normalised within the hop, lse_BxHxL float32 natural log).

    Rows with no visible key in this hop: o = 0 and lse = -inf (never NaN).
    """


class HopBwd(Protocol):

  def __call__(self, q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, do_BxLxHxD, lse_BxHxL, delta_BxHxL, dq_BxLxHxD, q_seg_BxL,
               kv_seg_BxL, q_pos_BxL, kv_pos_BxL, *, scale: float, causal: bool,
               block_sizes: BlockSizes) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One hop backward: float32 (dq_BxLxHxD + this hop's dq, dk_BxLxKxD, dv_BxLxKxD of this hop's K/V).

    `lse` is the final (all-hop) log-sum-exp and `delta` = rowsum(do * o) of the final output, both
    float32; rows with lse = -inf contribute nothing. `dq_BxLxHxD` (float32) is the dq accumulated
    over the previous hops: the hop adds to it (in place where the backend can) and returns it.
    """


@dataclasses.dataclass(frozen=True)
class HopImpl:
  """A per-hop attention implementation, selected by `name` in `ring_attention(..., impl=name)`."""

  name: str
  fwd: HopFwd
  bwd: HopBwd
  available: Callable[[], str | None] = lambda: None  # None, or why it cannot run here
  # The kernels it compiles to per lowering platform, ((platform, kernels), ...) with "*" for every other
  # platform; empty: `name` on every platform. What `--check` reports for a compile target.
  kernels: tuple[tuple[str, str], ...] = ()

  def kernels_for(self, platform: str) -> str:
    """The kernels this hop compiles to when lowered for `platform` ("tpu", "cuda", "rocm", "gpu", "cpu")."""
    if not self.kernels:
      return self.name
    table = dict(self.kernels)
    for key in (platform, *(("cuda", "rocm") if platform == "gpu" else ()), "*"):
      if key in table:
        return table[key]
    raise ValueError(f"ring hop {self.name!r} has no kernels for platform {platform!r} (it has {sorted(table)})")
