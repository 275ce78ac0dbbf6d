"""Pure-JAX (XLA) ring hop: blockwise attention of the local queries against one visiting K/V shard.

Runs on every backend and is the exactness baseline for the Pallas hops (same `HopImpl` interface,
see `common.py`). Inside a hop the queries are cut into `block_q` rows and the keys into `block_kv`
columns; blocks that the mask summaries prove empty are skipped with `lax.cond` (a real branch on
CPU/GPU/TPU, since nothing here is vmapped).

Forward, per query block (FlashAttention-2 online softmax, all statistics float32):
    for each key block j:  s = scale * q k_j^T, masked to -inf
                           m' = max(m, rowmax s);  p = exp(s - m');  c = exp(m - m')
                           l = c l + rowsum p;     acc = c acc + p v_j;  m = m'
    o = acc / l, lse = m + log l;  rows that saw nothing: o = 0, lse = -inf.
Backward, per key block (outer) and query block (inner), with the final lse and delta = rowsum(do*o):
    p = exp(s - lse) (0 where masked);  dv += p^T do;  ds = p * (do v^T - delta)
    dq += scale ds k;  dk += scale ds^T q.

GQA: queries are viewed as [B, L, K, G, D] with G = H / K, so repeated K/V heads never exist.
p and ds are cast to the input dtype before their matmuls (as flash kernels do); every accumulation
is float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lwm_plugin.kernels.ring import common
from lwm_plugin.kernels.ring.common import BlockSizes


def _blocks(x, block: int):
  """[B, L, ...] -> [n, B, block, ...] (L a multiple of block)."""
  b, length = x.shape[:2]
  return jnp.moveaxis(x.reshape(b, length // block, block, *x.shape[2:]), 1, 0)


def _unblocks(x):
  """[n, B, block, ...] -> [B, n * block, ...]."""
  x = jnp.moveaxis(x, 0, 1)
  return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])


def _grouped(q_BxLxHxD, num_kv_heads: int):
  b, length, h, d = q_BxLxHxD.shape
  return q_BxLxHxD.reshape(b, length, num_kv_heads, h // num_kv_heads, d)


def _clip(block: int, length: int) -> int:
  return min(block, length)


def hop_fwd(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, q_seg_BxL, kv_seg_BxL, q_pos_BxL, kv_pos_BxL, *, scale: float,
            causal: bool, block_sizes: BlockSizes):
  """See `common.HopFwd`."""
  b, lq, h, d = q_BxLxHxD.shape
  lk, kh = k_BxLxKxD.shape[1:3]
  bq, bk = _clip(block_sizes.block_q, lq), _clip(block_sizes.block_kv, lk)
  precision = common.dot_precision(q_BxLxHxD.dtype)

  q = _blocks(_grouped(common.pad_to(q_BxLxHxD, bq), kh), bq)  # [nq, B, bq, K, G, D]
  q_seg, q_pos = common.pad_to(q_seg_BxL, bq), common.pad_to(q_pos_BxL, bq)
  kv_seg, kv_pos = common.pad_to(kv_seg_BxL, bk), common.pad_to(kv_pos_BxL, bk)
  k = _blocks(common.pad_to(k_BxLxKxD, bk), bk)  # [nk, B, bk, K, D]
  v = _blocks(common.pad_to(v_BxLxKxD, bk), bk)
  vis = common.visible(common.summarize(q_seg, q_pos, bq), common.summarize(kv_seg, kv_pos, bk), causal)
  kv_xs = (k, v, _blocks(kv_seg, bk), _blocks(kv_pos, bk))

  def q_block(xs):
    q_i, seg_i, pos_i, vis_i = xs
    g = q_i.shape[3]
    # *_like(q_i): the carry varies over the same shard_map axes as the computed values (check_vma).
    init = (jnp.full_like(q_i, -jnp.inf, jnp.float32, (b, kh, g, bq)), jnp.zeros_like(q_i, jnp.float32, (b, kh, g, bq)),
            jnp.zeros_like(q_i, jnp.float32, (b, kh, g, bq, d)))

    def kv_block(carry, xs):
      k_j, v_j, seg_j, pos_j, vis_ij = xs

      def compute(carry):
        m, l, acc = carry
        s = jnp.einsum("bqkgd,bskd->bkgqs", q_i, k_j, preferred_element_type=jnp.float32, precision=precision)
        mask = common.token_mask(seg_i, pos_i, seg_j, pos_j, causal)[:, None, None]
        s = jnp.where(mask, s * scale, -jnp.inf)
        m_new = jnp.maximum(m, s.max(axis=-1))
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
        p = jnp.exp(s - m_safe[..., None])
        c = jnp.exp(m - m_safe)
        pv = jnp.einsum("bkgqs,bskd->bkgqd", p.astype(v_j.dtype), v_j, preferred_element_type=jnp.float32,
                        precision=precision)
        return m_new, c * l + p.sum(axis=-1), c[..., None] * acc + pv

      return jax.lax.cond(vis_ij, compute, lambda c: c, carry), None

    (m, l, acc), _ = jax.lax.scan(kv_block, init, (*kv_xs, vis_i))
    seen = l > 0
    o = jnp.where(seen[..., None], acc / jnp.where(seen, l, 1.0)[..., None], 0.0)
    lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), -jnp.inf)
    return jnp.moveaxis(o, 3, 1), lse  # [B, bq, K, G, D], [B, K, G, bq]

  o, lse = jax.lax.map(q_block, (q, _blocks(q_seg, bq), _blocks(q_pos, bq), vis))
  o = _unblocks(o).reshape(b, -1, h, d)[:, :lq]
  lse = jnp.moveaxis(lse, 0, 3).reshape(b, h, -1)[:, :, :lq]  # [K, G, nq, bq] -> [H, Lq]
  return o, lse


def hop_bwd(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, do_BxLxHxD, lse_BxHxL, delta_BxHxL, q_seg_BxL, kv_seg_BxL, q_pos_BxL,
            kv_pos_BxL, *, scale: float, causal: bool, block_sizes: BlockSizes):
  """See `common.HopBwd`."""
  b, lq, h, d = q_BxLxHxD.shape
  lk, kh = k_BxLxKxD.shape[1:3]
  g = h // kh
  block_q, block_kv = block_sizes.bwd
  bq, bk = _clip(block_q, lq), _clip(block_kv, lk)
  precision = common.dot_precision(q_BxLxHxD.dtype)
  dtype = q_BxLxHxD.dtype

  def q_side(x):
    return _blocks(_grouped(common.pad_to(x, bq), kh), bq)  # [nq, B, bq, K, G, D]

  def stats(x_BxHxL):  # [B, H, L] -> [nq, B, K, G, bq]; padded rows get lse = -inf
    x = common.pad_to(x_BxHxL, bq, axis=2).reshape(b, kh, g, -1, bq)
    return jnp.moveaxis(x, 3, 0)

  q, do = q_side(q_BxLxHxD), q_side(do_BxLxHxD)
  lse_pad = jnp.pad(lse_BxHxL, ((0, 0), (0, 0), (0, -lq % bq)), constant_values=-jnp.inf)
  lse = stats(lse_pad)
  lse = jnp.where(lse == -jnp.inf, 0.0, lse)  # such rows are fully masked: p = 0 below
  delta = stats(delta_BxHxL)
  q_seg, q_pos = common.pad_to(q_seg_BxL, bq), common.pad_to(q_pos_BxL, bq)
  kv_seg, kv_pos = common.pad_to(kv_seg_BxL, bk), common.pad_to(kv_pos_BxL, bk)
  k = _blocks(common.pad_to(k_BxLxKxD, bk), bk)
  v = _blocks(common.pad_to(v_BxLxKxD, bk), bk)
  vis = common.visible(common.summarize(q_seg, q_pos, bq), common.summarize(kv_seg, kv_pos, bk), causal)
  q_xs = (q, do, lse, delta, _blocks(q_seg, bq), _blocks(q_pos, bq))

  def kv_block(dq, xs):
    k_j, v_j, seg_j, pos_j, vis_j = xs
    init = (jnp.zeros_like(k_j, jnp.float32), jnp.zeros_like(k_j, jnp.float32), dq)

    def q_block(carry, xs):
      i, (q_i, do_i, lse_i, delta_i, seg_i, pos_i), vis_ij = xs

      def compute(carry):
        dk, dv, dq = carry
        s = jnp.einsum("bqkgd,bskd->bkgqs", q_i, k_j, preferred_element_type=jnp.float32, precision=precision)
        mask = common.token_mask(seg_i, pos_i, seg_j, pos_j, causal)[:, None, None]
        p = jnp.where(mask, jnp.exp(jnp.where(mask, s * scale, 0.0) - lse_i[..., None]), 0.0)
        dv = dv + jnp.einsum("bkgqs,bqkgd->bskd", p.astype(dtype), do_i, preferred_element_type=jnp.float32,
                             precision=precision)
        dp = jnp.einsum("bqkgd,bskd->bkgqs", do_i, v_j, preferred_element_type=jnp.float32, precision=precision)
        ds = (p * (dp - delta_i[..., None])).astype(dtype)
        dq_i = jnp.einsum("bkgqs,bskd->bqkgd", ds, k_j, preferred_element_type=jnp.float32, precision=precision)
        dk = dk + scale * jnp.einsum("bkgqs,bqkgd->bskd", ds, q_i, preferred_element_type=jnp.float32,
                                     precision=precision)
        return dk, dv, dq.at[i].add(scale * dq_i)

      return jax.lax.cond(vis_ij, compute, lambda c: c, carry), None

    nq = q.shape[0]
    (dk, dv, dq), _ = jax.lax.scan(q_block, init, (jnp.arange(nq), q_xs, vis_j))
    return dq, (dk, dv)

  dq0 = jnp.zeros_like(q, jnp.float32)
  dq, (dk, dv) = jax.lax.scan(kv_block, dq0, (k, v, _blocks(kv_seg, bk), _blocks(kv_pos, bk), vis.T))
  dq = _unblocks(dq).reshape(b, -1, h, d)[:, :lq]
  return dq, _unblocks(dk)[:, :lk], _unblocks(dv)[:, :lk]


HOP = common.HopImpl(name="xla", fwd=hop_fwd, bwd=hop_bwd)
