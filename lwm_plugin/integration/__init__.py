"""The one seam into MaxText 0.2.5: every attribute the plugin replaces or calls unpatched, and why.

Only this subpackage, `lwm_plugin.config.lwm_config` (the config class) and the apps import
MaxText (a test enforces the allow-list). Use:

  from lwm_plugin import integration
  integration.install()            # idempotent; logs the install report; raises SeamError if MaxText moved
  with integration.installed():    # scoped form for tests: originals restored on exit
    ...
  integration.run_training(argv)   # MaxText's train main; raises LoaderFailed if the LWM loader fails

Nothing is patched on import.
"""

from __future__ import annotations

from typing import Any, Sequence

from maxtext.configs import pyconfig

from lwm_plugin.config.lwm_config import LWMConfig
from lwm_plugin.integration import aot, attention, config_class, cp_reorder, data, loss_fn, metrics, steps
from lwm_plugin.integration.core import Patch, Seam, SeamError, Used
from lwm_plugin.integration.data import LoaderFailed, close_iterators

# ---------------------------------------------------------------------------------------------
# The patch table. Each row: target, expected parameters (tripwire), replacement factory,
# reason, and the MaxText change that would let us drop it.
# ---------------------------------------------------------------------------------------------
PATCH_TABLE: tuple[Patch, ...] = (
    Patch(
        target="maxtext.configs.pyconfig:initialize",
        params=("argv", "config_class", "kwargs"),
        make=config_class.config_class_default,
        reason="MaxText's trainer calls pyconfig.initialize(argv) with its own class, which rejects lwm_* keys",
        remove_when="the trainer accepts a config_class (or a plugin registry for config fields)",
    ),
    # The LWM loader and loss weighting: lwm_plugin/integration/{data,loss_fn,steps,cp_reorder}.py.
    Patch(
        target="maxtext.input_pipeline.input_pipeline_interface:make_grain_train_iterator",
        params=("config", "global_mesh", "process_indices"),
        make=data.make_grain_train_iterator,
        reason="with lwm_data_sources set, dataset_type: grain runs the LWM masked-packing loader (MaxText's Grain "
               "pipeline packs one column with binary loss masks)",
        remove_when="MaxText accepts a user pipeline function for dataset_type: grain",
    ),
    Patch(
        target="maxtext.input_pipeline.input_pipeline_interface:make_grain_eval_iterator",
        params=("config", "global_mesh", "process_indices"),
        make=data.make_grain_eval_iterator,
        reason="with lwm_eval_data_sources set, evaluation reads through the LWM loader",
        remove_when="MaxText accepts a user pipeline function for dataset_type: grain",
    ),
    Patch(
        target="maxtext.input_pipeline.input_pipeline_interface:create_data_iterator",
        params=("config", "mesh"),
        make=data.create_data_iterator,
        reason="start-up assertion: MaxText silently trains on synthetic data for some dataset types; with LWM "
               "sources anything but the LWM loader is an error",
        remove_when="MaxText rejects unknown dataset types and accepts registered pipelines",
    ),
    Patch(
        target="maxtext.common.data_loader:loader_exception_guard",
        params=("config",),
        make=data.loader_exception_guard,
        reason="MaxText turns every data-iterator exception into StopTraining (logged, exit 0); an LWM loader error "
               "(bad data: file:line) must fail the run",
        remove_when="MaxText's trainer re-raises data errors (or only stops on StopIteration)",
    ),
    Patch(
        target="maxtext.trainers.pre_train.train:loss_fn",
        params=("model", "config", "data", "dropout_rng", "params", "sparsity_state", "is_train"),
        make=loss_fn.replace_loss_fn,
        reason="per-token loss weights (targets_weights: packed training equals unpacked padded training) and "
               "LWM's per-modality softmax; MaxText's loss weighs every non-pad token 1",
        remove_when="MaxText's loss reads a per-token weight key",
    ),
    Patch(
        target="maxtext.trainers.pre_train.train:train_step",
        params=("model", "config", "state_mesh_shardings", "params_shardings", "state", "data", "dropout_rng"),
        make=steps.train_step,
        reason="the loss normalisers are counted over the step's whole batch (exact under gradient accumulation) "
               "and text/vision losses and token counts are logged as metrics",
        remove_when="MaxText's loss can see step-level batch statistics and return extra metrics",
    ),
    Patch(
        target="maxtext.trainers.pre_train.train:eval_step",
        params=("model", "config", "state", "data", "dropout_rng"),
        make=steps.eval_step,
        reason="evaluation/z_loss back to a scalar (the LWM loss passes per-modality sums through aux z_loss)",
        remove_when="MaxText's loss can return extra metrics",
    ),
    Patch(
        target="maxtext.utils.maxtext_utils:get_shaped_batch",
        params=("config", "batch_sharding", "is_eval"),
        make=data.get_shaped_batch,
        reason="the ahead-of-time batch shape must include targets_weights / targets_vision_mask, else the train "
               "step compiles twice",
        remove_when="MaxText derives the shaped batch from the data iterator",
    ),
    Patch(
        target="maxtext.common.metric_logger:MetricLogger.write_metrics",
        params=("self", "metrics", "step", "metric_type"),
        make=metrics.write_metrics,
        reason="each training step's LWM metrics (text/vision loss, token counts) as our own record: lwm-train's "
               "per-step line on stdout, the demo's progress (MaxText only logs its own keys, as text)",
        remove_when="MaxText's metric logger accepts user metric sinks",
    ),
    # Ring attention (issue 3): lwm_plugin/integration/attention.py.
    Patch(
        target="maxtext.layers.attention_op:AttentionOp.apply_attention",
        params=("self", "query", "key", "value", "decoder_segment_ids", "segment_positions", "lengths", "model_mode",
                "use_ragged_attention", "previous_chunk", "bidirectional_mask", "sinks", "indexer_mask",
                "compressed_mask", "record_max_logits", "decoder_segment_ids_kv", "pad_kv_total", "compress_ratio",
                "qk_product_einsum", "wv_product_einsum"),
        make=attention.apply_attention,
        reason="`attention: ring` runs the LWM ring attention (MaxText dispatches kernels by if/elif on the name)",
        remove_when="MaxText has an attention-kernel registry",
    ),
    Patch(
        target="maxtext.utils.max_utils:reorder_causal_load_balanced",
        params=("batch", "cp_size", "reorder_strategy", "hardware"),
        make=cp_reorder.reorder_causal_load_balanced,
        reason="context-parallel load balancing reorders a fixed key set; the LWM per-token keys (loss weights, "
               "vision mask) must move with the tokens",
        remove_when="MaxText reorders every per-token batch key (or takes the key set from the config)",
    ),
)

# ---------------------------------------------------------------------------------------------
# MaxText internals the plugin calls without replacing them: the same signature tripwire, checked
# by install() and check() before anything is patched.
# ---------------------------------------------------------------------------------------------
USED_TABLE: tuple[Used, ...] = (
    Used(
        target="maxtext.layers.attention_op:AttentionOp._logical_to_mesh_axes",
        params=("self", "logical_name"),
        reason="attention: ring shards batch, sequence and heads as the layer's active logical rules say "
               "(integration/attention.py `_ring_axes`)",
        remove_when="AttentionOp exposes the resolved PartitionSpecs of its inputs",
    ),
    Used(
        target="maxtext.layers.attention_op:AttentionOp._load_balanced_context_parallel",
        params=("self",),
        reason="attention: ring refuses a load-balanced (reordered) batch without positions, whose causality it "
               "could not know; MaxText's rule for when the batch is reordered lives only here",
        remove_when="MaxText exposes whether the batch was reordered for this mesh",
    ),
    Used(
        target="maxtext.layers.attention_op:AttentionOp.check_attention_inputs",
        params=("self", "query", "key", "value"),
        reason="attention: ring runs MaxText's own shape checks on q/k/v before its own",
        remove_when="an attention-kernel registry that validates inputs before dispatch",
    ),
    Used(
        target="maxtext.layers.attention_op:AttentionOp.normalize_attention",
        params=("self", "local_outs", "local_maxes", "local_sums"),
        reason="attention: ring's decode step returns (unnormalised output, max, sum) for each cache, the partials "
               "MaxText merges here (prefill cache + generated tokens); the layout must stay MaxText's",
        remove_when="an attention-kernel registry with a decode entry point returning the merged output",
    ),
    Used(
        target="maxtext.inference.kvcache:KVCache.kv_cache_prefill",
        params=("self", "key", "value", "decoder_segment_ids"),
        reason="ring prefill leaves the cache write to MaxText's KVCache (split over the context axis by the "
               "cache_sequence rule); CachedDecoder's prompts are one segment (id 1) per row as it expects",
        remove_when="MaxText documents its KV-cache layout as an API",
    ),
    Used(
        target="maxtext.inference.kvcache:KVCache.kv_cache_autoregressive",
        params=("self", "key", "value", "use_ragged_attention"),
        reason="the ring decode step shows a cached token iff this method marked it DECODING_ACTIVE_SEQUENCE_INDICATOR "
               "(its visibility rule, as MaxText's dot_product decode)",
        remove_when="MaxText documents its KV-cache layout as an API",
    ),
    Used(
        target="maxtext.utils.model_creation_utils:from_pretrained",
        params=("config", "mesh", "devices", "model_mode", "rng_key", "wrap_with_tunix_adapter", "tokenizer_pad_id",
                "quant_mode_str"),
        reason="the decoders (integration/inference.py) build the model and load load_parameters_path as MaxText "
               "does, with the KV caches of model_mode autoregressive",
        remove_when="MaxText exposes a public inference engine that takes a model config (maxengine needs JetStream)",
    ),
    Used(
        target="maxtext.models.models:Transformer.__call__",
        params=("self", "decoder_input_tokens", "decoder_positions", "decoder_segment_ids", "cache", "encoder_images",
                "encoder_image_masks", "encoder_videos", "encoder_video_masks", "encoder_video_grid_thw",
                "encoder_audios", "enable_dropout", "model_mode", "previous_chunk", "true_length", "slot",
                "decoder_target_tokens", "decoder_target_mask", "kv_caches", "attention_metadata",
                "forced_routed_experts", "decoder_input_embeddings"),
        reason="CachedDecoder calls the model by keyword in model_mode prefill and autoregressive, as maxengine does",
        remove_when="MaxText exposes a public inference engine that takes a model config (maxengine needs JetStream)",
    ),
    Used(
        target="maxtext.trainers.pre_train.train_compile:get_topology_mesh",
        params=("config",),
        reason="the decode --check (integration/aot_decode.py) compiles for the same TPU topology mesh as "
               "`lwm-train --check` (MaxText's train_compile)",
        remove_when="MaxText has an AOT entry point for its inference programs",
    ),
    Used(
        target="maxtext.utils.model_creation_utils:create_nnx_abstract_model",
        params=("config", "mesh", "devices", "model_mode", "rng_key", "quant_mode_str"),
        reason="the decode --check compiles an abstract model with the KV caches of model_mode autoregressive "
               "(no weights read)",
        remove_when="MaxText has an AOT entry point for its inference programs",
    ),
)

# The converters (conversion/, through lwm_plugin.checkpoints) reuse two MaxText pieces so that our
# checkpoints are exactly what MaxText loads; checked before every conversion (`check_conversion`),
# which imports no trainer module.
CONVERSION_USED_TABLE: tuple[Used, ...] = (
    Used(
        target="maxtext.checkpoint_conversion.utils.param_mapping:LLAMA31_MAXTEXT_TO_HF_PARAM_MAPPING",
        params=("config", "maxtext_config", "scan_layers"),
        reason="conversion/names.py takes MaxText's own Llama name table (MaxText param path -> HF names) "
               "instead of a copy that could drift",
        remove_when="MaxText publishes its checkpoint name mapping as a public API",
    ),
    Used(
        target="maxtext.common.checkpoint_context:build_context",
        params=("use_ocdbt", "use_zarr3", "ocdbt_target_data_file_size_bytes", "checkpoint_storage_concurrent_gb",
                "enable_continuous_checkpointing", "todelete_full_path", "todelete_subdir",
                "enable_single_replica_ckpt_restoring", "replica_axis_index", "colocated_python_checkpointing",
                "partial_load", "checkpoint_layout"),
        reason="conversion/orbax_params.py writes with MaxText's own Orbax storage options (OCDBT, zarr3, file size)",
        remove_when="MaxText exposes a function that writes a params-only checkpoint",
    ),
)

# Used only while resolving a config without training (`lwm-train --print-config`).
RESOLVE_ONLY_TABLE: tuple[Patch, ...] = (
    Patch(
        target="maxtext.utils.max_utils:maybe_initialize_jax_distributed_system",
        params=("raw_keys",),
        make=config_class.no_distributed_init,
        reason="printing a TPU pod's resolved config must not try to join the pod",
        remove_when="pyconfig separates config resolution from jax.distributed initialization",
    ),
)

# Used only by `lwm-train CONFIG.yml --check` (scoped to the compile).
CHECK_ONLY_TABLE: tuple[Patch, ...] = (
    Patch(
        target="maxtext.trainers.pre_train.train_compile:jit_and_compile",
        params=("func", "func_input_args", "func_input_kwargs", "mesh", "in_shardings", "out_shardings",
                "static_argnums", "donate_argnums", "config", "logical_axis_rules"),
        make=aot.capture_compiled,
        reason="`--check` reads the compiled train step (memory per chip, HLO); train_compile.main only prints them",
        remove_when="train_compile.main returns the compiled object",
    ),
)

_SEAM = Seam(PATCH_TABLE, used=USED_TABLE)
_CONVERSION_SEAM = Seam((), used=CONVERSION_USED_TABLE)
_RESOLVE_SEAM = Seam(RESOLVE_ONLY_TABLE)
_CHECK_SEAM = Seam(CHECK_ONLY_TABLE)


def install() -> list[str]:
  """Checks every row (patched and used), then applies the patch table (idempotent). Returns the report lines it
  logged."""
  return _SEAM.install()


def uninstall() -> None:
  """Restores MaxText's original attributes."""
  _SEAM.uninstall()


def installed():
  """Context manager: the plugin installed inside the block only (for tests)."""
  return _SEAM.installed()


def is_installed() -> bool:
  return _SEAM.is_installed()


def check() -> None:
  """Tripwires only: raises SeamError if any target moved; patches nothing."""
  _SEAM.check()
  _RESOLVE_SEAM.check()
  _CHECK_SEAM.check()
  _CONVERSION_SEAM.check()


def check_conversion() -> None:
  """The tripwires of the MaxText pieces the converters use (`CONVERSION_USED_TABLE`) only."""
  _CONVERSION_SEAM.check()


def report() -> list[str]:
  return _SEAM.report()


def resolve_config(argv: Sequence[str]) -> Any:
  """The fully resolved pydantic config for `argv` = [prog, CONFIG.yml, key=value, ...].

  Does not initialize the JAX distributed system, so a pod config resolves on any machine.
  """
  with _RESOLVE_SEAM.installed():
    return pyconfig.initialize_pydantic(list(argv), config_class=LWMConfig)


def run_training(argv: Sequence[str]) -> int:
  """MaxText's pre-training `main` under absl, as `python -m maxtext.trainers.pre_train.train ARGV`; its exit code.

  Raises `LoaderFailed` when the LWM loader fails (MaxText would log "Training stopped" and exit 0).
  Either way the loader's iterators are closed before returning (Grain worker processes and shared
  memory; left to interpreter shutdown they print warnings after the run's last line).
  """
  from absl import app  # pylint: disable=import-outside-toplevel
  from maxtext.trainers.pre_train import train  # pylint: disable=import-outside-toplevel

  try:
    app.run(train.main, argv=list(argv))
  except SystemExit as e:
    return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  finally:
    close_iterators()
  return 0


def check_train_step(argv: Sequence[str], config_file: str) -> Any:
  """`lwm-train --check`: AOT-compiles the train step of `argv` (compile_topology set) with the plugin installed.

  Returns a `lwm_plugin.integration.aot_report.CompileReport`.
  """
  config = resolve_config(argv)
  with installed():
    return aot.compile_train_step(argv, config, config_file, _CHECK_SEAM)


__all__ = ["CHECK_ONLY_TABLE", "CONVERSION_USED_TABLE", "PATCH_TABLE", "USED_TABLE", "LoaderFailed", "Patch",
           "SeamError", "Used", "check", "check_conversion", "check_train_step", "install", "installed",
           "is_installed", "report", "resolve_config", "run_training", "uninstall"]
