"""The LWM config class (MaxText's config + `LWMSettings`) and early, precise key checks.

MaxText rejects unknown keys, but its message lists every valid key (hundreds) and does not say
which file the bad key came from. `check_keys` runs first and names the YAML file and line (or
the command-line argument) and the closest valid keys. MaxText's own check still runs after it.
`LWMConfig` also refuses `attention: ring` combinations that cannot work, naming the key to change,
and splits the KV cache's sequence axis over the context axis for it (the logical axis
`cache_sequence`, unsharded in MaxText's defaults), so ring prefill leaves each device S / N cached
tokens and the decode step attends them in place (`lwm_plugin.integration.attention`).
"""

from __future__ import annotations

import difflib
import os
from typing import Any, Iterable

from maxtext.configs import types
from maxtext.utils.globals import MAXTEXT_CONFIGS_DIR
from pydantic import model_validator

from lwm_plugin.config.files import ConfigError, config_chain
from lwm_plugin.config.settings import LWMSettings


# MaxText requires grain_train_files (grain_eval_files with eval_interval > 0) for dataset_type: grain;
# the LWM loader reads lwm_data_sources instead and fills them with this marker, which nothing reads.
LWM_FILES_MARKER = "<lwm_data_sources>"


class LWMConfig(types.MaxTextConfig, LWMSettings):
  """MaxText's config class extended with the LWM settings; pass as `config_class=`."""

  @model_validator(mode="before")
  @classmethod
  def _lwm_sources_stand_for_grain_files(cls, data: Any) -> Any:
    if not isinstance(data, dict):
      return data
    for sources, files in (("lwm_data_sources", "grain_train_files"), ("lwm_eval_data_sources", "grain_eval_files")):
      if data.get(sources):
        if data.get(files) not in (None, "", LWM_FILES_MARKER):
          raise ValueError(f"set either {sources} (the LWM loader) or {files} (MaxText's Grain pipeline), not both")
        data = {**data, files: LWM_FILES_MARKER}
    if data.get("lwm_data_sources") and int(data.get("eval_interval") or -1) > 0 and not data.get("lwm_eval_data_sources"):
      raise ValueError("eval_interval > 0 with lwm_data_sources needs lwm_eval_data_sources (MaxText's own eval "
                       "pipeline has no loss weights); or set eval_interval: -1")
    return data

  @model_validator(mode="after")
  def _lwm_sources_need_grain(self) -> "LWMConfig":
    """The MaxText data settings the LWM loader cannot honour (checked once, here)."""
    if not (self.lwm_data_sources or self.lwm_eval_data_sources):
      return self
    if self.dataset_type != "grain":
      dataset_type = getattr(self.dataset_type, "value", self.dataset_type)
      raise ValueError(f"lwm_data_sources / lwm_eval_data_sources are set but dataset_type={dataset_type!r}: "
                       "MaxText would train on other data; set dataset_type: grain to use the LWM loader")
    unsupported = [(self.colocated_python_data_input, "colocated_python_data_input"),
                   (self.grain_use_elastic_iterator, "grain_use_elastic_iterator (it cannot pack)"),
                   (self.expansion_factor_real_data not in (-1, 1),
                    f"expansion_factor_real_data={self.expansion_factor_real_data}"),
                   (self.elastic_enabled, "elastic_enabled")]
    bad = [what for flag, what in unsupported if flag]
    if bad:
      raise ValueError(f"the LWM loader does not support: {', '.join(bad)}")
    return self

  @model_validator(mode="before")
  @classmethod
  def _check_ring_strategy(cls, data: Any) -> Any:
    """Before MaxText's checks, whose message for this mistake would point to its own TPU/GPU ring."""
    if isinstance(data, dict) and data.get("attention") == "ring":
      strategy = data.get("context_parallel_strategy", "all_gather")
      if strategy != "all_gather":
        raise ValueError(f"attention: ring is the LWM ring over the context axis; leave context_parallel_strategy at "
                         f"'all_gather' (got {strategy!r}, which selects MaxText's own kernels)")
    return data

  @model_validator(mode="before")
  @classmethod
  def _ring_cache_over_context(cls, data: Any) -> Any:
    """`attention: ring`: the rule `cache_sequence -> []` (MaxText's default) becomes `-> [context_sharding]`."""
    if not (isinstance(data, dict) and data.get("attention") == "ring" and data.get("logical_axis_rules")):
      return data
    context = data.get("context_sharding", "context")
    rules = []
    for name, axes in data["logical_axis_rules"]:
      if name == "cache_sequence":
        found = [axes] if isinstance(axes, str) else list(axes or [])
        if found not in ([], [context]):
          raise ValueError(f"attention: ring keeps the KV cache split over {context!r}; logical_axis_rules maps "
                           f"'cache_sequence' to {found}")
        axes = [context]
      rules.append([name, axes])
    return {**data, "logical_axis_rules": rules}

  @model_validator(mode="after")
  def _check_ring_attention(self) -> "LWMConfig":
    """`attention: ring` combinations that cannot work, refused with the key to change."""
    if self.attention != "ring":
      return self
    if self.ici_context_usp_ulysses_parallelism != 1 or self.dcn_context_usp_ulysses_parallelism != 1:
      raise ValueError("attention: ring does not combine with Ulysses parallelism (*_context_usp_ulysses_parallelism)")
    if self.attention_type not in ("global", "full"):
      raise ValueError(f"attention: ring supports attention_type global (causal) or full, not {self.attention_type!r}")
    if self.attn_logits_soft_cap:
      raise ValueError("attention: ring does not implement attn_logits_soft_cap")
    cp = self.ici_context_parallelism * self.dcn_context_parallelism
    if self.context_parallel_load_balance and cp > 1:  # -1 (fill the mesh) is checked by MaxText's reorder
      if cp % 2:
        raise ValueError(f"attention: ring with context_parallel_load_balance needs an even context parallelism, got "
                         f"{cp}; set context_parallel_load_balance=false")
      if self.max_target_length % (2 * cp):
        raise ValueError(f"attention: ring with context_parallel_load_balance needs max_target_length "
                         f"({self.max_target_length}) divisible by 2 x context parallelism ({2 * cp})")
    return self


def _valid_keys(config_class: type[Any]) -> set[str]:
  """Top-level fields plus the fields of nested models (MaxText accepts both) and multimodal keys."""
  keys = set(config_class.model_fields)
  for field in config_class.model_fields.values():
    nested = getattr(field.annotation, "model_fields", None)
    if nested:
      keys |= set(nested)
  # MaxText ignores (with a warning) multimodal keys when use_multimodal is false.
  return keys | set(types.Multimodal.model_fields)


def _unknown(key: str, valid: set[str], where: str) -> ConfigError:
  close = difflib.get_close_matches(key, valid, n=3)
  hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
  return ConfigError(f"{where}: unknown config key {key!r}{hint}")


def check_keys(config_file: str, overrides: Iterable[str], config_class: type[Any] = LWMConfig) -> None:
  """Raises ConfigError for the first unknown key in our YAML chain or in `key=value` overrides."""
  valid = _valid_keys(config_class)
  for path, keys in config_chain(config_file):
    if os.path.dirname(os.path.abspath(path)) == os.path.abspath(MAXTEXT_CONFIGS_DIR):
      continue  # MaxText's own files
    for key, line in keys.items():
      if key not in valid:
        raise _unknown(key, valid, f"{path}:{line}")
  for arg in overrides:
    key, sep, _ = arg.partition("=")
    if not sep:
      raise ConfigError(f"command-line argument {arg!r}: expected key=value")
    if key not in valid:
      raise _unknown(key, valid, f"command-line argument {arg!r}")
