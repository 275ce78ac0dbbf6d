"""Mosaic TPU kernels for one ring hop (forward, dq, dk/dv), the `common.HopFwd`/`HopBwd` interface.

Three `pallas_call`s, FlashAttention-2 style, all statistics and accumulators float32 in VMEM:

* forward, grid (B, H, nq, nk), the key tiles innermost ("arbitrary"): online softmax per query tile;
  the output is normalised within the hop and the natural-log lse written once per query tile.
* dq, grid (B, H, nq, nk): recomputes p from the final lse, adds the hop's dq to the incoming
  accumulator in place (`input_output_aliases`).
* dk/dv, grid (B, K, nk, G, nq): for one kv head and key tile, the G query heads sharing it and the
  query tiles are the reduction axes, so K/V heads are never repeated; scores are computed
  transposed (s^T = k q^T) so that lse and delta enter as lane rows and no matmul needs a transpose.

Block skipping (`tiles`): the per-tile summaries and visible ranges are scalar-prefetched into SMEM.
A tile pair runs its body under `pl.when(summaries overlap)`; the index maps clamp the key (or
query) tile index into the visible range, so tiles outside it re-point to a block already in VMEM
and issue no DMA (the trick of LWM's TPU kernel and JAX's flash attention, driven by segment ids and
positions instead of a fixed causal diagonal).

Layouts: Mosaic blocks must tile their last two dimensions by (8, 128), so a per-head block of a
[B, L, H, D] array (head in the second-minor dimension) is not expressible. With D % 128 == 0 the
arrays are viewed as [B, L, H*D] (a free reshape) and head h is lane block h; otherwise they are
transposed to head-major [B, H, L, D] in the wrapper (one extra pass over q, k, v per hop).
Token metadata enters as lane-dense rows [B, 1, L] on the key side of q-major kernels and as
lane-broadcast columns [B, L, 128] (as JAX's flash/splash kernels do) on the other side.

Masked scores are -inf and every max is made safe, so rows that see nothing in a hop get o = 0 and
lse = -inf exactly. Tiles: multiples of 128 tokens when compiled (checked eagerly on a TPU
backend); in interpret mode (CPU) any size.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from lwm_plugin.kernels.ring import common, tiles as tiles_lib
from lwm_plugin.kernels.ring.common import BlockSizes

NUM_LANES = 128
DEFAULT_FWD = (512, 512)
DEFAULT_BWD = (512, 512)
_NT = (((1,), (1,)), ((), ()))  # a @ b^T
_F32 = jnp.float32


def _granule(length: int) -> int:
  return -(-length // NUM_LANES) * NUM_LANES


def _lanes(x_Nx128, width: int):
  """A lane-replicated [N, 128] value widened (or narrowed) to [N, width]."""
  if width == NUM_LANES:
    return x_Nx128
  if width % NUM_LANES == 0:
    return jnp.tile(x_Nx128, (1, width // NUM_LANES))
  if width < NUM_LANES:
    return x_Nx128[:, :width]
  raise ValueError(f"width {width} must be below {NUM_LANES} or a multiple of it")


def _summary(ref, row: int):
  return tuple(ref[row * tiles_lib.SUMMARY_FIELDS + f] for f in range(tiles_lib.SUMMARY_FIELDS))


def _clamp(index, range_ref, row: int):
  return jnp.minimum(jnp.maximum(index, range_ref[2 * row]), range_ref[2 * row + 1])


# ----------------------------------------------------------------------------------------------------
# Kernels


def _fwd_kernel(q_range_ref, q_sum_ref, kv_sum_ref, q_ref, k_ref, v_ref, q_seg_ref, q_pos_ref, kv_seg_ref, kv_pos_ref,
                o_ref, lse_ref, m_ref, l_ref, acc_ref, *, scale: float, causal: bool, precision, nq: int, nk: int):
  """One (batch, head, query tile, key tile) step of the online softmax.

  m, l ([bq, 128], lanes equal) and acc ([bq, D]) live in VMEM across the key tiles:
      s = scale q k^T, masked to -inf;  m' = max(m, rowmax s);  p = exp(s - m'_safe)
      alpha = exp(m - m'_safe);  l = alpha l + rowsum p;  acc = alpha acc + p v
  with m'_safe = 0 where m' = -inf (nothing seen yet), so no inf - inf. After the last key tile:
  o = acc / l and lse = m + log l, or o = 0 and lse = -inf where l = 0.
  """
  del q_range_ref  # used by the index maps only
  b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)

  @pl.when(j == 0)
  def _init():
    m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, _F32)
    l_ref[...] = jnp.zeros(l_ref.shape, _F32)
    acc_ref[...] = jnp.zeros(acc_ref.shape, _F32)

  @pl.when(tiles_lib.tile_visible(_summary(q_sum_ref, b * nq + i), _summary(kv_sum_ref, b * nk + j), causal))
  def _compute():
    q, k, v = q_ref[...], k_ref[...], v_ref[...]
    s = jax.lax.dot_general(q, k, _NT, preferred_element_type=_F32, precision=precision) * scale  # [bq, bk]
    bk = s.shape[1]
    q_seg = _lanes(q_seg_ref[...], bk)
    kv_seg = kv_seg_ref[...]  # [1, bk]
    mask = (q_seg == kv_seg) & (kv_seg != 0)
    if causal:
      mask = mask & (kv_pos_ref[...] <= _lanes(q_pos_ref[...], bk))
    s = jnp.where(mask, s, -jnp.inf)
    m_prev = m_ref[...]
    m_next = jnp.maximum(m_prev, s.max(axis=1, keepdims=True))
    m_safe = jnp.where(m_next == -jnp.inf, 0.0, m_next)
    p = jnp.exp(s - _lanes(m_safe, bk))
    alpha = jnp.exp(m_prev - m_safe)
    l_ref[...] = alpha * l_ref[...] + p.sum(axis=1, keepdims=True)
    m_ref[...] = m_next
    pv = jax.lax.dot(p.astype(v.dtype), v, preferred_element_type=_F32, precision=precision)
    acc_ref[...] = _lanes(alpha, acc_ref.shape[1]) * acc_ref[...] + pv

  @pl.when(j == pl.num_programs(3) - 1)
  def _store():
    l = l_ref[...]
    seen = l > 0
    inv = jnp.where(seen, 1.0 / jnp.where(seen, l, 1.0), 0.0)
    o_ref[...] = (acc_ref[...] * _lanes(inv, acc_ref.shape[1])).astype(o_ref.dtype)
    lse = jnp.where(seen, m_ref[...] + jnp.log(jnp.where(seen, l, 1.0)), -jnp.inf)  # [bq, 128]
    lse_ref[...] = lse.T[:1, :]  # lane-replicated column to lane row [1, bq] (an XLU transpose)


def _dq_kernel(q_range_ref, q_sum_ref, kv_sum_ref, q_ref, do_ref, lse_ref, delta_ref, q_seg_ref, q_pos_ref, k_ref, v_ref,
               kv_seg_ref, kv_pos_ref, dq_in_ref, dq_ref, acc_ref, *, scale: float, causal: bool, precision, nq: int,
               nk: int):
  """dq of one query tile over the key tiles, added to the incoming accumulator at the end:
      p = exp(scale q k^T - lse) (0 where masked);  ds = p (do v^T - delta);  dq += scale ds k.
  lse and delta enter as lane rows [1, bq] and are turned into columns once per step.
  """
  del q_range_ref
  b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)

  @pl.when(j == 0)
  def _init():
    acc_ref[...] = jnp.zeros(acc_ref.shape, _F32)

  @pl.when(tiles_lib.tile_visible(_summary(q_sum_ref, b * nq + i), _summary(kv_sum_ref, b * nk + j), causal))
  def _compute():
    q, do, k, v = q_ref[...], do_ref[...], k_ref[...], v_ref[...]
    s = jax.lax.dot_general(q, k, _NT, preferred_element_type=_F32, precision=precision) * scale  # [bq, bk]
    bk = s.shape[1]
    kv_seg = kv_seg_ref[...]
    mask = (_lanes(q_seg_ref[...], bk) == kv_seg) & (kv_seg != 0)
    if causal:
      mask = mask & (kv_pos_ref[...] <= _lanes(q_pos_ref[...], bk))
    lse, delta = lse_ref[0][:, None], delta_ref[0][:, None]  # [bq, 1]
    p = jnp.where(mask, jnp.exp(s - lse), 0.0)
    dp = jax.lax.dot_general(do, v, _NT, preferred_element_type=_F32, precision=precision)
    ds = (p * (dp - delta)).astype(k.dtype)
    acc_ref[...] += jax.lax.dot(ds, k, preferred_element_type=_F32, precision=precision)

  @pl.when(j == pl.num_programs(3) - 1)
  def _store():
    dq_ref[...] = dq_in_ref[...] + scale * acc_ref[...]


def _dkv_kernel(kv_range_ref, q_sum_ref, kv_sum_ref, q_ref, do_ref, lse_ref, delta_ref, q_seg_ref, q_pos_ref, k_ref,
                v_ref, kv_seg_ref, kv_pos_ref, dk_ref, dv_ref, dk_acc_ref, dv_acc_ref, *, scale: float, causal: bool,
                precision, nq: int, nk: int):
  """dk, dv of one kv head and key tile, reduced over the G query heads of its group and the query tiles.

  Transposed scores keep every statistic a lane row:
      p^T = exp(scale k q^T - lse) (0 where masked);  dv += p^T do
      ds^T = p^T (v do^T - delta);  dk += scale ds^T q.
  """
  del kv_range_ref
  b, j, g, i = pl.program_id(0), pl.program_id(2), pl.program_id(3), pl.program_id(4)

  @pl.when((g == 0) & (i == 0))
  def _init():
    dk_acc_ref[...] = jnp.zeros(dk_acc_ref.shape, _F32)
    dv_acc_ref[...] = jnp.zeros(dv_acc_ref.shape, _F32)

  @pl.when(tiles_lib.tile_visible(_summary(q_sum_ref, b * nq + i), _summary(kv_sum_ref, b * nk + j), causal))
  def _compute():
    q, do, k, v = q_ref[...], do_ref[...], k_ref[...], v_ref[...]
    s_t = jax.lax.dot_general(k, q, _NT, preferred_element_type=_F32, precision=precision) * scale  # [bk, bq]
    bq = s_t.shape[1]
    kv_seg = _lanes(kv_seg_ref[...], bq)
    mask = (kv_seg == q_seg_ref[...]) & (kv_seg != 0)
    if causal:
      mask = mask & (_lanes(kv_pos_ref[...], bq) <= q_pos_ref[...])
    p_t = jnp.where(mask, jnp.exp(s_t - lse_ref[...]), 0.0)
    dv_acc_ref[...] += jax.lax.dot(p_t.astype(do.dtype), do, preferred_element_type=_F32, precision=precision)
    dp_t = jax.lax.dot_general(v, do, _NT, preferred_element_type=_F32, precision=precision)
    ds_t = (p_t * (dp_t - delta_ref[...])).astype(q.dtype)
    dk_acc_ref[...] += jax.lax.dot(ds_t, q, preferred_element_type=_F32, precision=precision)

  @pl.when((g == pl.num_programs(3) - 1) & (i == pl.num_programs(4) - 1))
  def _store():
    dk_ref[...] = scale * dk_acc_ref[...]
    dv_ref[...] = dv_acc_ref[...]


# ----------------------------------------------------------------------------------------------------
# Wrappers


@dataclasses.dataclass(frozen=True)
class _Layout:
  """How the kernels address head n of a [B, L, N, D] array (see the module docstring)."""

  folded: bool  # [B, L, N*D], head = lane block; else head-major [B, N, L, D]

  def prepare(self, x_BxLxNxD):
    b, length, n, d = x_BxLxNxD.shape
    return x_BxLxNxD.reshape(b, length, n * d) if self.folded else x_BxLxNxD.transpose(0, 2, 1, 3)

  def restore(self, x, n: int):
    if self.folded:
      return x.reshape(x.shape[0], x.shape[1], n, -1)
    return x.transpose(0, 2, 1, 3)

  def shape(self, b: int, length: int, n: int, d: int) -> tuple[int, ...]:
    return (b, length, n * d) if self.folded else (b, n, length, d)

  def spec(self, block: int, d: int, where: Callable[..., tuple]) -> pl.BlockSpec:
    """`where(*grid, *prefetch) -> (batch, tile, head)`."""
    if self.folded:
      return pl.BlockSpec((None, block, d), where)
    return pl.BlockSpec((None, None, block, d), lambda *a: (lambda b, t, n: (b, n, t, 0))(*where(*a)))


def _check_blocks(blocks: BlockSizes, interpret) -> None:
  """Compiled Mosaic tiles are multiples of 128 tokens; checked when this process runs on a TPU."""
  if interpret or jax.default_backend() != "tpu":
    return  # other backends check their own kernels; the TPU branch of an AOT compile is checked by Mosaic
  for field in dataclasses.fields(blocks):
    value = getattr(blocks, field.name)
    if value % NUM_LANES:
      raise ValueError(f"BlockSizes.{field.name}={value}: Mosaic TPU tiles must be multiples of {NUM_LANES} tokens")


def _interpreter(interpret, x):
  """`interpret=True` inside `shard_map(check_vma=True)` (inputs varying over mesh axes) needs the TPU
  interpreter: JAX 0.12's generic Pallas interpreter mixes varying and unvarying values there."""
  if interpret is True and jax.typeof(x).manual_axis_type.varying:
    return pltpu.InterpretParams()
  return interpret


def _columns(x_BxL):
  return jnp.broadcast_to(x_BxL[:, :, None], (*x_BxL.shape, NUM_LANES))


def _params(semantics: tuple[str, ...]):
  return pltpu.CompilerParams(dimension_semantics=semantics)


def hop_fwd(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, q_seg_BxL, kv_seg_BxL, q_pos_BxL, kv_pos_BxL, *, scale: float,
            causal: bool, block_sizes: BlockSizes, interpret=False):
  """See `common.HopFwd`. `interpret`: False (Mosaic), True or a `pltpu.InterpretParams` (CPU)."""
  tiles_lib.check_hop_shapes(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, q_seg_BxL, kv_seg_BxL, q_pos_BxL, kv_pos_BxL)
  blocks = block_sizes.resolve(DEFAULT_FWD, DEFAULT_BWD)
  _check_blocks(blocks, interpret)
  interpret = _interpreter(interpret, q_BxLxHxD)
  b, lq, h, d = q_BxLxHxD.shape
  lk, kh = k_BxLxKxD.shape[1:3]
  g = h // kh
  t = tiles_lib.Tiles.fit(*blocks.fwd, lq, lk, _granule)
  plan = tiles_lib.plan(t, q_seg_BxL, kv_seg_BxL, q_pos_BxL, kv_pos_BxL, causal)
  layout = _Layout(folded=d % NUM_LANES == 0)
  q = layout.prepare(common.pad_to(q_BxLxHxD, t.lq))
  k, v = (layout.prepare(common.pad_to(x, t.lk)) for x in (k_BxLxKxD, v_BxLxKxD))
  nq, nk = t.nq, t.nk

  q_at = lambda b_, h_, i, j, *refs: (b_, i, h_)
  kv_tile = lambda b_, i, j, q_range: _clamp(j, q_range, b_ * nq + i)
  kv_at = lambda b_, h_, i, j, q_range, *refs: (b_, kv_tile(b_, i, j, q_range), h_ // g)
  in_specs = [
      layout.spec(t.bq, d, q_at), layout.spec(t.bk, d, kv_at), layout.spec(t.bk, d, kv_at),
      pl.BlockSpec((None, t.bq, NUM_LANES), lambda b_, h_, i, j, *refs: (b_, i, 0)),
      pl.BlockSpec((None, t.bq, NUM_LANES), lambda b_, h_, i, j, *refs: (b_, i, 0)),
      pl.BlockSpec((None, 1, t.bk), lambda b_, h_, i, j, qr, *refs: (b_, 0, kv_tile(b_, i, j, qr))),
      pl.BlockSpec((None, 1, t.bk), lambda b_, h_, i, j, qr, *refs: (b_, 0, kv_tile(b_, i, j, qr))),
  ]
  out_specs = [layout.spec(t.bq, d, q_at), pl.BlockSpec((None, None, 1, t.bq), lambda b_, h_, i, j, *refs: (b_, h_, 0, i))]
  out_shape = [tiles_lib.out_shape(layout.shape(b, t.lq, h, d), q), tiles_lib.out_shape((b, h, 1, t.lq), q)]
  kernel = functools.partial(_fwd_kernel, scale=scale, causal=causal, precision=common.dot_precision(q.dtype), nq=nq,
                             nk=nk)
  o, lse = pl.pallas_call(
      kernel,
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=3, grid=(b, h, nq, nk), in_specs=in_specs, out_specs=out_specs,
          scratch_shapes=[pltpu.VMEM((t.bq, NUM_LANES), _F32), pltpu.VMEM((t.bq, NUM_LANES), _F32),
                          pltpu.VMEM((t.bq, d), _F32)]),
      out_shape=out_shape,
      compiler_params=_params(("parallel", "parallel", "parallel", "arbitrary")),
      cost_estimate=_cost(b, h, t, d, q.dtype, matmuls=2),
      interpret=interpret,
      name="ring_hop_fwd",
  )(plan.q_range.reshape(-1), plan.q_sum.reshape(-1), plan.kv_sum.reshape(-1), q, k, v, _columns(plan.q_seg),
    _columns(plan.q_pos), plan.kv_seg[:, None], plan.kv_pos[:, None])
  return layout.restore(o, h)[:, :lq], lse[:, :, 0, :lq]


def hop_bwd(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, do_BxLxHxD, lse_BxHxL, delta_BxHxL, dq_BxLxHxD, q_seg_BxL, kv_seg_BxL,
            q_pos_BxL, kv_pos_BxL, *, scale: float, causal: bool, block_sizes: BlockSizes, interpret=False):
  """See `common.HopBwd`: (dq_BxLxHxD + this hop's dq, dk_BxLxKxD, dv_BxLxKxD), all float32."""
  b, lq, h, d = q_BxLxHxD.shape
  tiles_lib.check_hop_shapes(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, q_seg_BxL, kv_seg_BxL, q_pos_BxL, kv_pos_BxL,
                             ("do", do_BxLxHxD, q_BxLxHxD.shape), ("lse", lse_BxHxL, (b, h, lq)),
                             ("delta", delta_BxHxL, (b, h, lq)), ("dq", dq_BxLxHxD, q_BxLxHxD.shape))
  blocks = block_sizes.resolve(DEFAULT_FWD, DEFAULT_BWD)
  _check_blocks(blocks, interpret)
  interpret = _interpreter(interpret, q_BxLxHxD)
  lk, kh = k_BxLxKxD.shape[1:3]
  g = h // kh
  t = tiles_lib.Tiles.fit(*blocks.bwd, lq, lk, _granule)
  plan = tiles_lib.plan(t, q_seg_BxL, kv_seg_BxL, q_pos_BxL, kv_pos_BxL, causal)
  layout = _Layout(folded=d % NUM_LANES == 0)
  q, do = (layout.prepare(common.pad_to(x, t.lq)) for x in (q_BxLxHxD, do_BxLxHxD))
  dq_in = layout.prepare(common.pad_to(dq_BxLxHxD.astype(_F32), t.lq))
  k, v = (layout.prepare(common.pad_to(x, t.lk)) for x in (k_BxLxKxD, v_BxLxKxD))
  rows = lambda x_BxHxL: common.pad_to(x_BxHxL.astype(_F32), t.lq, axis=2)[:, :, None]  # [B, H, 1, Lq']
  lse = rows(jnp.where(lse_BxHxL == -jnp.inf, 0.0, lse_BxHxL))  # such rows are masked everywhere: p = 0
  delta = rows(delta_BxHxL)
  nq, nk = t.nq, t.nk
  precision = common.dot_precision(q.dtype)
  sums = (plan.q_sum.reshape(-1), plan.kv_sum.reshape(-1))

  # dq: grid (B, H, nq, nk), key tiles clamped into each query tile's visible range.
  q_at = lambda b_, h_, i, j, *refs: (b_, i, h_)
  kv_tile = lambda b_, i, j, q_range: _clamp(j, q_range, b_ * nq + i)
  kv_at = lambda b_, h_, i, j, q_range, *refs: (b_, kv_tile(b_, i, j, q_range), h_ // g)
  row_at = lambda b_, h_, i, j, *refs: (b_, h_, 0, i)
  col_at = lambda b_, h_, i, j, *refs: (b_, i, 0)
  kv_row_at = lambda b_, h_, i, j, qr, *refs: (b_, 0, kv_tile(b_, i, j, qr))
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, scale=scale, causal=causal, precision=precision, nq=nq, nk=nk),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=3, grid=(b, h, nq, nk),
          in_specs=[layout.spec(t.bq, d, q_at), layout.spec(t.bq, d, q_at),
                    pl.BlockSpec((None, None, 1, t.bq), row_at), pl.BlockSpec((None, None, 1, t.bq), row_at),
                    pl.BlockSpec((None, t.bq, NUM_LANES), col_at), pl.BlockSpec((None, t.bq, NUM_LANES), col_at),
                    layout.spec(t.bk, d, kv_at), layout.spec(t.bk, d, kv_at),
                    pl.BlockSpec((None, 1, t.bk), kv_row_at), pl.BlockSpec((None, 1, t.bk), kv_row_at),
                    layout.spec(t.bq, d, q_at)],
          out_specs=layout.spec(t.bq, d, q_at),
          scratch_shapes=[pltpu.VMEM((t.bq, d), _F32)]),
      out_shape=tiles_lib.out_shape(dq_in.shape, q),
      input_output_aliases={3 + 10: 0},  # dq_in (after the 3 prefetch operands) is updated in place
      compiler_params=_params(("parallel", "parallel", "parallel", "arbitrary")),
      cost_estimate=_cost(b, h, t, d, q.dtype, matmuls=3),
      interpret=interpret,
      name="ring_hop_dq",
  )(plan.q_range.reshape(-1), *sums, q, do, lse, delta, _columns(plan.q_seg), _columns(plan.q_pos), k, v,
    plan.kv_seg[:, None], plan.kv_pos[:, None], dq_in)

  # dk, dv: grid (B, K, nk, G, nq), query tiles clamped into each key tile's visible range.
  q_tile = lambda b_, j, i, kv_range: _clamp(i, kv_range, b_ * nk + j)
  gq_at = lambda b_, n, j, g_, i, kr, *refs: (b_, q_tile(b_, j, i, kr), n * g + g_)
  gq_row_at = lambda b_, n, j, g_, i, kr, *refs: (b_, n * g + g_, 0, q_tile(b_, j, i, kr))
  q_row_at = lambda b_, n, j, g_, i, kr, *refs: (b_, 0, q_tile(b_, j, i, kr))
  own_at = lambda b_, n, j, g_, i, *refs: (b_, j, n)
  kv_col_at = lambda b_, n, j, g_, i, *refs: (b_, j, 0)
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, scale=scale, causal=causal, precision=precision, nq=nq, nk=nk),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=3, grid=(b, kh, nk, g, nq),
          in_specs=[layout.spec(t.bq, d, gq_at), layout.spec(t.bq, d, gq_at),
                    pl.BlockSpec((None, None, 1, t.bq), gq_row_at), pl.BlockSpec((None, None, 1, t.bq), gq_row_at),
                    pl.BlockSpec((None, 1, t.bq), q_row_at), pl.BlockSpec((None, 1, t.bq), q_row_at),
                    layout.spec(t.bk, d, own_at), layout.spec(t.bk, d, own_at),
                    pl.BlockSpec((None, t.bk, NUM_LANES), kv_col_at), pl.BlockSpec((None, t.bk, NUM_LANES), kv_col_at)],
          out_specs=[layout.spec(t.bk, d, own_at), layout.spec(t.bk, d, own_at)],
          scratch_shapes=[pltpu.VMEM((t.bk, d), _F32), pltpu.VMEM((t.bk, d), _F32)]),
      out_shape=[tiles_lib.out_shape(layout.shape(b, t.lk, kh, d), k)] * 2,
      compiler_params=_params(("parallel", "parallel", "parallel", "arbitrary", "arbitrary")),
      cost_estimate=_cost(b, h, t, d, q.dtype, matmuls=4),
      interpret=interpret,
      name="ring_hop_dkv",
  )(plan.kv_range.reshape(-1), *sums, q, do, lse, delta, plan.q_seg[:, None], plan.q_pos[:, None], k, v,
    _columns(plan.kv_seg), _columns(plan.kv_pos))
  return layout.restore(dq, h)[:, :lq], layout.restore(dk, kh)[:, :lk], layout.restore(dv, kh)[:, :lk]


def _cost(b: int, h: int, t: tiles_lib.Tiles, d: int, dtype, matmuls: int) -> pl.CostEstimate:
  """Upper bound (no tile skipped) for XLA's scheduler, which overlaps the ring's permutes with it."""
  pairs = b * h * t.lq * t.lk
  itemsize = jnp.dtype(dtype).itemsize
  return pl.CostEstimate(flops=2 * matmuls * pairs * d, transcendentals=pairs,
                         bytes_accessed=b * h * (t.lq + 2 * t.lk) * d * itemsize + b * h * t.lq * d * 4)
