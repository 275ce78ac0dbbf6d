"""The one-screen summary `lwm-train` prints before training: what will run, on what, and where.

MaxText's own dump of every resolved key (~890 `Config param` lines) is turned off on the
terminal; the same content is in the run directory's `lwm_config.json` (`lwm_plugin.run_dir`),
and the summary ends with its path. No MaxText import: reads attributes of the resolved config.
"""

from __future__ import annotations

from typing import Any


def _mesh(config: Any) -> str:
  """The mesh axes not of size 1 (-1: whatever the devices leave)."""
  parts = [f"{key.removesuffix('_parallelism')} {value}" for key in sorted(type(config).model_fields)
           if key.startswith(("ici_", "dcn_")) and key.endswith("_parallelism")
           and isinstance(value := getattr(config, key), int) and value != 1]
  return ", ".join(parts) or "every axis 1"


def _data(config: Any) -> list[str]:
  if not config.lwm_data_sources:
    return [f"dataset_type {_name(config.dataset_type)} (not the LWM loader)"]
  lines = [f"LWM loader ({config.grain_worker_count} Grain workers):"]
  for s in config.lwm_data_sources:
    lines.append(f"  {s.name}: {', '.join(s.files)} ({s.format}, weight {s.weight:g}, group {s.group})")
  return lines


def _name(value: Any) -> Any:
  """An enum's value (`float32`, not `DType.FLOAT32`)."""
  return getattr(value, "value", value)


def summary_lines(config: Any, config_file: str, devices: int, resolved_config: str) -> list[str]:
  """The summary, one line per subject; `resolved_config` is where the full config was written."""
  rows = config.global_batch_size_to_train_on
  init = config.load_parameters_path or ("resume from the run's checkpoints, else scratch"
                                         if config.enable_checkpointing else "scratch")
  checkpoints = (f"every {config.checkpoint_period} steps" if config.enable_checkpointing else "off")
  head = (f"{config.base_num_decoder_layers} layers, width {config.base_emb_dim}, {config.base_num_query_heads} "
          f"query / {config.base_num_kv_heads} kv heads x {config.head_dim}, mlp {config.base_mlp_dim}, "
          f"vocab {config.vocab_size}, {_name(config.dtype)}")
  lines = [
      f"config      {config_file}",
      f"stage       {config.lwm_stage or '(unnamed)'}",
      f"model       {config.model_name}: {head}",
      f"length      {config.max_target_length} tokens, RoPE theta {config.rope_max_timescale:,}",
      f"batch       {rows} rows x {config.max_target_length} tokens per step ({config.per_device_batch_size:g} per "
      f"device x {devices} devices, gradient accumulation {config.gradient_accumulation_steps})",
      f"steps       {config.steps}, learning rate {config.learning_rate:g}, checkpoints {checkpoints}",
      f"mesh        {_mesh(config)}; attention {config.attention}",
      *[f"data        {line}" if i == 0 else f"            {line}" for i, line in enumerate(_data(config))],
      f"init        {init}",
      f"output      {config.base_output_directory}/{config.run_name}",
      f"full config {resolved_config} (MaxText's log: stderr)",
  ]
  return lines
