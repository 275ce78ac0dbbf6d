"""Decode attention over a sequence-sharded KV cache: a few new query tokens against local K/V shards.

Each device holds L = S / N cached tokens of every row (N: the size of `axis_name`). A decode step
computes, per device, the logits of the new query tokens against its local keys, then combines the
shards through their softmax statistics only:

    m = pmax(max_j logits_j)                     (the global row max, [B, T, H])
    s = psum(sum_j exp(logits_j - m))            (the global normaliser)
    o = psum(sum_j exp(logits_j - m) v_j)        (the unnormalised output, [B, T, H, D])

so the traffic per step is O(B x T x H x D), never the cache (no all-gather of K/V), and each device
reads only its L cached tokens. With `axis_name=None` the same code is the single-shard computation.

The result is returned unnormalised with its statistics, `(o, m, s)`, in MaxText's layout for
partial attentions (`AttentionOp.compute_local_attention`: o [B, T, H, D], m and s [B, T, H, 1]), so
MaxText can merge it with its other partial attention (the cache of generated tokens) exactly as it
merges its own. Keys are visible where `kv_mask` is true; there is no causal mask (every cached
token precedes the new ones). A row with no visible key returns o = 0, s = 0 and m = `EMPTY_MAX`
(finite, so that merging with another partial attention stays exact and NaN-free).

Shapes: q [B, T, H, D] (already scaled, as MaxText's query is), k and v [B, L, K, D] with H % K == 0,
kv_mask [B, L] bool. Computed in float32.
"""

from __future__ import annotations

from typing import Hashable

import jax
import jax.numpy as jnp

# The max reported for a row that sees no key: far below any real logit, yet exp(EMPTY_MAX - m) is
# an exact 0 for any real m and exp(EMPTY_MAX - EMPTY_MAX) = 1 multiplies only zeros.
EMPTY_MAX = -1e30


def _check_shapes(q_BxTxHxD, k_BxLxKxD, v_BxLxKxD, kv_mask_BxL) -> None:
  if q_BxTxHxD.ndim != 4 or k_BxLxKxD.ndim != 4 or v_BxLxKxD.shape != k_BxLxKxD.shape:
    raise ValueError(f"expected q [B, T, H, D] and k, v [B, L, K, D]: {q_BxTxHxD.shape=}, {k_BxLxKxD.shape=}, "
                     f"{v_BxLxKxD.shape=}")
  b, _, h, d = q_BxTxHxD.shape
  kb, l, kh, kd = k_BxLxKxD.shape
  if kb != b or kd != d or h % kh:
    raise ValueError(f"q and k must share batch and head dim, and H must be a multiple of K: {q_BxTxHxD.shape=}, "
                     f"{k_BxLxKxD.shape=}")
  if kv_mask_BxL.shape != (b, l):
    raise ValueError(f"kv_mask must be [B, L] = {(b, l)}: {kv_mask_BxL.shape=}")


def decode_attention(q_BxTxHxD, k_BxLxKxD, v_BxLxKxD, kv_mask_BxL, *, axis_name: Hashable | None = None):
  """Partial attention of q over the (local shard of the) cache, combined over `axis_name`.

  Returns (o [B, T, H, D] unnormalised, m [B, T, H, 1], s [B, T, H, 1]), float32: the attention
  output is o / s. Call inside a `shard_map` whose `axis_name` splits the cache's L axis (or with
  `axis_name=None` on a whole cache).
  """
  _check_shapes(q_BxTxHxD, k_BxLxKxD, v_BxLxKxD, kv_mask_BxL)
  b, t, h, d = q_BxTxHxD.shape
  kh = k_BxLxKxD.shape[2]
  # Group the query heads by the kv head they share (GQA) instead of repeating K and V.
  q_BxKxGxTxD = q_BxTxHxD.astype(jnp.float32).reshape(b, t, kh, h // kh, d).transpose(0, 2, 3, 1, 4)
  k = k_BxLxKxD.astype(jnp.float32)
  v = v_BxLxKxD.astype(jnp.float32)
  logits_BxKxGxTxL = jnp.einsum("bkgtd,blkd->bkgtl", q_BxKxGxTxD, k, precision=jax.lax.Precision.HIGHEST)
  visible = kv_mask_BxL[:, None, None, None, :]
  local_max = jnp.max(jnp.where(visible, logits_BxKxGxTxL, -jnp.inf), axis=-1)
  row_max = local_max if axis_name is None else jax.lax.pmax(local_max, axis_name)
  row_max = jnp.where(jnp.isneginf(row_max), EMPTY_MAX, row_max)
  weights = jnp.where(visible, jnp.exp(logits_BxKxGxTxL - row_max[..., None]), 0.0)
  total = weights.sum(axis=-1)
  out_BxKxGxTxD = jnp.einsum("bkgtl,blkd->bkgtd", weights, v, precision=jax.lax.Precision.HIGHEST)
  if axis_name is not None:
    total, out_BxKxGxTxD = jax.lax.psum((total, out_BxKxGxTxD), axis_name)
  to_bthx = lambda x: x.transpose(0, 3, 1, 2, *range(4, x.ndim)).reshape(b, t, h, *x.shape[4:])
  return to_bthx(out_BxKxGxTxD), to_bthx(row_max)[..., None], to_bthx(total)[..., None]


def decode_attention_reference(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, kv_mask_BxS):
  """Dense float32 softmax attention of q over the whole cache, normalised ([B, T, H, D]; 0 where nothing is
  visible). Written without the kernel's grouping or statistics, for tests."""
  _check_shapes(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, kv_mask_BxS)
  h, kh = q_BxTxHxD.shape[2], k_BxSxKxD.shape[2]
  k = jnp.repeat(k_BxSxKxD.astype(jnp.float32), h // kh, axis=2)
  v = jnp.repeat(v_BxSxKxD.astype(jnp.float32), h // kh, axis=2)
  logits = jnp.einsum("bthd,bshd->bhts", q_BxTxHxD.astype(jnp.float32), k, precision=jax.lax.Precision.HIGHEST)
  visible = kv_mask_BxS[:, None, None, :]
  probs = jax.nn.softmax(jnp.where(visible, logits, -jnp.inf), axis=-1, where=visible)
  probs = jnp.where(visible, probs, 0.0)
  return jnp.einsum("bhts,bshd->bthd", probs, v, precision=jax.lax.Precision.HIGHEST)
