"""`lwm-train`'s work once JAX's platform is set: the Python API behind the command line (and the demo).

`train(config_file, overrides)` runs MaxText's own training loop with the plugin installed: our key
checks first, the data directory and the run directory's owner (`lwm_plugin.run_dir`) before
anything is written, a one-screen summary of the resolved config on stdout, then one line per step
with the LWM metrics. `check` compiles the train step ahead of time for a TPU pod; `resolve` gives
the resolved config. Errors: `ConfigError` (bad config, nothing written), `LoaderFailed` (the data
loader failed; `file:line: reason` for bad data), `TrainingFailed` (MaxText's own exit code).
`lwm_plugin.train` reaches this module through `lwm_plugin.launch`, which sets `JAX_PLATFORMS` first.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Sequence

import jax

from lwm_plugin import integration, run_dir, run_summary, step_metrics
from lwm_plugin.config.files import ConfigError, uses_data_dir
from lwm_plugin.config.lwm_config import check_keys
from lwm_plugin.integration.aot_report import CompileReport

LoaderFailed = integration.LoaderFailed
PROG = "lwm-train"
# Grain's worker processes hand batches over in shared memory. A batch in flight when a run fails
# is unlinked at exit by multiprocessing's resource tracker, a separate process that then warns of
# "leaked shared_memory objects" after the run's last line. It is started with our -W options.
_TRACKER_NOTICE = "ignore:resource_tracker:UserWarning:multiprocessing.resource_tracker"


class TrainingFailed(RuntimeError):
  """MaxText's training exited non-zero (its own message is in its log)."""

  def __init__(self, exit_code: int):
    super().__init__(f"MaxText's training exited with code {exit_code}")
    self.exit_code = exit_code


def _argv(config_file: str, overrides: Sequence[str]) -> list[str]:
  check_keys(config_file, overrides)
  return [PROG, config_file, *overrides]


def resolve(config_file: str, overrides: Sequence[str] = ()) -> Any:
  """The fully resolved config (our key checks first)."""
  return integration.resolve_config(_argv(config_file, overrides))


def check(config_file: str, overrides: Sequence[str] = ()) -> CompileReport:
  """AOT-compiles the train step for the `compile_topology` the overrides set; the fit report."""
  return integration.check_train_step(_argv(config_file, overrides), config_file)


def _check_data_dir(config_file: str, overrides: list[str], config) -> None:
  if not uses_data_dir(config_file, overrides):
    return
  if not config.lwm_data_dir:
    raise ConfigError(f"{config_file}: this stage reads its data sources under ${{lwm_data_dir}}, which is not set; "
                      "pass lwm_data_dir=/path/to/your/data (the layout is in docs/stages.md) or set lwm_data_sources")
  if "://" not in config.lwm_data_dir and not os.path.isdir(config.lwm_data_dir):
    raise ConfigError(f"{config_file}: lwm_data_dir={config.lwm_data_dir!r} is not a directory "
                      f"(relative paths start at {os.getcwd()})")


def train(config_file: str, overrides: Sequence[str] = ()) -> None:
  """Trains CONFIG.yml with `overrides` (absolute `base_output_directory`); raises on failure (module docstring)."""
  maxtext_argv = _argv(config_file, overrides)
  config = integration.resolve_config(maxtext_argv)
  _check_data_dir(config_file, overrides, config)
  run_dir.check_resume(config, config_file)
  logging.getLogger("lwm_plugin").setLevel(logging.INFO)
  resolved = run_dir.record_start(config, config_file)
  print("\n".join(run_summary.summary_lines(config, config_file, jax.device_count(), str(resolved))), flush=True)
  integration.install()
  exit_code = _run(maxtext_argv + _quiet_config(list(overrides), config))
  if exit_code:
    raise TrainingFailed(exit_code)


def _quiet_config(overrides: list[str], config) -> list[str]:
  """MaxText's ~890 `Config param` lines off (they are in lwm_config.json) unless asked for; the run
  name pinned (MaxText names an unnamed run by the minute, and must find the directory just written)."""
  pinned = [f"run_name={config.run_name}"]
  return pinned if any(a.partition("=")[0] == "log_config" for a in overrides) else [*pinned, "log_config=false"]


def _run(maxtext_argv: list[str]) -> int:
  """MaxText's training with each step's LWM metrics on stdout; its exit code (LoaderFailed passes through)."""
  if _TRACKER_NOTICE not in sys.warnoptions:
    sys.warnoptions.append(_TRACKER_NOTICE)
  steps = logging.getLogger(step_metrics.LOGGER)
  to_stdout = logging.StreamHandler(sys.stdout)
  to_stdout.setFormatter(logging.Formatter("%(message)s"))
  steps.addHandler(to_stdout)
  steps.propagate = False
  try:
    return integration.run_training(maxtext_argv)
  finally:
    steps.removeHandler(to_stdout)
    steps.propagate = True
