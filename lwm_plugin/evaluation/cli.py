"""`lwm-eval needle`: the paper's needle-in-a-haystack retrieval on our checkpoints or HF exports.

  lwm-eval needle --config CONFIG.yml --model CHECKPOINT_OR_HF_DIR [--context-lengths 1024,2048,4096]
                  [--depths 0,0.25,0.5,0.75,1] [--needles N] [--asked R] [--rounds K] [--seed S]
                  [--output DIR] [key=value ...]

CONFIG.yml describes the model (dims, vocabulary keys `lwm_*`, attention, mesh), as for
`lwm-train`; `key=value` overrides follow the options. `--model` is a MaxText checkpoint
(`<run>/checkpoints/<step>/items`) or a Hugging Face directory written by `lwm-convert to-hf`
(imported back with `lwm-convert from-hf` into `DIR/hf_import/`, so both run the same forward).
The prompt is processed with the config's attention (ring attention over the context axis with
`attention: ring`), answers are decoded greedily over the text ids. Writes `DIR/needle_<task>.json`
(every trial) and `DIR/needle_<task>.png` (the heatmap); prints the accuracy table.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

from lwm_plugin.config.files import ConfigError, peek, resolve_config_file
from lwm_plugin.evaluation import needle

PROG = "lwm-eval"


def _floats(text: str) -> list[float]:
  return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
  return [int(x) for x in text.split(",") if x.strip()]


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n", 1)[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("needle", help="needle-in-a-haystack retrieval over context length x depth")
  p.add_argument("--config", required=True, help="model config (.yml), as for lwm-train")
  p.add_argument("--model", required=True, help="MaxText .../<step>/items directory or Hugging Face directory")
  p.add_argument("--context-lengths", type=_ints, default=[1024, 2048, 4096])
  p.add_argument("--depths", type=_floats, default=[0.0, 0.25, 0.5, 0.75, 1.0], help="fractions of the haystack")
  p.add_argument("--needles", type=int, default=1, help="N facts in the context")
  p.add_argument("--asked", type=int, default=1, help="R facts asked (<= N)")
  p.add_argument("--rounds", type=int, default=1, help="random needles per grid cell")
  p.add_argument("--seed", type=int, default=20240208)
  p.add_argument("--output", default="needle_eval", help="output directory")
  p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:
    config_file = resolve_config_file(args.config)
    if peek(config_file, args.overrides, "hardware") == "cpu":
      # Before JAX is imported: keep an installed libtpu from probing for a TPU on a CPU run.
      os.environ.setdefault("JAX_PLATFORMS", "cpu")
    task = needle.NeedleTask(args.needles, args.asked)
    from lwm_plugin.evaluation import runner  # pylint: disable=import-outside-toplevel  (MaxText after JAX_PLATFORMS)

    runner.check_keys(config_file, args.overrides)
  except (ConfigError, ValueError) as e:
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return 2
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  runner.evaluate_needle(config_file, args.model, args.overrides, context_lengths=args.context_lengths,
                         depths=args.depths, tasks=[task], rounds=args.rounds, seed=args.seed, output=args.output)
  return 0


if __name__ == "__main__":
  sys.exit(main())
