"""`lwm-train CONFIG.yml [key=value ...]`: MaxText's own training loop with the LWM plugin.

Same command-line conventions as `python -m maxtext.trainers.pre_train.train`; CONFIG.yml may be a
path or the name of a file shipped in `maxtext_configs/`. Extra flags, handled here and never
passed to MaxText:

  --print-config   print the fully resolved config as one JSON object on one line of stdout, exit 0.
                   A stage with `lwm_topology` (the paper's stages) resolves as on that pod
                   (compile_topology set), so its batch sizes are the pod's.
  --check          compile the train step ahead of time for the stage's TPU pod (`lwm_topology`, or
                   compile_topology=... on the command line) through libtpu, on any host, and report
                   per-chip memory (arguments + temporaries) against HBM, FLOPs per step and whether
                   it fits; exit 0 if it fits, 1 if not. With --json: one JSON object instead.

Training prints a one-screen summary of the resolved config on stdout, then one line per step with
the LWM metrics (loss, text and vision loss, token counts; `lwm_plugin.step_metrics`). MaxText's
log goes to stderr, without its dump of every config key: that is in `<run dir>/lwm_config.json`
(pass log_config=true to have it on stderr too). `<run dir>/lwm_run.json` records which config
and model wrote the run's checkpoints; resuming them with another stage or model shape is refused
(`lwm_plugin.run_dir`). An error of the data loader ends the run with exit code 1 and the loader's
message (`file:line: reason` for a bad line) as the last line on stderr.

Also runnable as `python -m lwm_plugin.train`; the Python API is `lwm_plugin.training`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from typing import Sequence

from lwm_plugin import launch
from lwm_plugin.config.files import ConfigError, check_topology, peek, resolve_config_file, topology_overrides

PROG = "lwm-train"
USAGE = f"usage: {PROG} CONFIG.yml [key=value ...] [--print-config | --check [--json]]"
_OWN_FLAGS = ("--print-config", "--check", "--json")


def _split(args: Sequence[str]) -> tuple[str, list[str], set[str]]:
  flags = {a for a in args if a in _OWN_FLAGS}
  rest = [a for a in args if a not in _OWN_FLAGS]
  unknown = [a for a in rest if a.startswith("-")]
  if unknown:
    raise ConfigError(f"unknown option {unknown[0]!r}\n{USAGE}")
  if not rest:
    raise ConfigError(USAGE)
  if "--json" in flags and "--check" not in flags:
    raise ConfigError(f"--json goes with --check\n{USAGE}")
  if {"--print-config", "--check"} <= flags:
    raise ConfigError(f"--print-config and --check are separate commands\n{USAGE}")
  return resolve_config_file(rest[0]), rest[1:], flags


def _absolute_output_dir(config_file: str, overrides: list[str]) -> list[str]:
  """base_output_directory made absolute when it is a relative local path (Orbax refuses relative paths).

  As an override, so that `${base_output_directory}` in a stage's load_parameters_path follows it.
  """
  out = peek(config_file, overrides, "base_output_directory")
  if not out or "://" in str(out) or os.path.isabs(str(out)):
    return []
  return [f"base_output_directory={os.path.abspath(str(out))}"]


def main(argv: Sequence[str] | None = None) -> int:
  args = list(sys.argv[1:] if argv is None else argv)
  if args and args[0] in ("-h", "--help"):
    print(__doc__)
    print(USAGE)
    return 0
  try:
    config_file, overrides, flags = _split(args)
    overrides += _absolute_output_dir(config_file, overrides)
    if "--check" in flags:
      overrides += check_topology(config_file, overrides)
    elif "--print-config" in flags:
      overrides += topology_overrides(config_file, overrides)
    training = launch.train_apps(config_file, overrides, aot="--check" in flags).training
  except ConfigError as e:
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return 2
  try:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if "--check" in flags:
      report = training.check(config_file, overrides)
      print(report.to_json() if "--json" in flags else "\n".join(report.lines()), flush=True)
      return 0 if report.fits else 1
    if "--print-config" in flags:
      print(json.dumps(training.resolve(config_file, overrides).model_dump(mode="json"), sort_keys=True))
      return 0
    training.train(config_file, overrides)
  except ConfigError as e:
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return 2
  except training.LoaderFailed as e:
    if not e.bad_input:  # a loader failure, not the user's input: its traceback helps
      traceback.print_exception(e.__cause__)
    sys.stdout.flush()
    print(f"{PROG}: error: data loader: {e}", file=sys.stderr, flush=True)
    return 1
  except training.TrainingFailed as e:
    return e.exit_code
  return 0


if __name__ == "__main__":
  sys.exit(main())
