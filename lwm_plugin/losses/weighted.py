"""The LWM loss weighting on device: exact unpacked-padded training from packed batches.

Pure JAX on arrays, no MaxText and no config object (the MaxText adapter is
`lwm_plugin.integration.loss_fn`). The loader (`data_loaders.packing`) emits raw per-token weights
`u`: with `weighting="example"`, `u = 1 / n_im` on the loss tokens of example i and modality m,
so each (example, modality) sums to 1; with `"token"`, `u = 1` on every loss token. Here:

  U_m = sum_t u_t [modality(t) = m]         (example: N_m, examples with modality-m loss;
                                             token: T_m, modality-m loss tokens)
  example:  L = sum_m lambda_m * S_m / N_m,  S_m = sum_t u_t * loss_t [modality(t) = m]
  token:    L = (S_text + S_vision) / (T_text + T_vision)

so every loss token gets the final weight `w_t = coef_m(t) * u_t` and `L = sum_t w_t * loss_t`.

Where N is counted. `jnp.sum` inside a jitted step is a sum over the global batch (all hosts and
devices), so `batch_totals` on the step's whole batch counts N_m globally; a token permutation
(context-parallel load balancing) does not change it. With gradient accumulation each
microbatch must use the totals of the whole step's batch, passed in as `totals`; then
`sum over microbatches of weighted_sums(...)["loss"]` is exactly L.

`N_m = round(U_m)`: U_m is a float32 sum of n_im copies of 1/n_im per example; XLA's reduction
error at 1M tokens per row is below 1e-3, far from the 0.5 that rounding tolerates.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from data_loaders.weights import LossWeighting, final_weights


def batch_totals(weights_BxS: jax.Array, vision_BxS: jax.Array, rows_B: jax.Array | None = None) -> jax.Array:
  """float32 [4]: (U_text, U_vision, T_text, T_vision) over the rows of the batch (`rows_B`: those that train)."""
  if weights_BxS.shape != vision_BxS.shape or weights_BxS.ndim != 2:
    raise ValueError(f"{weights_BxS.shape=} and {vision_BxS.shape=} must be equal [B, S] shapes")
  u = weights_BxS.astype(jnp.float32)
  if rows_B is not None:
    u = jnp.where(rows_B[:, None], u, 0.0)
  vision = vision_BxS.astype(bool)
  loss = u > 0
  return jnp.stack([jnp.sum(jnp.where(vision, 0.0, u)), jnp.sum(jnp.where(vision, u, 0.0)),
                    jnp.sum(loss & ~vision).astype(jnp.float32), jnp.sum(loss & vision).astype(jnp.float32)])


def final_weights_device(weights_BxS: jax.Array, vision_BxS: jax.Array, totals: jax.Array,
                         weighting: LossWeighting) -> jax.Array:
  """float32 [B, S] final per-token weights (`data_loaders.weights.final_weights` with the step's totals)."""
  return final_weights(weights_BxS.astype(jnp.float32), vision_BxS, totals[0], totals[1], weighting, jnp)


def weighted_sums(loss_BxS: jax.Array, weights_BxS: jax.Array, vision_BxS: jax.Array, weighting: LossWeighting,
                  totals: jax.Array | None = None, z_loss_BxS: jax.Array | None = None) -> dict[str, jax.Array]:
  """The weighted loss of this (micro)batch and the per-modality raw sums.

  Returns scalars: `loss` = sum_t w_t loss_t, `z_loss` = sum_t w_t z_t (the part of `loss` that is
  z-loss, when `z_loss_BxS` is given), `text_sum` / `vision_sum` = S_m (raw-weighted sums, for the
  per-modality losses S_m / U_m). `totals` defaults to this batch's own (`batch_totals`).
  """
  if loss_BxS.shape != weights_BxS.shape:
    raise ValueError(f"{loss_BxS.shape=} must equal {weights_BxS.shape=}")
  if totals is None:
    totals = batch_totals(weights_BxS, vision_BxS)
  loss = loss_BxS.astype(jnp.float32)
  u = weights_BxS.astype(jnp.float32)
  vision = vision_BxS.astype(bool)
  w = final_weights_device(u, vision, totals, weighting)
  zero = jnp.zeros((), jnp.float32)
  return {"loss": jnp.sum(w * loss),
          "z_loss": zero if z_loss_BxS is None else jnp.sum(w * z_loss_BxS.astype(jnp.float32)),
          "text_sum": jnp.sum(jnp.where(vision, 0.0, u * loss)), "vision_sum": jnp.sum(jnp.where(vision, u * loss, 0.0))}


def modality_losses(text_sum: jax.Array, vision_sum: jax.Array, totals: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-modality losses S_m / U_m (example: mean over examples of the per-example token mean; token: token mean)."""
  return (jnp.where(totals[0] > 0, text_sum / jnp.maximum(totals[0], 1e-30), 0.0),
          jnp.where(totals[1] > 0, vision_sum / jnp.maximum(totals[1], 1e-30), 0.0))
