"""The tile plan of one ring hop for the Pallas kernels: padded token metadata, per-tile summaries and
visible ranges, shared by the Mosaic TPU and Triton GPU kernels.

The kernels decide per (query tile, key tile) whether to compute it from the same block summaries as
the XLA hop (`common.summarize`, `common.summaries_overlap`: segment-id ranges of the valid tokens and,
when causal, the smallest key position against the largest query position), evaluated on scalars in
the kernel. The visible ranges (first and last visible key tile of each query tile, and the other
way round) bound the loops of the GPU kernels and clamp the block index maps of the TPU kernels, so
tiles outside them cost neither compute nor memory traffic; tiles inside them that the summaries
prove empty (holes between packed documents, the two halves of a load-balanced shard) skip their
compute. Everything here is per batch row: one row's documents do not keep another row's tiles alive.

Shape legend as in `common`: B batch, L local length (padded: Lq', Lk'), n a tile count.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lwm_plugin.kernels.ring import common

SUMMARY_FIELDS = 4  # seg_min, seg_max, pos_min, pos_max (the order of `common.Summary`)


@dataclasses.dataclass(frozen=True)
class Tiles:
  """Static tile geometry of one hop: tile sizes and padded lengths (multiples of the tiles)."""

  bq: int
  bk: int
  lq: int
  lk: int

  @property
  def nq(self) -> int:
    return self.lq // self.bq

  @property
  def nk(self) -> int:
    return self.lk // self.bk

  @classmethod
  def fit(cls, block_q: int, block_kv: int, lq: int, lk: int, granule) -> "Tiles":
    """Tiles no larger than the (granule-rounded) lengths; lengths padded to whole tiles.

    `granule(length)` is the smallest tile the backend accepts for a short sequence (e.g. the
    length rounded up to 128 on TPU, to a power of two on GPU).
    """
    bq, bk = min(block_q, granule(lq)), min(block_kv, granule(lk))
    return cls(bq, bk, -(-lq // bq) * bq, -(-lk // bk) * bk)


class Plan(NamedTuple):
  """Padded token metadata and tile tables of one hop (int32)."""

  q_seg: jax.Array  # [B, Lq']; padding has segment 0 (masked)
  q_pos: jax.Array
  kv_seg: jax.Array  # [B, Lk']
  kv_pos: jax.Array
  q_sum: jax.Array  # [B, nq, 4] summaries of the query tiles
  kv_sum: jax.Array  # [B, nk, 4]
  q_range: jax.Array  # [B, nq, 2] first and last key tile a query tile may see
  kv_range: jax.Array  # [B, nk, 2] first and last query tile that may see a key tile


def plan(tiles: Tiles, q_seg_BxL, kv_seg_BxL, q_pos_BxL, kv_pos_BxL, causal: bool) -> Plan:
  pad = lambda x, length: jnp.pad(x.astype(jnp.int32), ((0, 0), (0, length - x.shape[1])))
  q_seg, q_pos = pad(q_seg_BxL, tiles.lq), pad(q_pos_BxL, tiles.lq)
  kv_seg, kv_pos = pad(kv_seg_BxL, tiles.lk), pad(kv_pos_BxL, tiles.lk)
  q_sum = common.summarize(q_seg, q_pos, tiles.bq)
  kv_sum = common.summarize(kv_seg, kv_pos, tiles.bk)
  vis = common.block_visibility(q_sum, kv_sum, causal)  # [B, nq, nk]
  q_range = jnp.stack(common.visible_range(vis), axis=-1)
  kv_range = jnp.stack(common.visible_range(jnp.swapaxes(vis, 1, 2)), axis=-1)
  return Plan(q_seg, q_pos, kv_seg, kv_pos, jnp.stack(q_sum, axis=-1), jnp.stack(kv_sum, axis=-1), q_range,
              kv_range)


def tile_visible(q_sum, kv_sum, causal: bool):
  """The skip rule on one tile pair; `q_sum`/`kv_sum` index the 4 summary fields (refs or tuples)."""
  return common.summaries_overlap(q_sum[0], q_sum[1], q_sum[3], kv_sum[0], kv_sum[1], kv_sum[2], causal)


def out_shape(shape: tuple[int, ...], like) -> jax.ShapeDtypeStruct:
  """A float32 kernel output varying over the same `shard_map` axes as `like` (needed under check_vma)."""
  return jax.ShapeDtypeStruct(shape, jnp.float32, manual_axis_type=jax.typeof(like).manual_axis_type)


def check_hop_shapes(q, k, v, q_seg, kv_seg, q_pos, kv_pos, *extra) -> None:
  """Eager shape checks of the hop arguments (`extra`: (name, array, expected shape) triples)."""
  if q.ndim != 4 or k.ndim != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
    raise ValueError(f"expected q [B, Lq, H, D] and k, v [B, Lk, K, D]: {q.shape=}, {k.shape=}, {v.shape=}")
  if q.shape[2] % k.shape[2]:
    raise ValueError(f"query heads must be a multiple of kv heads: {q.shape=}, {k.shape=}")
  for name, x, want in (("q_seg", q_seg, q.shape[:2]), ("q_pos", q_pos, q.shape[:2]), ("kv_seg", kv_seg, k.shape[:2]),
                        ("kv_pos", kv_pos, k.shape[:2]), *extra):
    if x.shape != tuple(want):
      raise ValueError(f"{name} must have shape {tuple(want)}: {x.shape=}")
