"""Config patches: MaxText's trainer builds its config with our class, and config resolution
for `--print-config` does not join a cluster."""

from __future__ import annotations

import functools
from typing import Any

from maxtext.utils import max_logging

from lwm_plugin.config.lwm_config import LWMConfig


def config_class_default(original: Any) -> Any:
  """`pyconfig.initialize(argv)` with `config_class=LWMConfig` unless the caller names one."""

  @functools.wraps(original)
  def initialize(argv=None, config_class=None, **kwargs):
    return original(argv, config_class=config_class or LWMConfig, **kwargs)

  return initialize


def no_distributed_init(original: Any) -> Any:
  """Config resolution only: skip `jax.distributed.initialize()` (a TPU-pod config on a laptop)."""
  del original

  def maybe_initialize_jax_distributed_system(raw_keys):
    del raw_keys
    max_logging.log("lwm_plugin: resolving the config only; jax distributed system not initialized.")

  return maybe_initialize_jax_distributed_system
