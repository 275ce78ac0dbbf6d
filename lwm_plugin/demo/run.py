"""`make demo`: the whole LWM system on one CPU machine, in one process on 4 fake CPU devices.

  python -m lwm_plugin.demo          # LWM_DEMO_FAST=1 for the 3-minute version; LWM_DEMO_OUTPUT=DIR

1. generates the synthetic corpus and its tokenizer (`data_loaders.tiny_data`: needles, retrieval
   chats, shapes-and-colours images and videos; deterministic, nothing downloaded);
2. trains the tiny stage chain (`plan.py`) with MaxText's own loop (`lwm_plugin.training`), ring
   attention over the 4 devices' context axis, each stage initialised from the previous one's final
   checkpoint (the first vision stage from the text model with its vocabulary extended);
3. exports the final model and the needle model to Hugging Face (`lwm-convert to-hf`);
4. evaluates single- and multi-needle retrieval over context length x depth on the HF export of the
   needle model (imported back, prefill by ring attention over the 4 devices, `lwm-eval needle`);
5. has the needle model (the chat model) write long-context QA data with `lwm-make-qa`'s pipeline on
   books it never saw, checks what the loader reads of it (`qa_data`) and trains one step of its
   config on it;
6. evaluates the final (vision) model on held-out images both ways, captioning and text-to-image with
   classifier-free guidance, scored on the toy codebook (`vision_eval`), and round-trips pictures of the
   first few of those images through `lwm-vision`'s VQGAN encode and decode (`vqgan_round_trip`);
7. writes `report.md`, `summary.json`, the heatmaps, the vision pictures and the HF models under the
   output directory (`demo_output/`).

Stages run in this process one after another (MaxText is imported once; each stage compiles its
own step); their MaxText output goes to `logs/<stage>.log`, the terminal shows one line per step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import TextIO

from conversion.spec import ConversionError
from data_loaders import tiny_data, toy_vision
from lwm_plugin import checkpoints, training
from lwm_plugin.config.files import ConfigError, peek, resolve_config_file
from lwm_plugin.demo import progress, qa_data, report, vision_eval, vqgan_round_trip
from lwm_plugin.demo.jax_env import DEVICES, configure
from lwm_plugin.demo.plan import Plan, Stage, plan_from_env
from lwm_plugin.evaluation import needle_run
from lwm_plugin.evaluation.needle import NeedleTask
from lwm_plugin.step_metrics import StepRecord

OUTPUT_ENV = "LWM_DEMO_OUTPUT"
MARKER = ".lwm_demo"             # marks a directory the demo owns (and may wipe on the next run)
FIRST_STAGE_OVERHEAD_S = 30.0    # start-up + compile guess for the ETA until a stage has been measured
# The HF exports, the needle evaluation, the QA data and the vision evaluation, in stage start-ups for the
# ETA (measured on 2 cores: about 50 s after training, plus 20-40 s of QA data and 15 s (fast) to 60 s
# (full, loaded host) of vision, against 8-19 s per stage start-up).
TAIL_IN_STAGE_STARTUPS = 6
NEEDLE_SEED = 20240208
VISION_SEED = 20240209
QA_SEED = 20240210
VISION_PROMPTS = {"fast": 4, "full": 32}  # held-out images (and captions) per vision task, by plan mode
# The tiny vision stages train on the corpus's caption/vision lines (`[caption],vision`,
# `vision,caption`), not on chat turns, so the vision evaluation asks in that layout.
VISION_LAYOUT: vision_eval.Layout = "raw"
# Guidance against an unconditional branch no demo stage trains (plan.py): the whole chain's text-to-image on
# the held-out scenes at guidance 1 / 1.5 / 2 / 3: 0.97 / 0.97 / 0.84 / 0.50 (BENCHMARKS.md, issue 17).
VISION_CFG_SCALE = 1.5
ROUND_TRIP_PICTURES = 4   # the first held-out scenes of the vision evaluation, as pictures through the VQGAN


class DemoError(RuntimeError):
  """A demo step failed; the message names the step and its log file."""


@dataclasses.dataclass
class StageResult:
  """What the report says about one stage (from its step records)."""
  stage: Stage
  context: int
  rope_theta: float
  tokens_per_step: int
  losses: list[float]
  text_loss: float
  vision_loss: float | None      # None for a stage without vision targets
  tokens_per_s: float
  setup_s: float
  wall_s: float
  checkpoint: Path


@dataclasses.dataclass
class NeedleResult:
  """One needle task's results file, heatmap and mean accuracy."""
  task: str
  results: Path
  heatmap: Path
  mean: float


def _fresh_output_dir(out: Path) -> None:
  """Empties `out` if the demo wrote it before (stale checkpoints would make MaxText resume)."""
  if out.exists():
    if any(out.iterdir()) and not (out / MARKER).exists():
      raise DemoError(f"{out} exists and was not written by the demo; remove it or set {OUTPUT_ENV}=another/dir")
    shutil.rmtree(out)
  out.mkdir(parents=True)
  (out / MARKER).write_text("written by `make demo` (lwm_plugin.demo); removed and rewritten on each run\n")


class Demo:
  """Runs a `Plan` under `out`, printing progress to `term`."""

  def __init__(self, plan: Plan, out: Path, term: TextIO):
    self.plan, self.out, self.term = plan, out, term
    self.data, self.runs, self.logs = out / "data", out / "runs", out / "logs"
    self.results: dict[str, StageResult] = {}
    self.timings: dict[str, float] = {}
    self.started = time.monotonic()

  def say(self, text: str) -> None:
    self.term.write(f"demo: {text}\n")

  def _common(self) -> list[str]:
    """Every stage's (and conversion's, and evaluation's) overrides: the corpus, the runs, and the
    corpus's frame size (the demo's toy frames are smaller than the YAMLs' LWM 16 x 16)."""
    return [f"lwm_data_dir={self.data}", f"base_output_directory={self.runs}",
            f"lwm_tokens_per_frame={self.plan.corpus.tokens_per_frame}"]

  def _quiet(self, name: str):
    return progress.quiet_output(self.logs / f"{name}.log", self.term)

  def _failed(self, name: str, error: BaseException) -> DemoError:
    log = self.logs / f"{name}.log"
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    tail = "\n".join(lines[-25:])
    return DemoError(f"{name} failed: {error}; full log: {log}\n--- last lines ---\n{tail}")

  @contextlib.contextmanager
  def _converting(self, name: str):
    """A conversion step: its error becomes a DemoError naming the step and its log."""
    try:
      yield
    except (ConversionError, ConfigError) as e:
      raise self._failed(name, e) from e

  # -- 1. data --------------------------------------------------------------------------------
  def generate_data(self) -> None:
    start = time.monotonic()
    files = tiny_data.generate(self.data, self.plan.corpus)
    sizes = ", ".join(f"{name} {path.stat().st_size / 1024:.0f} KiB" for name, path in files.items())
    self.timings["data"] = time.monotonic() - start
    self.say(f"corpus and tokenizer in {self.data} ({sizes})")

  # -- 2. training ----------------------------------------------------------------------------
  def _init_checkpoint(self, stage: Stage) -> list[str]:
    if stage.init is None:
      return []
    items = self.results[stage.init].checkpoint
    if stage.extend_vocab:
      target = self.runs / f"{stage.init}-vision-vocab"
      name = f"{stage.name}.extend-vocab"
      with self._converting(name), self._quiet(name):
        checkpoints.extend_vocab(stage.config, str(items), str(target), overrides=self._common())
      self.say(f"vocabulary of {stage.init} extended for {stage.name}: {target}")
      items = target / "0" / "items"
    return [f"load_parameters_path={items}"]

  def _model_size(self, stage: Stage) -> str:
    config = resolve_config_file(stage.config)
    layers, width = (peek(config, self._common(), key) for key in ("base_num_decoder_layers", "base_emb_dim"))
    return f"{layers} layers, {width} wide"

  def _tokens_per_step(self, config: str, overrides: list[str]) -> int:
    batch = float(peek(config, overrides, "per_device_batch_size"))
    return int(batch * DEVICES * int(peek(config, overrides, "max_target_length")))

  def _run_steps(self, name: str, config: str, overrides: list[str],
                 watcher: progress.StepWatcher) -> list[StepRecord]:
    """MaxText's training loop on `config` + `overrides` (output to `logs/<name>.log`), watched; its step records,
    one per step of the watcher's count (DemoError otherwise, or when training fails)."""
    try:
      with self._quiet(name), progress.watching(watcher):
        training.train(config, overrides)
    except (ConfigError, training.LoaderFailed, training.TrainingFailed) as e:
      raise self._failed(name, e) from e
    if len(watcher.records) != watcher.steps:
      raise DemoError(f"{name}: {len(watcher.records)} step records for {watcher.steps} steps; log: "
                      f"{self.logs / name}.log")
    return watcher.records

  def train(self, index: int, stage: Stage) -> StageResult:
    n = len(self.plan.stages)
    config = resolve_config_file(stage.config)
    start = time.monotonic()
    overrides = [*self._common(), f"steps={stage.steps}", *stage.overrides, *self._init_checkpoint(stage)]
    context = int(peek(config, overrides, "max_target_length"))
    theta = float(peek(config, overrides, "rope_max_timescale"))
    extended = " (vocabulary extended)" if stage.extend_vocab else ""
    self.say(f"stage {index + 1}/{n} {stage.name}: {context}-token context, RoPE theta {theta:,.0f}, "
             f"{stage.steps} steps, from {stage.init or 'scratch'}{extended}")
    done = list(self.results.values())
    overhead = statistics.mean(r.setup_s for r in done) if done else FIRST_STAGE_OVERHEAD_S
    later = [(s.steps, self._tokens_per_step(resolve_config_file(s.config), [*self._common(), *s.overrides]))
             for s in self.plan.stages[index + 1:]]
    tokens_per_step = self._tokens_per_step(config, overrides)
    watcher = progress.StepWatcher(self.term, f"stage {index + 1}/{n} {stage.name}", stage.steps, tokens_per_step,
                                   later, overhead, tail_s=overhead * TAIL_IN_STAGE_STARTUPS)
    records = self._run_steps(stage.name, config, overrides, watcher)
    last = records[-1]
    result = StageResult(
        stage=stage, context=context, rope_theta=theta, tokens_per_step=tokens_per_step,
        losses=[r.loss for r in records], text_loss=last.text_loss,
        vision_loss=last.vision_loss if last.vision_tokens else None,
        tokens_per_s=statistics.median(r.tokens_per_s for r in records[1:] or records),
        setup_s=watcher.setup_seconds(), wall_s=time.monotonic() - start,
        checkpoint=self.runs / stage.name / "checkpoints" / str(stage.steps - 1) / "items")
    if not result.checkpoint.is_dir():
      raise DemoError(f"{stage.name}: no final checkpoint at {result.checkpoint}; log: {self.logs / stage.name}.log")
    self.results[stage.name] = result
    self.say(f"stage {index + 1}/{n} {stage.name} done in {progress.clock(result.wall_s)}: loss "
             f"{result.losses[0]:.3f} -> {result.losses[-1]:.3f}, {result.tokens_per_s:,.0f} tokens/s")
    return result

  # -- 3. export ------------------------------------------------------------------------------
  def export(self, name: str) -> Path:
    result = self.results[name]
    target = self.out / "hf" / name
    target.parent.mkdir(exist_ok=True)
    start = time.monotonic()
    with self._converting(f"{name}.to-hf"), self._quiet(f"{name}.to-hf"):
      checkpoints.to_hf(result.stage.config, str(result.checkpoint), str(target), overrides=self._common(),
                        dtype="float32")
    self.timings[f"export {name}"] = time.monotonic() - start
    self.say(f"{name} exported to Hugging Face: {target}")
    return target

  # -- 4. needle evaluation -------------------------------------------------------------------
  def needles(self, hf_dir: Path) -> list[NeedleResult]:
    """Single needle and the plan's N facts / R asked, one model import and compile for both."""
    grid = self.plan.grid
    value = self.plan.corpus.needle_value
    tasks = [NeedleTask(1, 1, value), NeedleTask(*grid.multi, value)]
    stage = self.results[self.plan.needle_model].stage
    start = time.monotonic()
    self.say(f"needle retrieval ({', '.join(t.name for t in tasks)}) on {hf_dir.name} (Hugging Face export): "
             f"context {list(grid.context_lengths)} x depth {list(grid.depths)}, {grid.rounds} round(s)")
    with self._quiet("needle"):
      reports = needle_run.evaluate_needle(
          resolve_config_file(stage.config), str(hf_dir), self._common(), context_lengths=grid.context_lengths,
          depths=grid.depths, tasks=tasks, rounds=grid.rounds, seed=NEEDLE_SEED, output=self.out,
          log=lambda line: self.term.write(f"  {line}\n"))
    self.timings["needle evaluation"] = time.monotonic() - start
    return [NeedleResult(task.name, *report) for task, report in zip(tasks, reports)]

  # -- 5. long-context QA data ----------------------------------------------------------------
  def long_qa(self) -> qa_data.QAResult:
    """The needle model's final checkpoint writes the QA data of the plan's books (lwm-make-qa's pipeline)."""
    qa, stage = self.plan.qa, self.results[self.plan.needle_model].stage
    start = time.monotonic()
    self.say(f"long-context QA data written by {stage.name} (lwm-make-qa): {len(qa.book_sentences)} books, chunks of "
             f"{qa.chunk_tokens} tokens, examples of {', '.join(map(str, qa.lengths))} tokens")
    try:
      with self._quiet("make-qa"):
        result = qa_data.make_qa_data(
            self.out, resolve_config_file(stage.config), self.results[stage.name].checkpoint, self._common(),
            self.data / "tokenizer.model", seed=QA_SEED, book_sentences=qa.book_sentences,
            sentences_per_fact=qa.sentences_per_fact, kind=self.plan.corpus.needle_value,
            chunk_tokens=qa.chunk_tokens, lengths=qa.lengths, retries=qa.retries,
            log=lambda line: self.term.write(f"  {line}\n"))
    except (ConfigError, ValueError) as e:  # QACheckFailed is a ValueError
      raise self._failed("make-qa", e) from e
    self.timings["long-context QA data"] = time.monotonic() - start
    self.say(f"{result.qa_pairs} QA pairs from {result.chunks} chunks ({result.rejects} rejected), "
             f"{result.grounded} of the {result.pairs_with_fact} in examples about a chunk with a fact grounded in it; "
             "examples "
             f"{', '.join(f'{n} of {t}' for t, n in result.examples.items())}, all checked")
    return self._train_on_qa(result)

  def _train_on_qa(self, qa: qa_data.QAResult) -> qa_data.QAResult:
    """One training step of the generator's config, from its checkpoint, on the QA examples it wrote (the
    chat stages' `longqa` source); nothing to train on when no example was made (the fast demo's text model)."""
    if not any(qa.examples.values()):
      self.say("no QA example was made, so no training step on them")
      return qa
    stage = self.results[self.plan.needle_model].stage
    name = f"{stage.name}-longqa"
    config = resolve_config_file(stage.config)
    overrides = [*self._common(), "steps=1", f"run_name={name}", "enable_checkpointing=false",
                 f"load_parameters_path={self.results[stage.name].checkpoint}",
                 f"lwm_data_sources=[{{name: longqa, files: '{qa.files}', group: longqa}}]"]
    start = time.monotonic()
    watcher = progress.StepWatcher(self.term, f"{stage.name} on its QA data", 1,
                                   self._tokens_per_step(config, overrides), [], 0.0, tail_s=0.0)
    (step,) = self._run_steps(name, config, overrides, watcher)
    self.timings["training step on the QA data"] = time.monotonic() - start
    return dataclasses.replace(qa, step_loss=step.loss, step_loss_tokens=step.text_tokens)

  # -- 6. vision evaluation -------------------------------------------------------------------
  def vision(self) -> vision_eval.VisionResult:
    """Understanding and generation on held-out images, with the final stage's last checkpoint (its HF
    import costs more than the whole evaluation in the fast demo; the needle evaluation tests that path)."""
    stage = self.plan.final_stage
    checkpoint = self.results[stage.name].checkpoint
    start = time.monotonic()
    seen = {json.loads(line)["caption"] for line in (self.data / "image.jsonl").read_text().splitlines()}
    self.say(f"vision evaluation of {stage.name} (final checkpoint): {VISION_PROMPTS[self.plan.mode]} held-out "
             f"images described and captions drawn (guidance {VISION_CFG_SCALE})")
    try:
      with self._quiet("vision"):
        result = vision_eval.evaluate_vision(
            resolve_config_file(stage.config), str(checkpoint), self._common(), prompts=VISION_PROMPTS[self.plan.mode],
            seed=VISION_SEED, layout=VISION_LAYOUT, cfg_scale=VISION_CFG_SCALE, output=self.out, seen_captions=seen,
            log=lambda line: self.term.write(f"  {line}\n"))
    except (ConfigError, ValueError) as e:  # UsageError is a ValueError
      raise self._failed("vision", e) from e
    self.timings["vision evaluation"] = time.monotonic() - start
    return result

  def vqgan(self, weights: Path, toy: bool) -> vqgan_round_trip.RoundTripResult:
    """The first held-out scenes of the vision evaluation as pictures, through lwm-vision's VQGAN and back."""
    corpus = self.plan.corpus
    scenes = toy_vision.held_out_scenes(VISION_SEED, ROUND_TRIP_PICTURES, corpus.codebook_size, corpus.grid)
    start = time.monotonic()
    self.say(f"{ROUND_TRIP_PICTURES} held-out pictures through lwm-vision's VQGAN encode and decode ({weights})")
    try:
      with self._quiet("vqgan"):
        result = vqgan_round_trip.round_trip(self.out, weights, scenes, corpus.codebook_size, toy_weights=toy,
                                             log=lambda line: self.term.write(f"  {line}\n"))
    except ValueError as e:  # VisionError and VQGANWeightsError are ValueErrors
      raise self._failed("vqgan", e) from e
    self.timings["VQGAN round trip"] = time.monotonic() - start
    return result

  def run(self) -> Path:
    vqgan_weights = vqgan_round_trip.weights_from_env(os.environ)  # a bad LWM_DEMO_VQGAN fails before training
    self.generate_data()
    for i, stage in enumerate(self.plan.stages):
      self.train(i, stage)
    final = self.export(self.plan.final_stage.name)
    needle_hf = final if self.plan.needle_model == self.plan.final_stage.name else self.export(self.plan.needle_model)
    needles = self.needles(needle_hf)
    shutil.rmtree(self.out / "hf_import", ignore_errors=True)  # the evaluation's import of the HF export
    longqa = self.long_qa()
    vision = self.vision()
    round_trip = self.vqgan(*vqgan_weights)
    path = report.write(self.out / "report.md", report.Summary(
        plan=self.plan, stages=list(self.results.values()), needles=needles, hf_final=final, hf_needle=needle_hf,
        timings=self.timings, wall_s=time.monotonic() - self.started, devices=DEVICES,
        needle_model_size=self._model_size(self.results[self.plan.needle_model].stage), vision=vision, longqa=longqa,
        vqgan=round_trip,
        machine=f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} {platform.release()}"))
    self.say(f"done in {progress.clock(time.monotonic() - self.started)}; report: {path}")
    return path


def main() -> int:
  try:
    configure()
    plan = plan_from_env(os.environ)
    out = Path(os.environ.get(OUTPUT_ENV, "demo_output")).resolve()
    _fresh_output_dir(out)
    term = progress.terminal_stream()
    term.write(f"demo: {plan.mode} demo ({len(plan.stages)} stages) on {DEVICES} CPU devices, output in {out}; "
               f"MaxText's own output goes to {out / 'logs'}\n")
    Demo(plan, out, term).run()
  except (DemoError, ValueError, RuntimeError) as e:
    print(f"demo: error: {e}", file=sys.stderr)
    return 1
  return 0
