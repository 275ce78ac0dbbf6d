"""`lwm-eval needle`: the paper's needle-in-a-haystack retrieval on our checkpoints or HF exports.

  lwm-eval needle --config CONFIG.yml --model CHECKPOINT_OR_HF_DIR [--context-lengths 1000,2000,4000]
                  [--depths 0,0.25,0.5,0.75,1] [--needles N] [--asked R] [--rounds K] [--seed S]
                  [--haystack FILE] [--prompt-format chat|lwm] [--output DIR] [key=value ...]

CONFIG.yml describes the model (dims, vocabulary keys `lwm_*`, attention, mesh), as for
`lwm-train`; `key=value` overrides follow the options. `--model` is a MaxText checkpoint
(`<run>/checkpoints/<step>/items`) or a Hugging Face directory written by `lwm-convert to-hf`
(imported back with `lwm-convert from-hf` into `DIR/hf_import/`, so both run the same forward).
The prompt is processed with the config's attention (ring attention over the context axis with
`attention: ring`), answers are decoded greedily over the text ids with the KV-cache decoder.
`--haystack FILE` takes the filler from any plain UTF-8 text (e.g. a PG19 book; `.jsonl`: LWM's
lines `{"text": ...}`) instead of the synthetic corpus; `--prompt-format lwm` builds LWM's own needle
prompts (`lwm_plugin.evaluation.needle`), for Fig. 5 / Table 3 on a converted LWM-Text-Chat-1M.
Writes `DIR/needle_<task>.json` (every trial) and `DIR/needle_<task>.png` (the heatmap); prints
the accuracy table.

Before any work it checks the model path, the grid, every context length plus the answer budget
against the model's `max_target_length`, the resolved config, the vocabulary and every prompt
(`lwm_plugin.evaluation.needle_run`, which does the work; this module is its command line). A usage
error prints `lwm-eval: error: ...`, exits 2 and writes nothing.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from typing import Sequence

from data_loaders.synthetic_corpus import NEEDLE_VALUES
from lwm_plugin import launch
from lwm_plugin.config.files import ConfigError, resolve_config_file
from lwm_plugin.evaluation import needle
from lwm_plugin.model_source import UsageError

PROG = "lwm-eval"


class _Parser(argparse.ArgumentParser):
  """argparse whose errors read `lwm-eval: error: ...` (rc 2) for the subcommands too."""

  def error(self, message: str):
    self.print_usage(sys.stderr)
    self.exit(2, f"{PROG}: error: {message}\n")


def _numbers(kind: type, text: str) -> list:
  try:
    return [kind(x) for x in text.split(",") if x.strip()]
  except ValueError as e:
    raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from e


def _parser() -> argparse.ArgumentParser:
  parser = _Parser(prog=PROG, description=__doc__.split("\n", 1)[0],
                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("needle", help="needle-in-a-haystack retrieval over context length x depth")
  p.add_argument("--config", required=True, help="model config (.yml), as for lwm-train")
  p.add_argument("--model", required=True, help="MaxText .../<step>/items directory or Hugging Face directory")
  p.add_argument("--context-lengths", type=functools.partial(_numbers, int), default=None,
                 help="prompt lengths in tokens; each plus the answer must fit the model's max_target_length "
                      "(default: a quarter, half and all of what fits)")
  p.add_argument("--depths", type=functools.partial(_numbers, float), default=[0.0, 0.25, 0.5, 0.75, 1.0],
                 help="fractions of the haystack")
  p.add_argument("--needles", type=int, default=1, help="N facts in the context")
  p.add_argument("--asked", type=int, default=1, help="R facts asked (<= N)")
  p.add_argument("--needle-value", choices=NEEDLE_VALUES, default="number",
                 help="number: the paper's 7-digit needle; word: \"The special magic {city} word is: {word}.\" "
                      "(what the demo's tiny model is trained on)")
  p.add_argument("--rounds", type=int, default=1, help="random needles per grid cell")
  p.add_argument("--seed", type=int, default=20240208)
  p.add_argument("--haystack", default=None, help="filler text file (plain UTF-8, or .jsonl lines {\"text\": ...}); "
                                                  "default: the synthetic corpus's sentences")
  p.add_argument("--prompt-format", choices=needle.PROMPT_FORMATS, default="chat",
                 help="chat: our chat template (what the demo trains); lwm: LWM's eval_needle.py prompt and needle")
  p.add_argument("--output", default="needle_eval", help="output directory")
  p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """`lwm-eval`; returns the exit code (2 for every usage error, with nothing written)."""
  try:
    args = _parser().parse_args(argv)
  except SystemExit as e:  # argparse: --help (0) or a usage error (2), already printed
    return int(e.code or 0)
  try:
    config_file = resolve_config_file(args.config)
    task = needle.NeedleTask(args.needles, args.asked, args.needle_value)
    needle_run = launch.decode_apps(config_file, args.overrides).needle_run
    run = needle_run.prepare_needle(config_file, args.model, args.overrides, context_lengths=args.context_lengths,
                                    depths=args.depths, tasks=[task], rounds=args.rounds, seed=args.seed,
                                    output=args.output, haystack=args.haystack, prompt_format=args.prompt_format)
  except (ConfigError, ValueError) as e:
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return 2
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  try:
    needle_run.run_needle(run, log=lambda line: print(f"{PROG}: {line}"))
  except UsageError as e:
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
