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

Memory and layout: blocks are sliced out of the (padded) arrays inside the loops and transposed
there to head-major [B, K, (G,) block, D], so every einsum is a plain batched matmul without a
transpose of the score-sized operands, and no transposed copy of a whole q/k/v/do array exists.
Outputs and gradients are written block by block into float32 buffers in the input layout.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lwm_plugin.kernels.ring import common
from lwm_plugin.kernels.ring.common import BlockSizes


def _slice(x, i, block: int, axis: int = 1):
  return jax.lax.dynamic_slice_in_dim(x, i * block, block, axis=axis)


def _put(buf, x, i, block: int, axis: int = 1):
  return jax.lax.dynamic_update_slice_in_dim(buf, x, i * block, axis=axis)


def _heads_major_q(x_BxbxKxGxD):
  return x_BxbxKxGxD.transpose(0, 2, 3, 1, 4)  # [B, K, G, b, D]


def _heads_major_kv(x_BxbxKxD):
  return x_BxbxKxD.transpose(0, 2, 1, 3)  # [B, K, b, D]


class _Padded:
  """One hop's operands padded to whole blocks (padding: segment 0, masked) plus the visibility table."""

  def __init__(self, q, k, v, q_seg, kv_seg, q_pos, kv_pos, bq: int, bk: int, causal: bool):
    b, self.lq, h, d = q.shape
    self.lk, self.kh = k.shape[1:3]
    self.g = h // self.kh
    self.q = common.pad_to(q, bq).reshape(b, -1, self.kh, self.g, d)  # [B, Lq', K, G, D]: a reshape, no copy
    self.k, self.v = common.pad_to(k, bk), common.pad_to(v, bk)
    self.q_seg, self.q_pos = common.pad_to(q_seg, bq), common.pad_to(q_pos, bq)
    self.kv_seg, self.kv_pos = common.pad_to(kv_seg, bk), common.pad_to(kv_pos, bk)
    self.nq, self.nk = self.q.shape[1] // bq, self.k.shape[1] // bk
    self.vis = common.visible(common.summarize(self.q_seg, self.q_pos, bq),
                              common.summarize(self.kv_seg, self.kv_pos, bk), causal)  # [nq, nk]


def hop_fwd(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, q_seg_BxL, kv_seg_BxL, q_pos_BxL, kv_pos_BxL, *, scale: float,
            causal: bool, block_sizes: BlockSizes):
  """See `common.HopFwd`."""
  b, lq, h, d = q_BxLxHxD.shape
  bq, bk = min(block_sizes.block_q, lq), min(block_sizes.block_kv, k_BxLxKxD.shape[1])
  x = _Padded(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, q_seg_BxL, kv_seg_BxL, q_pos_BxL, kv_pos_BxL, bq, bk, causal)
  kh, g = x.kh, x.g
  precision = common.dot_precision(q_BxLxHxD.dtype)
  dot = lambda spec, a, c: jnp.einsum(spec, a, c, preferred_element_type=jnp.float32, precision=precision)

  def q_block(i, bufs):
    o_buf, lse_buf = bufs
    q_i = _heads_major_q(_slice(x.q, i, bq))  # [B, K, G, bq, D]
    seg_i, pos_i = _slice(x.q_seg, i, bq), _slice(x.q_pos, i, bq)

    def kv_block(carry, j):

      def compute(carry):
        m, l, acc = carry
        k_j, v_j = _heads_major_kv(_slice(x.k, j, bk)), _heads_major_kv(_slice(x.v, j, bk))  # [B, K, bk, D]
        mask = common.token_mask(seg_i, pos_i, _slice(x.kv_seg, j, bk), _slice(x.kv_pos, j, bk), causal)
        s = jnp.where(mask[:, None, None], dot("bkgqd,bksd->bkgqs", q_i, k_j) * scale, -jnp.inf)
        m_new = jnp.maximum(m, s.max(axis=-1))
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
        p = jnp.exp(s - m_safe[..., None])
        c = jnp.exp(m - m_safe)
        pv = dot("bkgqs,bksd->bkgqd", p.astype(v_j.dtype), v_j)
        return m_new, c * l + p.sum(axis=-1), c[..., None] * acc + pv

      return jax.lax.cond(x.vis[i, j], compute, lambda c: c, carry), None

    # *_like(q_i): the carry varies over the same shard_map axes as the computed values (check_vma).
    init = (jnp.full_like(q_i, -jnp.inf, jnp.float32, (b, kh, g, bq)), jnp.zeros_like(q_i, jnp.float32, (b, kh, g, bq)),
            jnp.zeros_like(q_i, jnp.float32))
    (m, l, acc), _ = jax.lax.scan(kv_block, init, jnp.arange(x.nk))
    seen = l > 0
    o = jnp.where(seen[..., None], acc / jnp.where(seen, l, 1.0)[..., None], 0.0)
    lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), -jnp.inf)
    return _put(o_buf, o.transpose(0, 3, 1, 2, 4), i, bq), _put(lse_buf, lse, i, bq, axis=3)

  bufs = (jnp.zeros_like(x.q, jnp.float32), jnp.zeros_like(x.q, jnp.float32, (b, kh, g, x.nq * bq)))
  o, lse = jax.lax.fori_loop(0, x.nq, q_block, bufs)
  return o.reshape(b, -1, h, d)[:, :lq], lse.reshape(b, h, -1)[:, :, :lq]


def hop_bwd(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, do_BxLxHxD, lse_BxHxL, delta_BxHxL, dq_BxLxHxD, q_seg_BxL, kv_seg_BxL,
            q_pos_BxL, kv_pos_BxL, *, scale: float, causal: bool, block_sizes: BlockSizes):
  """See `common.HopBwd`."""
  b, lq, h, d = q_BxLxHxD.shape
  lk = k_BxLxKxD.shape[1]
  block_q, block_kv = block_sizes.bwd
  bq, bk = min(block_q, lq), min(block_kv, lk)
  x = _Padded(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, q_seg_BxL, kv_seg_BxL, q_pos_BxL, kv_pos_BxL, bq, bk, causal)
  kh, g = x.kh, x.g
  precision = common.dot_precision(q_BxLxHxD.dtype)
  dtype = q_BxLxHxD.dtype
  dot = lambda spec, a, c: jnp.einsum(spec, a, c, preferred_element_type=jnp.float32, precision=precision)
  do = common.pad_to(do_BxLxHxD, bq).reshape(x.q.shape)

  def stats(x_BxHxL, fill):  # [B, H, L] -> [B, K, G, Lq'] (a reshape); padded rows get `fill`
    pad = x.nq * bq - lq
    return jnp.pad(x_BxHxL, ((0, 0), (0, 0), (0, pad)), constant_values=fill).reshape(b, kh, g, -1)

  lse = stats(lse_BxHxL, -jnp.inf)
  lse = jnp.where(lse == -jnp.inf, 0.0, lse)  # such rows are fully masked: p = 0 below
  delta = stats(delta_BxHxL, 0.0)

  def kv_block(j, bufs):
    dq_buf, dk_buf, dv_buf = bufs
    k_j, v_j = _heads_major_kv(_slice(x.k, j, bk)), _heads_major_kv(_slice(x.v, j, bk))
    seg_j, pos_j = _slice(x.kv_seg, j, bk), _slice(x.kv_pos, j, bk)

    def q_block(carry, i):
      dk, dv, dq_buf = carry

      def compute(dk, dv):
        q_i, do_i = _heads_major_q(_slice(x.q, i, bq)), _heads_major_q(_slice(do, i, bq))
        lse_i, delta_i = _slice(lse, i, bq, axis=3), _slice(delta, i, bq, axis=3)
        mask = common.token_mask(_slice(x.q_seg, i, bq), _slice(x.q_pos, i, bq), seg_j, pos_j, causal)[:, None, None]
        s = jnp.where(mask, dot("bkgqd,bksd->bkgqs", q_i, k_j) * scale, 0.0)
        p = jnp.where(mask, jnp.exp(s - lse_i[..., None]), 0.0)
        dv = dv + dot("bkgqs,bkgqd->bksd", p.astype(dtype), do_i)
        ds = (p * (dot("bkgqd,bksd->bkgqs", do_i, v_j) - delta_i[..., None])).astype(dtype)
        dk = dk + scale * dot("bkgqs,bkgqd->bksd", ds, q_i)
        return dk, dv, scale * dot("bkgqs,bksd->bkgqd", ds, k_j)

      def skip(dk, dv):
        return dk, dv, jnp.zeros_like(dk, shape=(b, kh, g, bq, d))

      # The full dq stays outside the branch (a branch carrying it would copy it every block).
      dk, dv, dq_i = jax.lax.cond(x.vis[i, j], compute, skip, dk, dv)
      dq_buf = _put(dq_buf, _slice(dq_buf, i, bq) + dq_i.transpose(0, 3, 1, 2, 4), i, bq)
      return (dk, dv, dq_buf), None

    init = (jnp.zeros_like(k_j, jnp.float32), jnp.zeros_like(k_j, jnp.float32), dq_buf)
    (dk, dv, dq_buf), _ = jax.lax.scan(q_block, init, jnp.arange(x.nq))
    return dq_buf, _put(dk_buf, _heads_major_kv(dk), j, bk), _put(dv_buf, _heads_major_kv(dv), j, bk)

  dq = common.pad_to(dq_BxLxHxD, bq).reshape(x.q.shape)  # accumulated in place
  zeros = jnp.zeros_like(x.k, jnp.float32)
  dq, dk, dv = jax.lax.fori_loop(0, x.nk, kv_block, (dq, zeros, zeros))
  return dq.reshape(b, -1, h, d)[:, :lq], dk[:, :lk], dv[:, :lk]


HOP = common.HopImpl(name="xla", fwd=hop_fwd, bwd=hop_bwd)
