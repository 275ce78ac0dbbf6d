"""The needle evaluation of a model: every check first (`prepare_needle`, writes nothing), then the run.

`lwm-eval needle` (lwm_plugin/evaluation/cli.py) is a thin command line over these functions; the demo
calls `evaluate_needle`. `prepare_needle` checks the model path (a MaxText items directory, or a
Hugging Face directory with a config.json and weights), the grid, every context length plus the
answer budget against the model's `max_target_length` (CONFIG.yml and overrides: a model is not
evaluated beyond its trained context unless `max_target_length=N` says so), the resolved config,
the vocabulary, the haystack file and every prompt; it raises `UsageError` (or the config's and the
prompt builder's ValueError) before anything is written. `run_needle` imports a Hugging Face model into
`OUTPUT/hf_import/` (removed again, with an output directory it created, if the import fails), builds
the KV-cache decoder (`inference.CachedDecoder`: one prefill per batch of prompts, one cached step per
answer token) and answers every grid greedily over the text ids (`lwm_plugin.generation.loop`).

Imports MaxText (through `lwm_plugin.integration`): import it after choosing the JAX platform.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from data_loaders.vision_prompts import text_mask
from lwm_plugin import checkpoints, integration
from lwm_plugin.config.files import peek
from lwm_plugin.config.lwm_config import check_keys
from lwm_plugin.config.settings import model_vocab
from lwm_plugin.evaluation import needle
from lwm_plugin.generation import loop
from lwm_plugin.integration import inference
from lwm_plugin.model_source import ModelSource, UsageError, imported_items, locate_model


def _check_grid(context_lengths: Sequence[int] | None, depths: Sequence[float], rounds: int, tasks) -> None:
  if context_lengths is not None and (not context_lengths or min(context_lengths) <= 0):
    raise UsageError(f"--context-lengths {list(context_lengths)}: expected one or more positive token counts")
  if not depths or not all(0.0 <= d <= 1.0 for d in depths):
    raise UsageError(f"--depths {list(depths)}: expected one or more fractions in [0, 1]")
  if rounds < 1:
    raise UsageError(f"--rounds {rounds}: expected at least 1")
  if not tasks:
    raise UsageError("no needle task to run")


def _model_length(config_file: str, overrides: Sequence[str]) -> int:
  """The model's max_target_length (CONFIG.yml and overrides), read without resolving the config."""
  value = peek(config_file, overrides, "max_target_length")
  try:
    length = int(value) if not isinstance(value, (bool, float)) else 0
  except (TypeError, ValueError):
    length = 0
  if length <= 0:
    raise UsageError(f"{config_file}: max_target_length {value!r} is not a positive int")
  return length


def _budget(tasks) -> int:
  return max(needle.answer_budget(task) for task in tasks)


def _fit_lengths(config_file: str, overrides: Sequence[str], context_lengths: Sequence[int] | None,
                 tasks) -> tuple[list[int], int]:
  """(context lengths, the max_target_length to run with). Raises UsageError if a prompt and its answer
  exceed the model's max_target_length; None lengths: a quarter, half and all of what fits."""
  budget = _budget(tasks)
  model_length = _model_length(config_file, overrides)
  fits = model_length - budget
  if fits < 1:
    raise UsageError(f"{config_file}: max_target_length {model_length} leaves no room for a prompt and a "
                     f"{budget}-token answer")
  if context_lengths is None:
    context_lengths = sorted({max(1, fits // 4), max(1, fits // 2), fits})
  longest = max(context_lengths)
  if longest > fits:
    raise UsageError(
        f"--context-lengths {longest}: a {longest}-token prompt plus up to {budget} answer tokens exceeds the "
        f"model's max_target_length {model_length} ({config_file}); use lengths up to {fits}, "
        "or pass max_target_length=N to evaluate beyond the trained context")
  if any(o.startswith("max_target_length=") for o in overrides):
    return list(context_lengths), model_length
  return list(context_lengths), min(model_length, -(-(longest + budget) // 1024) * 1024)  # no longer than needed


@dataclasses.dataclass
class NeedleRun:
  """A checked needle evaluation: the config, the grids and where the weights and results go. Building
  it (`prepare_needle`) reads files and resolves the config but writes nothing."""
  config: Any
  vocab: Any
  model: ModelSource
  config_file: str
  overrides: tuple[str, ...]
  grids: list
  output: Path


def prepare_needle(config_file: str, model: str, overrides: Sequence[str], *, context_lengths: Sequence[int] | None,
                   depths: Sequence[float], tasks, rounds: int, seed: int, output: str | Path,
                   haystack: str | None = None, prompt_format: needle.PromptFormat = "chat") -> NeedleRun:
  """Every check lwm-eval makes before any work: the model path, the grid, the lengths against the model's
  max_target_length, the resolved config, the vocabulary, the haystack file and every prompt. Raises UsageError
  (or ConfigError / ValueError from the config keys, the config and the prompt builder); writes nothing."""
  check_keys(config_file, overrides)
  out = Path(output)
  if out.exists() and not out.is_dir():
    raise UsageError(f"--output {out}: exists and is not a directory")
  located = locate_model(model)
  _check_grid(context_lengths, depths, rounds, tasks)
  if haystack is not None and not Path(haystack).is_file():
    raise UsageError(f"--haystack {haystack}: no such file")
  context_lengths, max_target_length = _fit_lengths(config_file, overrides, context_lengths, tasks)
  checkpoint = imported_items(out / "hf_import") if located.is_hf else located.path
  # the KV cache: prompts up to max_target_length minus the answer budget, the answer after
  config = inference.decode_config("lwm-eval", config_file, checkpoint, overrides, total=max_target_length,
                                   prompt=max_target_length - _budget(tasks))
  vocab, _ = model_vocab(config)  # a text or a multimodal model; any other size is an error
  filler = needle.read_haystack(haystack, vocab) if haystack is not None else needle.Haystack()
  grids = [needle.build_grid(vocab, task, context_lengths, depths, rounds, seed, haystack=filler,
                             prompt_format=prompt_format) for task in tasks]
  return NeedleRun(config, vocab, located, config_file, tuple(overrides), list(zip(tasks, grids)), out)


def run_needle(run: NeedleRun, log=print) -> list[tuple[Path, Path, float]]:
  """Imports the weights if needed, compiles the model once and answers every grid; returns (results JSON,
  heatmap PNG, mean accuracy) per task."""
  created = not run.output.exists()
  run.output.mkdir(parents=True, exist_ok=True)
  try:
    checkpoints.import_for_inference(run.config_file, run.model, run.output / "hf_import", overrides=run.overrides)
  except BaseException:
    if created:
      shutil.rmtree(run.output, ignore_errors=True)
    raise
  config, vocab = run.config, run.vocab
  integration.install()
  decoder = inference.CachedDecoder(config)
  answer_ids = text_mask(vocab, decoder.vocab_size)  # the answer is text: greedy over the text ids only

  def generate(prompts, max_new_tokens):
    start = time.time()
    outs = loop.generate_text(decoder, prompts, max_new_tokens=max_new_tokens, stop_ids=(vocab.eos_id,),
                              allowed_V=answer_ids)
    log(f"{len(prompts)} prompts of up to {max(len(p) for p in prompts)} tokens answered in "
        f"{time.time() - start:.1f} s (prefill {outs[0].prefill_s:.1f} s)")
    return [vocab.decode_text([int(t) for t in o.new_ids if t != vocab.eos_id]) for o in outs]

  reports = []
  for task, trials in run.grids:
    log(f"{task.name}, {len(trials)} prompts, model {config.load_parameters_path}, "
        f"attention {config.attention}")
    needle.run_grid(trials, generate, task)
    reports.append(_write_task(run.output, task, trials, log))
  return reports


def evaluate_needle(config_file: str, model: str, overrides: Sequence[str], *, context_lengths: Sequence[int],
                    depths: Sequence[float], tasks, rounds: int, seed: int, output: str | Path,
                    haystack: str | None = None, prompt_format: needle.PromptFormat = "chat",
                    log=print) -> list[tuple[Path, Path, float]]:
  """Runs the grid for each `needle.NeedleTask` in `tasks` with one model (imported and compiled once);
  returns (results JSON, heatmap PNG, mean accuracy) per task. Checks everything first (`prepare_needle`)."""
  run = prepare_needle(config_file, model, overrides, context_lengths=context_lengths, depths=depths, tasks=tasks,
                       rounds=rounds, seed=seed, output=output, haystack=haystack, prompt_format=prompt_format)
  return run_needle(run, log)


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
  named, chars = (float(np.mean([getattr(t, f) for t in trials])) for f in ("city_named", "chars_right"))
  what = "digits right, chance 0.10" if task.value == "number" else "letters right"
  log(f"{task.name}: mean accuracy {mean:.3f} (asked city named {named:.2f}, {what} {chars:.2f}); "
      f"results {results}, heatmap {heatmap}")
  return results, heatmap, mean
