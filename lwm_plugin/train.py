"""`lwm-train CONFIG.yml [key=value ...]`: MaxText's own training loop with the LWM plugin.

Same command-line conventions as `python -m maxtext.trainers.pre_train.train`; CONFIG.yml may be a
path or the name of a file shipped in `maxtext_configs/`. Extra flags, handled here and never
passed to MaxText:

  --print-config   print the fully resolved config as one JSON object on one line of stdout, exit 0.

Also runnable as `python -m lwm_plugin.train`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Sequence

from lwm_plugin.config_files import ConfigError, peek, resolve_config_file

PROG = "lwm-train"
USAGE = f"usage: {PROG} CONFIG.yml [key=value ...] [--print-config]"
_OWN_FLAGS = ("--print-config",)


def _split(args: Sequence[str]) -> tuple[str, list[str], set[str]]:
  flags = {a for a in args if a in _OWN_FLAGS}
  rest = [a for a in args if a not in _OWN_FLAGS]
  unknown = [a for a in rest if a.startswith("-")]
  if unknown:
    raise ConfigError(f"unknown option {unknown[0]!r}\n{USAGE}")
  if not rest:
    raise ConfigError(USAGE)
  return resolve_config_file(rest[0]), rest[1:], flags


def main(argv: Sequence[str] | None = None) -> int:
  args = list(sys.argv[1:] if argv is None else argv)
  if args and args[0] in ("-h", "--help"):
    print(__doc__)
    print(USAGE)
    return 0
  try:
    config_file, overrides, flags = _split(args)
    if peek(config_file, overrides, "hardware") == "cpu":
      # Before JAX is imported: keep an installed libtpu from probing for a TPU on a CPU run.
      os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from lwm_plugin.config import check_keys  # pylint: disable=import-outside-toplevel  (imports MaxText)

    check_keys(config_file, overrides)
  except ConfigError as e:
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return 2

  from lwm_plugin import integration  # pylint: disable=import-outside-toplevel

  maxtext_argv = [PROG, config_file, *overrides]
  config = integration.resolve_config(maxtext_argv)
  if "--print-config" in flags:
    print(json.dumps(config.model_dump(mode="json"), sort_keys=True))
    return 0
  logging.getLogger("lwm_plugin").setLevel(logging.INFO)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  logging.getLogger("lwm_plugin").info("config %s, stage %r", config_file, config.lwm_stage or "(unnamed)")
  integration.install()

  from absl import app  # pylint: disable=import-outside-toplevel
  from maxtext.trainers.pre_train import train  # pylint: disable=import-outside-toplevel

  try:
    app.run(train.main, argv=maxtext_argv)
  except SystemExit as e:
    return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
