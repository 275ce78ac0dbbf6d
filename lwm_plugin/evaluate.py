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
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from lwm_plugin.config_files import ConfigError, peek, resolve_config_file

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


def maxtext_checkpoint(model: str, config_file: str, overrides: Sequence[str], workdir: Path) -> str:
  """The Orbax items directory to load: `model` itself, or an import of a Hugging Face directory."""
  path = Path(model)
  if (path / "config.json").is_file():
    from conversion import cli as convert_cli  # pylint: disable=import-outside-toplevel

    target = workdir / "hf_import"
    if target.exists():
      shutil.rmtree(target)
    rc = convert_cli.main(["from-hf", "--config", config_file, "--hf", str(path), "--output", str(target),
                           "--dtype", "float32", "--no-progress", *overrides])
    if rc != 0:
      raise RuntimeError(f"importing the Hugging Face model {path} failed (lwm-convert exit code {rc})")
    return str(target / "0" / "items")
  if path.name != "items" and (path / "items").is_dir():
    path = path / "items"
  if not path.is_dir():
    raise FileNotFoundError(f"--model {model}: neither a MaxText checkpoint items directory nor a Hugging Face "
                            "directory (no config.json)")
  return str(path)


def evaluate_needle(config_file: str, model: str, overrides: Sequence[str], *, context_lengths: Sequence[int],
                    depths: Sequence[float], tasks, rounds: int, seed: int, output: str | Path,
                    log=print) -> list[tuple[Path, Path, float]]:
  """Runs the grid for each `needle.NeedleTask` in `tasks` with one model (imported and compiled once);
  returns (results JSON, heatmap PNG, mean accuracy) per task."""
  from lwm_plugin.evaluation import needle  # pylint: disable=import-outside-toplevel
  from lwm_plugin import integration  # pylint: disable=import-outside-toplevel  (imports MaxText)
  from lwm_plugin.integration.inference import GreedyDecoder, load_config  # pylint: disable=import-outside-toplevel
  from lwm_plugin.vocab import MultimodalVocab  # pylint: disable=import-outside-toplevel

  out = Path(output)
  out.mkdir(parents=True, exist_ok=True)
  checkpoint = maxtext_checkpoint(model, config_file, overrides, out)
  longest = max(context_lengths) + max(needle.answer_budget(task) for task in tasks)
  config = load_config([PROG, config_file, "run_name=lwm_eval", "enable_checkpointing=false",
                        f"load_parameters_path={checkpoint}", *overrides,
                        *([] if any(o.startswith("max_target_length=") for o in overrides)
                          else [f"max_target_length={-(-longest // 1024) * 1024}"])])
  vocab = MultimodalVocab.from_settings(config)
  vocab.is_text_model(config.vocab_size)  # a text or a multimodal model; any other size is an error
  integration.install()
  decoder = GreedyDecoder(config)
  text_ids = np.arange(vocab.text_size)  # the answer is text: greedy over the text ids only

  def generate(prompts, max_new_tokens):
    start = time.time()
    outs = decoder.generate(prompts, max_new_tokens, stop_ids=(vocab.eos_id,), allowed_ids=text_ids)
    log(f"{PROG}: {len(prompts)} prompts of up to {max(len(p) for p in prompts)} tokens answered in "
        f"{time.time() - start:.1f} s")
    return [vocab.decode_text([int(t) for t in o if t != vocab.eos_id]) for o in outs]

  reports = []
  for task in tasks:
    trials = needle.build_grid(vocab, task, context_lengths, depths, rounds, seed)
    log(f"{PROG}: {task.name}, {len(trials)} prompts, model {checkpoint}, attention {config.attention}")
    needle.run_grid(trials, generate, task)
    reports.append(_write_task(out, task, trials, log))
  return reports


def _write_task(out: Path, task, trials, log) -> tuple[Path, Path, float]:
  """Results JSON, heatmap and the printed table of one task's answered trials."""
  from lwm_plugin.evaluation import needle  # pylint: disable=import-outside-toplevel

  slug = "single" if task.n_needles == 1 else f"multi_n{task.n_needles}_r{task.n_asked}"
  results = needle.write_results(out / f"needle_{slug}.json", task, trials)
  mean = float(np.mean([t.score for t in trials]))
  heatmap = needle.plot_heatmap(out / f"needle_{slug}.png", trials, f"needle retrieval ({task.name}), mean {mean:.2f}")
  lengths, depth_list, table = needle.accuracy_table(trials)
  log("depth \\ length " + " ".join(f"{n:>7}" for n in lengths))
  for d, row in zip(depth_list, table):
    log(f"{100 * d:>13.0f}% " + " ".join(f"{x:>7.2f}" for x in row))
  named, digits = (float(np.mean([getattr(t, f) for t in trials])) for f in ("city_named", "digits_right"))
  log(f"{PROG}: {task.name}: mean accuracy {mean:.3f} (asked city named {named:.2f}, digits right {digits:.2f}, "
      f"chance 0.10); results {results}, heatmap {heatmap}")
  return results, heatmap, mean


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:
    config_file = resolve_config_file(args.config)
    if peek(config_file, args.overrides, "hardware") == "cpu":
      # Before JAX is imported: keep an installed libtpu from probing for a TPU on a CPU run.
      os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from lwm_plugin.config import check_keys  # pylint: disable=import-outside-toplevel  (imports MaxText)
    from lwm_plugin.evaluation import needle  # pylint: disable=import-outside-toplevel

    task = needle.NeedleTask(args.needles, args.asked)

    check_keys(config_file, args.overrides)
  except (ConfigError, ValueError) as e:
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return 2
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  evaluate_needle(config_file, args.model, args.overrides, context_lengths=args.context_lengths, depths=args.depths,
                  tasks=[task], rounds=args.rounds, seed=args.seed, output=args.output)
  return 0


if __name__ == "__main__":
  sys.exit(main())
