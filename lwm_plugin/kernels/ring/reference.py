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
