"""MaxText's train and eval steps around the LWM loss (rows in `PATCH_TABLE`).

* `train.train_step`: before MaxText's step, counts the modality totals (U_m, T_m) over the rows
  the step trains on (the whole global batch: a `jnp.sum` under jit spans hosts) and passes them
  to every microbatch under `TOTALS_KEY`; after it, unpacks the per-modality sums that
  `loss_fn` passes through `aux["z_loss"]` (see `lwm_plugin.integration.loss_fn`):
  `learning/z_loss` is a scalar again, and `lwm/text_loss`, `lwm/vision_loss`, `lwm/text_tokens`,
  `lwm/vision_tokens`, `lwm/text_examples`, `lwm/vision_examples` (example weighting) and
  `lwm/batch_fingerprint` are added to the step's metrics (metrics file and TensorBoard).
* `train.eval_step`: turns the same sums back into MaxText's scalar `evaluation/z_loss`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from lwm_plugin.integration.loss_fn import TOTALS_KEY, weights_and_modality
from lwm_plugin.losses.weighted import batch_totals, modality_losses

_FINGERPRINT_MOD = 1 << 24  # exact in float32 metrics


def trained_rows(num_rows: int, config: Any) -> jax.Array:
  """bool [B]: rows the step trains on. MaxText splits a batch into microbatches by row % GA and keeps
  the first micro_batch_size_to_train_on rows of each (all of them unless per_device_batch_size < 1)."""
  ga = max(config.gradient_accumulation_steps, 1)
  return jnp.arange(num_rows) // ga < config.micro_batch_size_to_train_on


def _fingerprint(inputs: jax.Array) -> jax.Array:
  """A checksum of the batch's tokens and their places (wrapping int32 arithmetic: order-independent, exact)."""
  place = jnp.arange(inputs.size, dtype=jnp.int32).reshape(inputs.shape) % 65521 + 1
  return (jnp.sum(inputs.astype(jnp.int32) * place) % _FINGERPRINT_MOD).astype(jnp.float32)


def _unpack(scalars: dict[str, Any], key: str) -> jax.Array:
  packed = scalars[key]
  scalars[key] = packed[0]
  return packed


def train_step(original):
  """MaxText's train step with the step's modality totals passed in and the LWM metrics added."""

  @functools.wraps(original)
  def wrapped(model, config, state_mesh_shardings, params_shardings, state, data, dropout_rng=None):
    weights, vision, weighting = weights_and_modality(data, config)
    totals = batch_totals(weights, vision, trained_rows(weights.shape[0], config))
    data = dict(data, **{TOTALS_KEY: jnp.broadcast_to(totals, (weights.shape[0], totals.shape[0]))})
    new_state, metrics = original(model, config, state_mesh_shardings, params_shardings, state, data, dropout_rng)
    scalars = metrics["scalar"]
    packed = _unpack(scalars, "learning/z_loss")
    text_loss, vision_loss = modality_losses(packed[1], packed[2], totals)
    scalars.update({"lwm/text_loss": text_loss, "lwm/vision_loss": vision_loss, "lwm/text_tokens": totals[2],
                    "lwm/vision_tokens": totals[3], "lwm/batch_fingerprint": _fingerprint(data["inputs"])})
    if weighting.weighting == "example":
      scalars.update({"lwm/text_examples": jnp.round(totals[0]), "lwm/vision_examples": jnp.round(totals[1])})
    return new_state, metrics

  return wrapped


def eval_step(original):
  """MaxText's eval step with `evaluation/z_loss` a scalar again (the LWM loss packs sums there)."""

  @functools.wraps(original)
  def wrapped(model, config, state, data, dropout_rng=None):
    metrics = original(model, config, state, data, dropout_rng)
    _unpack(metrics["scalar"], "evaluation/z_loss")
    return metrics

  return wrapped
