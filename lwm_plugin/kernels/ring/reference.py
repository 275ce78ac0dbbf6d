"""Dense float32 attention with the ring's exact semantics: the reference for tests and debugging.

Query token i attends key token j iff `segment_ids[i] == segment_ids[j] != 0` and (not causal or
`positions[j] <= positions[i]`); rows with no visible key return 0. The whole [S, S] score matrix
is materialised, so use it on small shapes only. Written independently of the blockwise code (its
own mask, plain softmax) so that it can catch mistakes there.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def reference_attention(q_BxSxHxD, k_BxSxKxD, v_BxSxKxD, *, segment_ids=None, positions=None, causal: bool = True,
                        scale: float | None = None):
  """Dense attention over global arrays; returns [B, S, H, D] in q's dtype (computed in float32)."""
  b, s, h, d = q_BxSxHxD.shape
  kh = k_BxSxKxD.shape[2]
  if h % kh:
    raise ValueError(f"query heads must be a multiple of kv heads: {q_BxSxHxD.shape=}, {k_BxSxKxD.shape=}")
  scale = d**-0.5 if scale is None else scale
  seg = jnp.ones((b, s), jnp.int32) if segment_ids is None else segment_ids
  pos = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s)) if positions is None else positions
  q = q_BxSxHxD.astype(jnp.float32)
  k = jnp.repeat(k_BxSxKxD.astype(jnp.float32), h // kh, axis=2)  # fine for a reference
  v = jnp.repeat(v_BxSxKxD.astype(jnp.float32), h // kh, axis=2)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=jax.lax.Precision.HIGHEST) * scale
  allowed = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != 0)
  if causal:
    allowed = allowed & (pos[:, None, :] <= pos[:, :, None])
  allowed = allowed[:, None]
  logits = jnp.where(allowed, logits, -jnp.inf)
  row_max = jnp.max(logits, axis=-1, keepdims=True)
  weights = jnp.where(allowed, jnp.exp(logits - jnp.where(jnp.isfinite(row_max), row_max, 0.0)), 0.0)
  total = weights.sum(axis=-1, keepdims=True)
  probs = weights / jnp.where(total > 0, total, 1.0)
  out = jnp.einsum("bhqk,bkhd->bqhd", probs, v, precision=jax.lax.Precision.HIGHEST)
  return out.astype(q_BxSxHxD.dtype)


def hop_reference(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, q_seg_BxL, kv_seg_BxL, q_pos_BxL, kv_pos_BxL, *, scale: float,
                  causal: bool):
  """One hop, densely: (o [B, Lq, H, D] float32 normalised within the hop, lse [B, H, Lq] natural log).

  The reference for the hop kernels (`common.HopFwd`); differentiable, so `jax.vjp` of its output
  is the reference for a single-hop backward. Rows that see no key: o = 0, lse = -inf.
  """
  h, kh = q_BxLxHxD.shape[2], k_BxLxKxD.shape[2]
  q = q_BxLxHxD.astype(jnp.float32)
  k = jnp.repeat(k_BxLxKxD.astype(jnp.float32), h // kh, axis=2)
  v = jnp.repeat(v_BxLxKxD.astype(jnp.float32), h // kh, axis=2)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=jax.lax.Precision.HIGHEST) * scale
  allowed = (q_seg_BxL[:, :, None] == kv_seg_BxL[:, None, :]) & (kv_seg_BxL[:, None, :] != 0)
  if causal:
    allowed = allowed & (kv_pos_BxL[:, None, :] <= q_pos_BxL[:, :, None])
  allowed = allowed[:, None]
  logits = jnp.where(allowed, logits, -jnp.inf)
  row_max = jnp.max(logits, axis=-1, keepdims=True)
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
  weights = jnp.where(allowed, jnp.exp(logits - row_max), 0.0)
  total = weights.sum(axis=-1, keepdims=True)
  seen = total > 0
  probs = weights / jnp.where(seen, total, 1.0)
  out = jnp.einsum("bhqk,bkhd->bqhd", probs, v, precision=jax.lax.Precision.HIGHEST)
  lse = jnp.where(seen, row_max + jnp.log(jnp.where(seen, total, 1.0)), -jnp.inf)[..., 0]
  return out, lse
