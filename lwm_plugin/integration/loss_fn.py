"""MaxText's `loss_fn` with LWM's per-token loss weights (a row in `PATCH_TABLE`).

The standard causal-LM path of MaxText's `loss_fn` (forward, cross entropy or LWM's per-modality
softmax, z-loss), weighted by `targets_weights` through `lwm_plugin.losses.weighted` instead of
MaxText's binary `targets_segmentation != 0`. It keeps the aux contract the train and eval steps
read. MaxText features it does not implement raise `UnsupportedFeatureError` at trace time (before
the first step) instead of being dropped: block diffusion, multi-token prediction, the
sparse-attention indexer, vocabulary tiling, MoE (load-balance loss, routing biases, overflow
handling), multimodal encoders, DiLoCo, Tunix gradient accumulation.

The loss contract. MaxText's step reads `aux["xent_sum"]` and `aux["total_weights"]` and, under
manual gradient accumulation, differentiates `xent_sum` of each microbatch and divides the
accumulated gradient by the summed `total_weights`. Here `total_weights` = T, this microbatch's
loss tokens; without accumulation `loss` = L (the weighted loss) and `xent_sum` = L * T, so
MaxText's `learning/lm_loss` (xent_sum / total_weights) is L; with accumulation `xent_sum` =
T_step * L_micro, where L_micro uses the whole step's totals (`TOTALS_KEY`, put there by
`lwm_plugin.integration.steps.train_step`), so the accumulated objective `sum xent_sum / sum T` is
exactly the loss of the whole step (tested against GA=1).

The metrics channel. MaxText's train step forwards `aux["z_loss"]` unchanged into its metrics
(and sums aux leaves over microbatches). `loss_fn` puts three additive sums there, (z-loss part
of L, S_text, S_vision); the step wrappers (`lwm_plugin.integration.steps`) unpack them before
anything reads them.

A batch without `targets_weights` (MaxText's own input pipelines, synthetic data) gets weights
`targets_segmentation != 0`, all text, token weighting: exactly MaxText's own loss (logged once).
With `lwm_data_sources` set such a batch is an error: the LWM loader is not feeding the step.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from maxtext.utils import max_utils, sharding

from data_loaders.batch import LWM_KEYS, VISION_MASK, WEIGHTS
from data_loaders.weights import LossWeighting
from lwm_plugin.config.settings import model_vocab
from lwm_plugin.losses.modality_softmax import per_modality_cross_entropy
from lwm_plugin.losses.weighted import batch_totals, weighted_sums

logger = logging.getLogger("lwm_plugin.integration")

TOTALS_KEY = "lwm_batch_totals"  # [B, 4] (U_text, U_vision, T_text, T_vision) of the step's batch, every row alike
_logged: set[str] = set()


class UnsupportedFeatureError(ValueError):
  """A MaxText feature the LWM loss does not implement."""


def _unsupported(config: Any) -> list[str]:
  checks = [
      (getattr(config, "training_objective", "causal_lm") != "causal_lm"
       or getattr(config, "attention_type", "global") == "block_diffusion", "block diffusion (training_objective)"),
      (config.mtp_num_layers > 0 or config.mtp_eval_target_module > 0, "multi-token prediction (mtp_num_layers)"),
      (config.use_indexer, "the sparse-attention indexer loss (use_indexer)"),
      (config.num_vocab_tiling > 1, "vocabulary tiling (num_vocab_tiling)"),
      (config.num_experts > 1, "mixture of experts: load-balance loss, routing biases, overflow (num_experts)"),
      (config.use_multimodal, "multimodal encoders (use_multimodal; LWM uses VQGAN tokens instead)"),
      (config.enable_diloco, "DiLoCo (enable_diloco)"),
      (config.gradient_accumulation_steps > 1 and config.use_tunix_gradient_accumulation,
       "Tunix gradient accumulation (use_tunix_gradient_accumulation; MaxText's own accumulation is exact)"),
  ]
  return [what for bad, what in checks if bad]


def check_supported(config: Any) -> None:
  """Raises UnsupportedFeatureError naming every enabled MaxText feature the LWM loss does not implement."""
  bad = _unsupported(config)
  if bad:
    raise UnsupportedFeatureError("the LWM loss (lwm_plugin.integration.loss_fn) does not implement: " + "; ".join(bad)
                                  + ". Disable them, or train without the LWM plugin.")


def _log_once(key: str, message: str) -> None:
  if key not in _logged:
    _logged.add(key)
    logger.info(message)


def weights_and_modality(data: dict[str, jax.Array], config: Any) -> tuple[jax.Array, jax.Array, LossWeighting]:
  """Raw weights u [B, S], vision mask [B, S] and the weighting for `data` (see the module docstring)."""
  present = [k for k in LWM_KEYS if k in data]
  if len(present) == len(LWM_KEYS):
    return data[WEIGHTS], data[VISION_MASK], LossWeighting.from_settings(config)
  if present:
    raise ValueError(f"the batch has {present} but not {[k for k in LWM_KEYS if k not in data]}")
  if config.lwm_data_sources:
    raise ValueError("lwm_data_sources is set but the batch has no targets_weights: the LWM loader is not feeding "
                     f"the train step (dataset_type={config.dataset_type!r}; it must be 'grain')")
  _log_once("no_weights", "LWM loss: the batch has no targets_weights (MaxText's own input pipeline): token mean over "
            "targets_segmentation != 0, as MaxText")
  mask = data["targets_segmentation"] != 0
  return mask.astype(jnp.float32), jnp.zeros_like(mask), LossWeighting("token")


def _cross_entropy(logits: jax.Array, targets: jax.Array, config: Any) -> tuple[jax.Array, jax.Array]:
  if config.lwm_per_modality_softmax:
    vocab, text_only = model_vocab(config)
    if text_only:
      raise ValueError("lwm_per_modality_softmax needs the multimodal vocabulary (vocab_size "
                       f"{vocab.size}); this model has only the {vocab.text_size} text ids")
    return per_modality_cross_entropy(logits, targets, vocab.layout, config.z_loss_multiplier)
  one_hot = jax.nn.one_hot(targets, config.vocab_size)
  return max_utils.cross_entropy_with_logits(logits, one_hot, z_loss=config.z_loss_multiplier)


def loss_fn(model, config, data, dropout_rng, params, sparsity_state=None, is_train=True):
  """MaxText's `loss_fn` contract (NNX model), with per-token weights; see the module docstring."""
  del dropout_rng, params, sparsity_state
  check_supported(config)
  rows = config.micro_batch_size_to_train_on if is_train else config.micro_batch_size_to_eval_on
  data = {k: v[:rows, :] for k, v in data.items()}  # MaxText's decimation (per_device_batch_size < 1)
  routing = {"forced_routed_experts": data["forced_routed_experts"]} if "forced_routed_experts" in data else {}
  logits = model(decoder_input_tokens=data["inputs"], decoder_positions=data["inputs_position"],
                 decoder_segment_ids=data["inputs_segmentation"], enable_dropout=config.enable_dropout if is_train
                 else False, decoder_target_tokens=data["targets"], decoder_target_mask=data["targets_segmentation"],
                 **routing)
  intermediate_outputs = nnx.pop(model, nnx.Intermediate).to_pure_dict()

  xent, z_loss = _cross_entropy(logits, data["targets"], config)
  axes = ("activation_embed_and_logits_batch", "activation_length")
  xent, z_loss = (sharding.maybe_shard_with_logical(x, axes, model.mesh, config.shard_mode,
                                                    debug_sharding=config.debug_sharding) for x in (xent, z_loss))
  weights, vision, weighting = weights_and_modality(data, config)
  totals = data[TOTALS_KEY][0] if TOTALS_KEY in data else batch_totals(weights, vision)
  sums = weighted_sums(xent, weights, vision, weighting, totals, z_loss)
  tokens = jnp.sum(weights > 0).astype(jnp.float32)
  if is_train and config.gradient_accumulation_steps > 1:
    if TOTALS_KEY not in data:
      raise ValueError("gradient accumulation needs the totals of the whole step (lwm_plugin.integration.steps."
                       "train_step); is the seam installed?")
    loss = xent_sum = sums["loss"] * (totals[2] + totals[3])
  else:
    loss = sums["loss"]
    xent_sum = loss * tokens
  aux = {
      "intermediate_outputs": intermediate_outputs,
      "xent_sum": xent_sum,
      "z_loss": jnp.stack([sums["z_loss"], sums["text_sum"], sums["vision_sum"]]),  # unpacked by the step wrappers
      "total_weights": tokens,
      "moe_lb_loss": 0.0,
      "indexer_loss": 0.0,
      "moe_bias_updates": None,
      "mtp_moe_bias_updates": None,
      "mtp_loss": 0.0,
      "batch_stats": intermediate_outputs.get("batch_stats"),
      "has_moe_overflow": jnp.bool_(False),
  }
  return loss, aux


def replace_loss_fn(original):
  """The `PATCH_TABLE` factory: `loss_fn` replaces MaxText's outright (it never delegates)."""
  del original
  return loss_fn
