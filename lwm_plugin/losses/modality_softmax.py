"""Exact per-modality softmax: one merged output head that equals LWM's two heads.

LWM has a text head (`lm_head`, text_size logits) and a vision head (`vision_head`, 8448 logits).
A text target's log-probability is normalised over the text logits only, a vision target's over
the vision logits only (`lwm/train.py`: `0.5 * (text CE + vision CE)`, each with its own head).
With the merged vocabulary of `data_loaders.vocab` the two heads are one partitioned head
`[text | vision | markers | padding]`, and the same loss is the softmax over the target's own
partition. Padding rows belong to neither and never get probability.

Pure JAX functions on `VocabLayout` (hashable, so a static argument under `jit`); no config, no
MaxText. The flag `lwm_per_modality_softmax` (`lwm_plugin.config.settings`) selects them in the loss:
  * `per_modality_cross_entropy(logits_BxSxV, targets_BxS, layout, z_loss)` is a drop-in
    replacement of MaxText's `max_utils.cross_entropy_with_logits(logits, one_hot(targets), z_loss)`:
    it returns `(loss_BxS, z_loss_BxS)` with the same meaning (z is the partition's normaliser).
  * `mask_logits_by_target_modality` instead masks the logits so MaxText's own cross entropy
    (or anything else) computes the per-modality softmax unchanged; masked columns get
    `0.5 * finfo(dtype).min`, whose exp is exactly 0, and a finite value keeps `0 * logit` finite.
Columns are classified by comparisons against an iota, so nothing of size V is materialised as a
constant and vocabulary-sharded logits stay sharded.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from data_loaders.vocab import VocabLayout


def _check(logits_BxSxV: jax.Array, targets_BxS: jax.Array, layout: VocabLayout) -> None:
  if logits_BxSxV.shape[-1] != layout.size:
    raise ValueError(f"{logits_BxSxV.shape=}: the last axis must be the vocabulary size {layout.size}")
  if targets_BxS.shape != logits_BxSxV.shape[:-1]:
    raise ValueError(f"{targets_BxS.shape=} must equal {logits_BxSxV.shape[:-1]=}")


def target_is_vision(targets_BxS: jax.Array, layout: VocabLayout) -> jax.Array:
  """True where the target id is in the vision block (codes, eof, eov, reserved rows)."""
  return (targets_BxS >= layout.vision_start) & (targets_BxS < layout.vision_end)


def _columns(layout: VocabLayout, ndim: int) -> jax.Array:
  """Column ids, shaped [1, ..., 1, V] to broadcast against an array of rank `ndim` (no rank promotion)."""
  return jnp.arange(layout.size).reshape((1,) * (ndim - 1) + (layout.size,))


def column_partitions(layout: VocabLayout, ndim: int = 1) -> tuple[jax.Array, jax.Array]:
  """(is_text, is_vision) per column, shaped [1, ..., 1, V] of rank `ndim`; padding rows are in neither."""
  col_V = _columns(layout, ndim)
  is_vision_V = (col_V >= layout.vision_start) & (col_V < layout.vision_end)
  is_text_V = col_V < layout.text_size
  for marker in layout.marker_ids:
    is_text_V = is_text_V | (col_V == marker)
  return is_text_V, is_vision_V


def modality_logits_mask(targets_BxS: jax.Array, layout: VocabLayout) -> jax.Array:
  """bool [B, S, V]: True on the columns of the target's own partition."""
  is_text_V, is_vision_V = column_partitions(layout, targets_BxS.ndim + 1)
  vis_BxSx1 = target_is_vision(targets_BxS, layout)[..., None]
  return jnp.where(vis_BxSx1, is_vision_V, is_text_V)


def mask_value(dtype: jnp.dtype) -> float:
  """A finite logit whose softmax weight is exactly 0 next to any real logit."""
  return 0.5 * float(jnp.finfo(dtype).min)


def mask_logits_by_target_modality(logits_BxSxV: jax.Array, targets_BxS: jax.Array,
                                   layout: VocabLayout) -> jax.Array:
  """Logits with every column outside the target's partition set to `mask_value` (same dtype)."""
  _check(logits_BxSxV, targets_BxS, layout)
  allowed = modality_logits_mask(targets_BxS, layout)
  return jnp.where(allowed, logits_BxSxV, jnp.asarray(mask_value(logits_BxSxV.dtype), logits_BxSxV.dtype))


def per_modality_log_softmax(logits_BxSxV: jax.Array, targets_BxS: jax.Array, layout: VocabLayout) -> jax.Array:
  """float32 log-probabilities over the target's partition; -inf on the other columns."""
  _check(logits_BxSxV, targets_BxS, layout)
  allowed = modality_logits_mask(targets_BxS, layout)
  masked = jnp.where(allowed, logits_BxSxV.astype(jnp.float32), -jnp.inf)
  return jax.nn.log_softmax(masked, axis=-1)


def per_modality_cross_entropy(logits_BxSxV: jax.Array, targets_BxS: jax.Array, layout: VocabLayout,
                               z_loss: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """Per-token `-log p(target)` under the per-modality softmax, in float32, plus the z-loss term.

  Returns `(loss_BxS, z_loss_BxS)` like MaxText's `cross_entropy_with_logits`: `loss` includes
  `z_loss * log_z**2`, where `log_z` is the log-normaliser of the target's partition.
  """
  _check(logits_BxSxV, targets_BxS, layout)
  logits = logits_BxSxV.astype(jnp.float32)
  is_text_V, is_vision_V = column_partitions(layout, logits.ndim)
  lse_text_BxS = jax.nn.logsumexp(jnp.where(is_text_V, logits, -jnp.inf), axis=-1)
  lse_vision_BxS = jax.nn.logsumexp(jnp.where(is_vision_V, logits, -jnp.inf), axis=-1)
  log_z_BxS = jnp.where(target_is_vision(targets_BxS, layout), lse_vision_BxS, lse_text_BxS)
  hit_BxSxV = _columns(layout, logits.ndim) == targets_BxS[..., None]
  target_logit_BxS = jnp.sum(jnp.where(hit_BxSxV, logits, 0.0), axis=-1)
  total_z_loss_BxS = z_loss * jnp.square(log_z_BxS)
  return log_z_BxS - target_logit_BxS + total_z_loss_BxS, total_z_loss_BxS
