"""Triton (Pallas GPU) kernels for one ring hop (forward, dq, dk/dv), the `common.HopFwd`/`HopBwd` interface.

Why Triton and not Mosaic GPU: the Triton lowering runs on every CUDA GPU JAX supports (Ampere,
Hopper, Blackwell) and on ROCm, its kernels run in interpret mode on CPU (our CI) and lower to Triton
IR on a CPU host for an abstract H100 (our lowering test), so every line here is exercised without a
GPU. A Mosaic GPU kernel (warp-specialised, TMA, wgmma: FlashAttention-3 class) is Hopper/Blackwell
only and can only be validated on the hardware; it is the follow-up once a GPU is at hand (JAX 0.12
marks the Pallas Triton backend deprecated in favour of Mosaic GPU; it still ships and works).

Three `pallas_call`s, FlashAttention-2 style, statistics and accumulators float32 in registers:

* forward, grid (nq, B, H): a query tile loops over the key tiles in its visible range (`tiles`)
  with an online softmax; tiles in the range that the summaries prove empty are skipped by a
  `lax.cond` on scalars (an `scf.if`), so masked tiles cost neither loads nor matmuls.
* dq, grid (nq, B, H): recomputes p from the final lse, adds the hop's dq to the incoming
  accumulator in place (`input_output_aliases`).
* dk/dv, grid (nk, B, K): a key tile of one kv head loops over the G query heads of its group and
  the query tiles in its visible range, so repeated K/V heads never exist.

Arrays stay in the ring's [B, L, H, D] layout (Triton loads strided rows), so the wrapper does no
transposes. Masked scores are -inf with safe maxima: rows that see nothing get o = 0, lse = -inf.
Compiled tiles are powers of two of at least 16 (tensor-core dots), as is the head dim (checked
eagerly on a GPU backend); in interpret mode (CPU) any size works.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from lwm_plugin.kernels.ring import common, tiles as tiles_lib
from lwm_plugin.kernels.ring.common import BlockSizes

_NT = (((1,), (1,)), ((), ()))  # a @ b^T
_TN = (((0,), (0,)), ((), ()))  # a^T @ b
_F32 = jnp.float32
MIN_TILE = 16


def default_blocks(d: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """(forward, backward) (query, key) tiles: FlashAttention-2 Triton sizes, smaller for d = 256."""
  return ((64, 32), (32, 32)) if d > 128 else ((128, 64), (64, 64))


def _warps(bq: int, bk: int, d: int) -> int:
  return 8 if bq * max(bk, d) >= 128 * 128 else 4


def _granule(length: int) -> int:
  return max(MIN_TILE, pl.next_power_of_2(length))


def _pow2(x: int) -> bool:
  return x >= MIN_TILE and x & (x - 1) == 0


def _check(blocks: BlockSizes, d: int, interpret: bool) -> None:
  """Compiled Triton tiles and head dims are powers of two >= 16; checked when this process runs on a GPU."""
  if interpret or jax.default_backend() != "gpu":
    return
  if not _pow2(d):
    raise ValueError(f"head dim {d}: the Triton hop kernels need a power of two >= {MIN_TILE}")
  for field in dataclasses.fields(blocks):
    value = getattr(blocks, field.name)
    if not _pow2(value):
      raise ValueError(f"BlockSizes.{field.name}={value}: Triton tiles must be powers of two >= {MIN_TILE}")


def _mask(q_seg, q_pos, kv_seg, kv_pos, causal: bool):
  """The mask rule on one tile: q_* [bq], kv_* [bk] -> bool [bq, bk]."""
  mask = (q_seg[:, None] == kv_seg[None, :]) & (kv_seg[None, :] != 0)
  if causal:
    mask = mask & (kv_pos[None, :] <= q_pos[:, None])
  return mask


def _row(ref, index=None):
  """The 4 summary scalars of one tile: `ref` is [4] (index None) or [n, 4]."""
  return tuple(ref[f] if index is None else ref[index, f] for f in range(tiles_lib.SUMMARY_FIELDS))


# ----------------------------------------------------------------------------------------------------
# Kernels


def _fwd_kernel(q_range_ref, q_sum_ref, kv_sum_ref, q_ref, k_ref, v_ref, q_seg_ref, q_pos_ref, kv_seg_ref, kv_pos_ref,
                o_ref, lse_ref, *, scale: float, causal: bool, precision, bk: int):
  """One query tile against the visible key tiles of the hop (online softmax, FlashAttention-2):
      s = scale q k^T, masked to -inf;  m' = max(m, rowmax s);  p = exp(s - m'_safe)
      alpha = exp(m - m'_safe);  l = alpha l + rowsum p;  acc = alpha acc + p v
  m'_safe = 0 where nothing was seen yet. Then o = acc / l, lse = m + log l (o = 0, lse = -inf if l = 0).
  """
  q = q_ref[...]
  q_seg, q_pos = q_seg_ref[...], q_pos_ref[...]
  q_sum = _row(q_sum_ref)

  def tile(j, carry):

    def compute(carry):
      acc, m, l = carry
      keys = pl.ds(j * bk, bk)
      k, v = k_ref[keys, :], v_ref[keys, :]
      s = jax.lax.dot_general(q, k, _NT, preferred_element_type=_F32, precision=precision) * scale
      s = jnp.where(_mask(q_seg, q_pos, kv_seg_ref[keys], kv_pos_ref[keys], causal), s, -jnp.inf)
      m_next = jnp.maximum(m, s.max(axis=1))
      m_safe = jnp.where(m_next == -jnp.inf, 0.0, m_next)
      p = jnp.exp(s - m_safe[:, None])
      alpha = jnp.exp(m - m_safe)
      pv = jax.lax.dot(p.astype(v.dtype), v, preferred_element_type=_F32, precision=precision)
      return alpha[:, None] * acc + pv, m_next, alpha * l + p.sum(axis=1)

    visible = tiles_lib.tile_visible(q_sum, _row(kv_sum_ref, j), causal)
    return jax.lax.cond(visible, compute, lambda c: c, carry)

  bq, d = q.shape
  init = (jnp.zeros((bq, d), _F32), jnp.full((bq,), -jnp.inf, _F32), jnp.zeros((bq,), _F32))
  acc, m, l = jax.lax.fori_loop(q_range_ref[0], q_range_ref[1] + 1, tile, init)
  seen = l > 0
  safe_l = jnp.where(seen, l, 1.0)
  o_ref[...] = jnp.where(seen[:, None], acc / safe_l[:, None], 0.0)
  lse_ref[...] = jnp.where(seen, m + jnp.log(safe_l), -jnp.inf)


def _dq_kernel(q_range_ref, q_sum_ref, kv_sum_ref, q_ref, do_ref, lse_ref, delta_ref, q_seg_ref, q_pos_ref, k_ref, v_ref,
               kv_seg_ref, kv_pos_ref, dq_in_ref, dq_ref, *, scale: float, causal: bool, precision, bk: int):
  """dq of one query tile over its visible key tiles, added to the incoming accumulator:
      p = exp(scale q k^T - lse) (0 where masked);  ds = p (do v^T - delta);  dq += scale ds k.
  """
  q, do = q_ref[...], do_ref[...]
  lse, delta = lse_ref[...], delta_ref[...]
  q_seg, q_pos = q_seg_ref[...], q_pos_ref[...]
  q_sum = _row(q_sum_ref)

  def tile(j, acc):

    def compute(acc):
      keys = pl.ds(j * bk, bk)
      k, v = k_ref[keys, :], v_ref[keys, :]
      s = jax.lax.dot_general(q, k, _NT, preferred_element_type=_F32, precision=precision) * scale
      mask = _mask(q_seg, q_pos, kv_seg_ref[keys], kv_pos_ref[keys], causal)
      p = jnp.where(mask, jnp.exp(s - lse[:, None]), 0.0)
      dp = jax.lax.dot_general(do, v, _NT, preferred_element_type=_F32, precision=precision)
      ds = (p * (dp - delta[:, None])).astype(k.dtype)
      return acc + jax.lax.dot(ds, k, preferred_element_type=_F32, precision=precision)

    return jax.lax.cond(tiles_lib.tile_visible(q_sum, _row(kv_sum_ref, j), causal), compute, lambda a: a, acc)

  acc = jax.lax.fori_loop(q_range_ref[0], q_range_ref[1] + 1, tile, jnp.zeros(q.shape, _F32))
  dq_ref[...] = dq_in_ref[...] + scale * acc


def _dkv_kernel(kv_range_ref, q_sum_ref, kv_sum_ref, q_ref, do_ref, lse_ref, delta_ref, q_seg_ref, q_pos_ref, k_ref,
                v_ref, kv_seg_ref, kv_pos_ref, dk_ref, dv_ref, *, scale: float, causal: bool, precision, bq: int,
                group: int):
  """dk, dv of one kv head's key tile, reduced over the G query heads of its group and the visible query tiles:
      p = exp(scale q k^T - lse) (0 where masked);  dv += p^T do;  ds = p (do v^T - delta);  dk += scale ds^T q.
  """
  k, v = k_ref[...], v_ref[...]
  kv_seg, kv_pos = kv_seg_ref[...], kv_pos_ref[...]
  kv_sum = _row(kv_sum_ref)

  def head(g, carry):

    def tile(i, carry):

      def compute(carry):
        dk, dv = carry
        rows = pl.ds(i * bq, bq)
        q, do = q_ref[rows, g, :], do_ref[rows, g, :]
        lse, delta = lse_ref[g, rows], delta_ref[g, rows]
        s = jax.lax.dot_general(q, k, _NT, preferred_element_type=_F32, precision=precision) * scale
        p = jnp.where(_mask(q_seg_ref[rows], q_pos_ref[rows], kv_seg, kv_pos, causal), jnp.exp(s - lse[:, None]), 0.0)
        dv = dv + jax.lax.dot_general(p.astype(do.dtype), do, _TN, preferred_element_type=_F32, precision=precision)
        dp = jax.lax.dot_general(do, v, _NT, preferred_element_type=_F32, precision=precision)
        ds = (p * (dp - delta[:, None])).astype(q.dtype)
        return dk + jax.lax.dot_general(ds, q, _TN, preferred_element_type=_F32, precision=precision), dv

      visible = tiles_lib.tile_visible(_row(q_sum_ref, i), kv_sum, causal)
      return jax.lax.cond(visible, compute, lambda c: c, carry)

    return jax.lax.fori_loop(kv_range_ref[0], kv_range_ref[1] + 1, tile, carry)

  zeros = jnp.zeros(k.shape, _F32)
  dk, dv = jax.lax.fori_loop(0, group, head, (zeros, zeros))
  dk_ref[...] = scale * dk
  dv_ref[...] = dv


# ----------------------------------------------------------------------------------------------------
# Wrappers


def hop_fwd(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, q_seg_BxL, kv_seg_BxL, q_pos_BxL, kv_pos_BxL, *, scale: float,
            causal: bool, block_sizes: BlockSizes, interpret: bool = False):
  """See `common.HopFwd`. `interpret=True` runs the kernels in the Pallas interpreter (CPU)."""
  tiles_lib.check_hop_shapes(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, q_seg_BxL, kv_seg_BxL, q_pos_BxL, kv_pos_BxL)
  b, lq, h, d = q_BxLxHxD.shape
  lk, kh = k_BxLxKxD.shape[1:3]
  g = h // kh
  blocks = block_sizes.resolve(*default_blocks(d))
  _check(blocks, d, interpret)
  t = tiles_lib.Tiles.fit(*blocks.fwd, lq, lk, _granule)
  plan = tiles_lib.plan(t, q_seg_BxL, kv_seg_BxL, q_pos_BxL, kv_pos_BxL, causal)
  q = common.pad_to(q_BxLxHxD, t.lq)
  k, v = common.pad_to(k_BxLxKxD, t.lk), common.pad_to(v_BxLxKxD, t.lk)
  tile_q = pl.BlockSpec((None, t.bq, None, d), lambda i, b_, h_: (b_, i, h_, 0))
  all_kv = pl.BlockSpec((None, t.lk, None, d), lambda i, b_, h_: (b_, 0, h_ // g, 0))
  tok_q = pl.BlockSpec((None, t.bq), lambda i, b_, h_: (b_, i))
  tok_kv = pl.BlockSpec((None, t.lk), lambda i, b_, h_: (b_, 0))
  o, lse = pl.pallas_call(
      functools.partial(_fwd_kernel, scale=scale, causal=causal, precision=common.dot_precision(q.dtype), bk=t.bk),
      grid=(t.nq, b, h),
      in_specs=[pl.BlockSpec((None, None, 2), lambda i, b_, h_: (b_, i, 0)),
                pl.BlockSpec((None, None, 4), lambda i, b_, h_: (b_, i, 0)),
                pl.BlockSpec((None, t.nk, 4), lambda i, b_, h_: (b_, 0, 0)),
                tile_q, all_kv, all_kv, tok_q, tok_q, tok_kv, tok_kv],
      out_specs=[tile_q, pl.BlockSpec((None, None, t.bq), lambda i, b_, h_: (b_, h_, i))],
      out_shape=[tiles_lib.out_shape(q.shape, q), tiles_lib.out_shape((b, h, t.lq), q)],
      compiler_params=plgpu.CompilerParams(num_warps=_warps(t.bq, t.bk, d), num_stages=2),
      interpret=interpret,
      name="ring_hop_fwd",
  )(plan.q_range, plan.q_sum, plan.kv_sum, q, k, v, plan.q_seg, plan.q_pos, plan.kv_seg, plan.kv_pos)
  return o[:, :lq], lse[:, :, :lq]


def hop_bwd(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, do_BxLxHxD, lse_BxHxL, delta_BxHxL, dq_BxLxHxD, q_seg_BxL, kv_seg_BxL,
            q_pos_BxL, kv_pos_BxL, *, scale: float, causal: bool, block_sizes: BlockSizes, interpret: bool = False):
  """See `common.HopBwd`: (dq_BxLxHxD + this hop's dq, dk_BxLxKxD, dv_BxLxKxD), all float32."""
  b, lq, h, d = q_BxLxHxD.shape
  tiles_lib.check_hop_shapes(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, q_seg_BxL, kv_seg_BxL, q_pos_BxL, kv_pos_BxL,
                             ("do", do_BxLxHxD, q_BxLxHxD.shape), ("lse", lse_BxHxL, (b, h, lq)),
                             ("delta", delta_BxHxL, (b, h, lq)), ("dq", dq_BxLxHxD, q_BxLxHxD.shape))
  lk, kh = k_BxLxKxD.shape[1:3]
  g = h // kh
  blocks = block_sizes.resolve(*default_blocks(d))
  _check(blocks, d, interpret)
  t = tiles_lib.Tiles.fit(*blocks.bwd, lq, lk, _granule)
  plan = tiles_lib.plan(t, q_seg_BxL, kv_seg_BxL, q_pos_BxL, kv_pos_BxL, causal)
  q, do = common.pad_to(q_BxLxHxD, t.lq), common.pad_to(do_BxLxHxD, t.lq)
  dq_in = common.pad_to(dq_BxLxHxD.astype(_F32), t.lq)
  k, v = common.pad_to(k_BxLxKxD, t.lk), common.pad_to(v_BxLxKxD, t.lk)
  stats = lambda x: common.pad_to(x.astype(_F32), t.lq, axis=2)
  lse = stats(jnp.where(lse_BxHxL == -jnp.inf, 0.0, lse_BxHxL))  # such rows are masked everywhere: p = 0
  delta = stats(delta_BxHxL)
  precision = common.dot_precision(q.dtype)

  tile_q = pl.BlockSpec((None, t.bq, None, d), lambda i, b_, h_: (b_, i, h_, 0))
  tile_stat = pl.BlockSpec((None, None, t.bq), lambda i, b_, h_: (b_, h_, i))
  all_kv = pl.BlockSpec((None, t.lk, None, d), lambda i, b_, h_: (b_, 0, h_ // g, 0))
  tok_q = pl.BlockSpec((None, t.bq), lambda i, b_, h_: (b_, i))
  tok_kv = pl.BlockSpec((None, t.lk), lambda i, b_, h_: (b_, 0))
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, scale=scale, causal=causal, precision=precision, bk=t.bk),
      grid=(t.nq, b, h),
      in_specs=[pl.BlockSpec((None, None, 2), lambda i, b_, h_: (b_, i, 0)),
                pl.BlockSpec((None, None, 4), lambda i, b_, h_: (b_, i, 0)),
                pl.BlockSpec((None, t.nk, 4), lambda i, b_, h_: (b_, 0, 0)),
                tile_q, tile_q, tile_stat, tile_stat, tok_q, tok_q, all_kv, all_kv, tok_kv, tok_kv, tile_q],
      out_specs=tile_q,
      out_shape=tiles_lib.out_shape(q.shape, q),
      input_output_aliases={13: 0},  # dq_in is updated in place
      compiler_params=plgpu.CompilerParams(num_warps=_warps(t.bq, t.bk, d), num_stages=2),
      interpret=interpret,
      name="ring_hop_dq",
  )(plan.q_range, plan.q_sum, plan.kv_sum, q, do, lse, delta, plan.q_seg, plan.q_pos, k, v, plan.kv_seg, plan.kv_pos,
    dq_in)

  group_q = pl.BlockSpec((None, t.lq, g, d), lambda j, b_, n: (b_, 0, n, 0))
  group_stat = pl.BlockSpec((None, g, t.lq), lambda j, b_, n: (b_, n, 0))
  tile_kv = pl.BlockSpec((None, t.bk, None, d), lambda j, b_, n: (b_, j, n, 0))
  all_tok_q = pl.BlockSpec((None, t.lq), lambda j, b_, n: (b_, 0))
  tok_kv = pl.BlockSpec((None, t.bk), lambda j, b_, n: (b_, j))
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, scale=scale, causal=causal, precision=precision, bq=t.bq, group=g),
      grid=(t.nk, b, kh),
      in_specs=[pl.BlockSpec((None, None, 2), lambda j, b_, n: (b_, j, 0)),
                pl.BlockSpec((None, t.nq, 4), lambda j, b_, n: (b_, 0, 0)),
                pl.BlockSpec((None, None, 4), lambda j, b_, n: (b_, j, 0)),
                group_q, group_q, group_stat, group_stat, all_tok_q, all_tok_q, tile_kv, tile_kv, tok_kv, tok_kv],
      out_specs=[tile_kv, tile_kv],
      out_shape=[tiles_lib.out_shape(k.shape, k)] * 2,
      compiler_params=plgpu.CompilerParams(num_warps=_warps(t.bq, t.bk, d), num_stages=2),
      interpret=interpret,
      name="ring_hop_dkv",
  )(plan.kv_range, plan.q_sum, plan.kv_sum, q, do, lse, delta, plan.q_seg, plan.q_pos, k, v, plan.kv_seg, plan.kv_pos)
  return dq[:, :lq], dk[:, :lk], dv[:, :lk]
