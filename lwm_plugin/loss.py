"""The LWM loss weighting on device: exact unpacked-padded training from packed batches.

Pure JAX on arrays, no MaxText and no config object (the MaxText adapter is
`lwm_plugin.integration.loss`). The loader (`data_loaders.packing`) emits raw per-token weights
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

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

WEIGHTINGS = ("example", "token")


@dataclasses.dataclass(frozen=True)
class LossWeighting:
  """How loss tokens are weighed (hashable: a static argument under jit)."""
  weighting: str = "example"
  text_weight: float = 0.5
  vision_weight: float = 0.5

  def __post_init__(self):
    if self.weighting not in WEIGHTINGS:
      raise ValueError(f"weighting={self.weighting!r}; expected one of {WEIGHTINGS}")
    if min(self.text_weight, self.vision_weight) < 0:
      raise ValueError(f"modality weights must be >= 0, got text={self.text_weight}, vision={self.vision_weight}")

  @classmethod
  def from_settings(cls, cfg: Any) -> LossWeighting:
    return cls(cfg.lwm_loss_weighting, float(cfg.lwm_text_loss_weight), float(cfg.lwm_vision_loss_weight))


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


def modality_coefficients(totals: jax.Array, weighting: LossWeighting) -> tuple[jax.Array, jax.Array]:
  """(coef_text, coef_vision): the final weight of a token is coef_m(t) * u_t (0 for an absent modality)."""
  u_text, u_vision = totals[0], totals[1]
  if weighting.weighting == "token":
    total = u_text + u_vision
    coef = jnp.where(total > 0, 1.0 / jnp.maximum(total, 1e-30), 0.0)
    return coef, coef
  coefs = []
  for lam, u in ((weighting.text_weight, u_text), (weighting.vision_weight, u_vision)):
    n = jnp.round(u)
    coefs.append(jnp.where(n > 0, lam / jnp.maximum(n, 1.0), 0.0))
  return coefs[0], coefs[1]


def final_weights(weights_BxS: jax.Array, vision_BxS: jax.Array, totals: jax.Array,
                  weighting: LossWeighting) -> jax.Array:
  """float32 [B, S] final per-token weights."""
  coef_text, coef_vision = modality_coefficients(totals, weighting)
  return weights_BxS.astype(jnp.float32) * jnp.where(vision_BxS.astype(bool), coef_vision, coef_text)


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
  w = final_weights(u, vision, totals, weighting)
  zero = jnp.zeros((), jnp.float32)
  return {"loss": jnp.sum(w * loss),
          "z_loss": zero if z_loss_BxS is None else jnp.sum(w * z_loss_BxS.astype(jnp.float32)),
          "text_sum": jnp.sum(jnp.where(vision, 0.0, u * loss)), "vision_sum": jnp.sum(jnp.where(vision, u * loss, 0.0))}


def modality_losses(text_sum: jax.Array, vision_sum: jax.Array, totals: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-modality losses S_m / U_m (example: mean over examples of the per-example token mean; token: token mean)."""
  return (jnp.where(totals[0] > 0, text_sum / jnp.maximum(totals[0], 1e-30), 0.0),
          jnp.where(totals[1] > 0, vision_sum / jnp.maximum(totals[1], 1e-30), 0.0))
