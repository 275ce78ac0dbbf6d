"""`lwm-eval needle`'s work, after the command line is checked: import the model, run the grid, write results.

Imports MaxText (through the seam): `lwm_plugin.evaluation.cli` imports this module only after it
has set `JAX_PLATFORMS`. The demo calls `evaluate_needle` directly.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from lwm_plugin import checkpoints, integration
from lwm_plugin.config.lwm_config import check_keys
from lwm_plugin.config.settings import model_vocab
from lwm_plugin.evaluation import needle
from lwm_plugin.integration.inference import GreedyDecoder, load_config

__all__ = ["check_keys", "evaluate_needle", "maxtext_checkpoint"]


def maxtext_checkpoint(model: str, config_file: str, overrides: Sequence[str], workdir: Path) -> str:
  """The Orbax items directory to load: `model` itself, or an import of a Hugging Face directory."""
  path = Path(model)
  if (path / "config.json").is_file():
    target = workdir / "hf_import"
    if target.exists():
      shutil.rmtree(target)
    checkpoints.from_hf(config_file, str(path), str(target), overrides=overrides, dtype="float32")
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
  out = Path(output)
  out.mkdir(parents=True, exist_ok=True)
  checkpoint = maxtext_checkpoint(model, config_file, overrides, out)
  longest = max(context_lengths) + max(needle.answer_budget(task) for task in tasks)
  config = load_config(["lwm-eval", config_file, "run_name=lwm_eval", "enable_checkpointing=false",
                        f"load_parameters_path={checkpoint}", *overrides,
                        *([] if any(o.startswith("max_target_length=") for o in overrides)
                          else [f"max_target_length={-(-longest // 1024) * 1024}"])])
  vocab, _ = model_vocab(config)  # a text or a multimodal model; any other size is an error
  integration.install()
  decoder = GreedyDecoder(config)
  text_ids = np.arange(vocab.text_size)  # the answer is text: greedy over the text ids only

  def generate(prompts, max_new_tokens):
    start = time.time()
    outs = decoder.generate(prompts, max_new_tokens, stop_ids=(vocab.eos_id,), allowed_ids=text_ids)
    log(f"lwm-eval: {len(prompts)} prompts of up to {max(len(p) for p in prompts)} tokens answered in "
        f"{time.time() - start:.1f} s")
    return [vocab.decode_text([int(t) for t in o if t != vocab.eos_id]) for o in outs]

  reports = []
  for task in tasks:
    trials = needle.build_grid(vocab, task, context_lengths, depths, rounds, seed)
    log(f"lwm-eval: {task.name}, {len(trials)} prompts, model {checkpoint}, attention {config.attention}")
    needle.run_grid(trials, generate, task)
    reports.append(_write_task(out, task, trials, log))
  return reports


def _write_task(out: Path, task, trials, log) -> tuple[Path, Path, float]:
  """Results JSON, heatmap and the printed table of one task's answered trials."""
  slug = "single" if task.n_needles == 1 else f"multi_n{task.n_needles}_r{task.n_asked}"
  results = needle.write_results(out / f"needle_{slug}.json", task, trials)
  mean = float(np.mean([t.score for t in trials]))
  heatmap = needle.plot_heatmap(out / f"needle_{slug}.png", trials, f"needle retrieval ({task.name}), mean {mean:.2f}")
  lengths, depth_list, table = needle.accuracy_table(trials)
  log("depth \\ length " + " ".join(f"{n:>7}" for n in lengths))
  for d, row in zip(depth_list, table):
    log(f"{100 * d:>13.0f}% " + " ".join(f"{x:>7.2f}" for x in row))
  named, digits = (float(np.mean([getattr(t, f) for t in trials])) for f in ("city_named", "digits_right"))
  log(f"lwm-eval: {task.name}: mean accuracy {mean:.3f} (asked city named {named:.2f}, digits right {digits:.2f}, "
      f"chance 0.10); results {results}, heatmap {heatmap}")
  return results, heatmap, mean
