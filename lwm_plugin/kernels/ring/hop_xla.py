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


def _q_blocks(x_BxLxHxD, kv_heads: int, block: int):
  """[B, L, H, D] -> [n, B, K, G, block, D]: head-major blocks, so every einsum below is a plain
  batched matmul (batch B, K) with no transpose of the score-sized operands."""
  x = common.pad_to(x_BxLxHxD, block)
  b, length, h, d = x.shape
  return x.reshape(b, length // block, block, kv_heads, h // kv_heads, d).transpose(1, 0, 3, 4, 2, 5)


def _q_unblocks(x, length: int):
  """Inverse of `_q_blocks` (drops the padding): [n, B, K, G, block, D] -> [B, L, H, D]."""
  n, b, kh, g, block, d = x.shape
  return x.transpose(1, 0, 4, 2, 3, 5).reshape(b, n * block, kh * g, d)[:, :length]


def _kv_blocks(x_BxLxKxD, block: int):
  """[B, L, K, D] -> [n, B, K, block, D]."""
  x = common.pad_to(x_BxLxKxD, block)
  b, length, kh, d = x.shape
  return x.reshape(b, length // block, block, kh, d).transpose(1, 0, 3, 2, 4)


def _kv_unblocks(x, length: int):
  """[n, B, K, block, D] -> [B, L, K, D]."""
  n, b, kh, block, d = x.shape
  return x.transpose(1, 0, 3, 2, 4).reshape(b, n * block, kh, d)[:, :length]


def _tok_blocks(x_BxL, block: int):
  """[B, L] int -> [n, B, block] (padding: segment 0)."""
  x = common.pad_to(x_BxL, block)
  return jnp.moveaxis(x.reshape(x.shape[0], -1, block), 1, 0)


def _row_stats(x_BxHxL, kv_heads: int, block: int, fill: float):
  """[B, H, L] -> [n, B, K, G, block]; padded rows get `fill`."""
  b, h, length = x_BxHxL.shape
  x = jnp.pad(x_BxHxL, ((0, 0), (0, 0), (0, -length % block)), constant_values=fill)
  return x.reshape(b, kv_heads, h // kv_heads, -1, block).transpose(3, 0, 1, 2, 4)


def _visible_blocks(q_seg, q_pos, kv_seg, kv_pos, bq: int, bk: int, causal: bool):
  q_seg, q_pos = common.pad_to(q_seg, bq), common.pad_to(q_pos, bq)
  kv_seg, kv_pos = common.pad_to(kv_seg, bk), common.pad_to(kv_pos, bk)
  return common.visible(common.summarize(q_seg, q_pos, bq), common.summarize(kv_seg, kv_pos, bk), causal)


def hop_fwd(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, q_seg_BxL, kv_seg_BxL, q_pos_BxL, kv_pos_BxL, *, scale: float,
            causal: bool, block_sizes: BlockSizes):
  """See `common.HopFwd`."""
  b, lq, h, d = q_BxLxHxD.shape
  lk, kh = k_BxLxKxD.shape[1:3]
  g = h // kh
  bq, bk = min(block_sizes.block_q, lq), min(block_sizes.block_kv, lk)
  precision = common.dot_precision(q_BxLxHxD.dtype)
  dot = lambda spec, x, y: jnp.einsum(spec, x, y, preferred_element_type=jnp.float32, precision=precision)

  vis = _visible_blocks(q_seg_BxL, q_pos_BxL, kv_seg_BxL, kv_pos_BxL, bq, bk, causal)
  q_xs = (_q_blocks(q_BxLxHxD, kh, bq), _tok_blocks(q_seg_BxL, bq), _tok_blocks(q_pos_BxL, bq), vis)
  kv_xs = (_kv_blocks(k_BxLxKxD, bk), _kv_blocks(v_BxLxKxD, bk), _tok_blocks(kv_seg_BxL, bk),
           _tok_blocks(kv_pos_BxL, bk))

  def q_block(xs):
    q_i, seg_i, pos_i, vis_i = xs  # [B, K, G, bq, D], [B, bq], [B, bq], [nk]
    # *_like(q_i): the carry varies over the same shard_map axes as the computed values (check_vma).
    init = (jnp.full_like(q_i, -jnp.inf, jnp.float32, (b, kh, g, bq)), jnp.zeros_like(q_i, jnp.float32, (b, kh, g, bq)),
            jnp.zeros_like(q_i, jnp.float32))

    def kv_block(carry, xs):
      k_j, v_j, seg_j, pos_j, vis_ij = xs  # [B, K, bk, D] x2, [B, bk] x2, []

      def compute(carry):
        m, l, acc = carry
        mask = common.token_mask(seg_i, pos_i, seg_j, pos_j, causal)[:, None, None]  # [B, 1, 1, bq, bk]
        s = jnp.where(mask, dot("bkgqd,bksd->bkgqs", q_i, k_j) * scale, -jnp.inf)
        m_new = jnp.maximum(m, s.max(axis=-1))
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
        p = jnp.exp(s - m_safe[..., None])
        c = jnp.exp(m - m_safe)
        pv = dot("bkgqs,bksd->bkgqd", p.astype(v_j.dtype), v_j)
        return m_new, c * l + p.sum(axis=-1), c[..., None] * acc + pv

      return jax.lax.cond(vis_ij, compute, lambda c: c, carry), None

    (m, l, acc), _ = jax.lax.scan(kv_block, init, (*kv_xs, vis_i))
    seen = l > 0
    o = jnp.where(seen[..., None], acc / jnp.where(seen, l, 1.0)[..., None], 0.0)
    lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), -jnp.inf)
    return o, lse

  o, lse = jax.lax.map(q_block, q_xs)  # [nq, B, K, G, bq, D], [nq, B, K, G, bq]
  lse = lse.transpose(1, 2, 3, 0, 4).reshape(b, h, -1)[:, :, :lq]
  return _q_unblocks(o, lq), lse


def hop_bwd(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, do_BxLxHxD, lse_BxHxL, delta_BxHxL, q_seg_BxL, kv_seg_BxL, q_pos_BxL,
            kv_pos_BxL, *, scale: float, causal: bool, block_sizes: BlockSizes):
  """See `common.HopBwd`."""
  lq, h = q_BxLxHxD.shape[1:3]
  lk, kh = k_BxLxKxD.shape[1:3]
  block_q, block_kv = block_sizes.bwd
  bq, bk = min(block_q, lq), min(block_kv, lk)
  precision = common.dot_precision(q_BxLxHxD.dtype)
  dtype = q_BxLxHxD.dtype
  dot = lambda spec, x, y: jnp.einsum(spec, x, y, preferred_element_type=jnp.float32, precision=precision)

  vis = _visible_blocks(q_seg_BxL, q_pos_BxL, kv_seg_BxL, kv_pos_BxL, bq, bk, causal)
  lse = _row_stats(lse_BxHxL, kh, bq, -jnp.inf)
  lse = jnp.where(lse == -jnp.inf, 0.0, lse)  # such rows are fully masked: p = 0 below
  q_xs = (_q_blocks(q_BxLxHxD, kh, bq), _q_blocks(do_BxLxHxD, kh, bq), lse, _row_stats(delta_BxHxL, kh, bq, 0.0),
          _tok_blocks(q_seg_BxL, bq), _tok_blocks(q_pos_BxL, bq))
  kv_xs = (_kv_blocks(k_BxLxKxD, bk), _kv_blocks(v_BxLxKxD, bk), _tok_blocks(kv_seg_BxL, bk),
           _tok_blocks(kv_pos_BxL, bk), vis.T)

  def kv_block(dq, xs):
    k_j, v_j, seg_j, pos_j, vis_j = xs

    def q_block(carry, xs):
      i, (q_i, do_i, lse_i, delta_i, seg_i, pos_i), vis_ij = xs
      dk, dv, dq = carry

      def compute(dk, dv):
        mask = common.token_mask(seg_i, pos_i, seg_j, pos_j, causal)[:, None, None]
        s = jnp.where(mask, dot("bkgqd,bksd->bkgqs", q_i, k_j) * scale, 0.0)
        p = jnp.where(mask, jnp.exp(s - lse_i[..., None]), 0.0)
        dv = dv + dot("bkgqs,bkgqd->bksd", p.astype(dtype), do_i)
        ds = (p * (dot("bkgqd,bksd->bkgqs", do_i, v_j) - delta_i[..., None])).astype(dtype)
        dk = dk + scale * dot("bkgqs,bkgqd->bksd", ds, q_i)
        return dk, dv, scale * dot("bkgqs,bksd->bkgqd", ds, k_j)

      def skip(dk, dv):
        return dk, dv, jnp.zeros_like(q_i, jnp.float32)

      # The full dq stays outside the branch (a branch carrying it would copy it every block).
      dk, dv, dq_i = jax.lax.cond(vis_ij, compute, skip, dk, dv)
      return (dk, dv, dq.at[i].add(dq_i)), None

    init = (jnp.zeros_like(k_j, jnp.float32), jnp.zeros_like(k_j, jnp.float32), dq)
    (dk, dv, dq), _ = jax.lax.scan(q_block, init, (jnp.arange(q_xs[0].shape[0]), q_xs, vis_j))
    return dq, (dk, dv)

  dq0 = jnp.zeros_like(q_xs[0], jnp.float32)
  dq, (dk, dv) = jax.lax.scan(kv_block, dq0, kv_xs)
  return _q_unblocks(dq, lq), _kv_unblocks(dk, lk), _kv_unblocks(dv, lk)


HOP = common.HopImpl(name="xla", fwd=hop_fwd, bwd=hop_bwd)
