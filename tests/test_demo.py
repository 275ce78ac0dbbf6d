"""The main job: the fast demo end to end (what CI runs), and the demo's plan, progress and output rules."""

from __future__ import annotations

import dataclasses
import io
import os
import json
import logging
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import yaml

from conftest import REPO, subprocess_env
from data_loaders.sources import LWMDataSource, expand_files
from lwm_plugin.demo import plan as demo_plan
from lwm_plugin import step_metrics
from lwm_plugin.demo import progress, vision_eval, vqgan_round_trip
from lwm_plugin.demo.run import DemoError, MARKER, _fresh_output_dir
from lwm_plugin.step_metrics import StepRecord


def _png_size(path) -> tuple[int, int]:
  """Width and height of a PNG, after checking its signature and its IHDR chunk's CRC."""
  data = path.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
  length, kind = struct.unpack(">I4s", data[8:16])
  assert kind == b"IHDR" and length == 13
  (crc,) = struct.unpack(">I", data[29:33])
  assert crc == zlib.crc32(data[12:29]), f"{path}: bad IHDR checksum"
  assert data[-12:-8] == b"\x00\x00\x00\x00" and data[-8:-4] == b"IEND", f"{path}: truncated"
  return struct.unpack(">II", data[16:24])


@pytest.mark.slow
def test_fast_demo_end_to_end(tmp_path):
  out = tmp_path / "demo_output"
  proc = subprocess.run([sys.executable, "-m", "lwm_plugin.demo"], cwd=REPO, capture_output=True, text=True,
                        timeout=900, check=False,
                        env=subprocess_env(1, LWM_DEMO_FAST="1", LWM_DEMO_OUTPUT=str(out), XLA_FLAGS=""))
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  plan = demo_plan.FAST
  n = len(plan.stages)
  for i, stage in enumerate(plan.stages, 1):
    assert f"[stage {i}/{n} {stage.name}] step {stage.steps:>4}/{stage.steps}  loss" in proc.stdout
  assert re.search(r"tokens/s  ETA stage \d+:\d\d, demo \d+:\d\d", proc.stdout)
  assert "Config param" not in proc.stdout  # MaxText's output went to the logs
  report = (out / "report.md").read_text()
  for stage in plan.stages:
    assert re.search(rf"\| {re.escape(stage.name)} \| `{stage.config}` \|", report), stage.name
    assert (out / "logs" / f"{stage.name}.log").stat().st_size > 0
  for name in ("single", "multi_n2_r2"):
    width, height = _png_size(out / f"needle_{name}.png")
    assert width > 100 and height > 100
    results = json.loads((out / f"needle_{name}.json").read_text())
    assert len(results["trials"]) == len(plan.grid.context_lengths) * len(plan.grid.depths) * plan.grid.rounds
    assert f"mean accuracy {results['mean_accuracy']:.2f}" in report
  hf_config = json.loads((out / "hf" / plan.final_stage.name / "config.json").read_text())
  assert hf_config["architectures"] == ["LlamaForCausalLM"] and hf_config["vocab_size"] == 1408
  assert json.loads((out / "hf" / plan.needle_model / "config.json").read_text())["vocab_size"] == 1024
  assert (out / MARKER).exists() and not (out / "hf_import").exists() and not (out / "vision_import").exists()
  _check_summary(json.loads((out / "summary.json").read_text()), plan, out)
  assert "## Vision: understanding and generation" in report and "toy codebook, not VQGAN codes" in report
  assert "vision_generation.png" in report and "vision_understanding.png" in report
  assert "### Pictures through `lwm-vision`'s VQGAN" in report and "![round trip](vqgan_round_trip.png)" in report
  assert "the demo's toy VQGAN" in report
  assert len(list((out / "vqgan" / "decoded").glob("scene_*.png"))) == summary_pictures(out)
  assert "## Long-context QA data (`lwm-make-qa`)" in report and "Every example was read back by the loader" in report
  books = (out / "longqa_books.jsonl").read_text().splitlines()
  assert len(books) == len(plan.qa.book_sentences) and (out / "longqa" / "make_qa.json").is_file()


def summary_pictures(out) -> int:
  return json.loads((out / "summary.json").read_text())["vqgan"]["images"]


def _check_summary(summary, plan, out):
  """summary.json's structure (not its accuracies): phases, one entry per stage, grids lengths x depths, vision."""
  assert summary["mode"] == plan.mode and summary["wall_s"] > 0
  assert {f"train {s.name}" for s in plan.stages} | {"data", "needle evaluation", "long-context QA data",
                                                      "vision evaluation"} <= set(
      summary["phases_s"]) and all(v >= 0 for v in summary["phases_s"].values())
  assert [s["name"] for s in summary["stages"]] == [s.name for s in plan.stages]
  for entry, stage in zip(summary["stages"], plan.stages):
    assert len(entry["losses"]) == stage.steps
    assert (entry["loss_first"], entry["loss_last"]) == (entry["losses"][0], entry["losses"][-1])
  assert set(summary["needle"]) == {"single", f"multi N={plan.grid.multi[0]} R={plan.grid.multi[1]}"}
  for task in summary["needle"].values():
    assert task["context_lengths"] == list(plan.grid.context_lengths) and task["depths"] == list(plan.grid.depths)
    for field in ("accuracy", "city_named", "chars_right"):
      grid = task[field]
      assert len(grid) == len(plan.grid.depths) and all(len(row) == len(plan.grid.context_lengths) for row in grid)
      assert all(0.0 <= x <= 1.0 for row in grid for x in row)
  qa = summary["longqa"]  # the fast plan asks once per chunk (no retries): a chunk is a QA pair or a reject
  assert qa["books"] == len(plan.qa.book_sentences) and qa["chunks"] >= 1
  assert qa["qa_pairs"] + qa["rejects"] == qa["chunks"] and set(qa["examples"]) == {str(n) for n in plan.qa.lengths}
  trained = f"One `{plan.needle_model}` training step" in (out / "report.md").read_text()
  assert trained == any(qa["examples"].values()) == (qa["step_loss"] is not None)
  assert 0 <= qa["grounded"] <= qa["pairs_with_fact"] <= qa["pairs_used"] <= qa["qa_pairs"] and qa["output"] == "longqa"
  trip = summary["vqgan"]
  assert trip["images"] >= 1 and trip["codes_per_image"] == 256 and trip["toy_weights"] and "VQGAN round trip" in (
      summary["phases_s"]) and 0.0 <= trip["cell_colour"] <= 1.0 and trip["figure"] == "vqgan_round_trip.png"
  assert len((out / trip["codes"]).read_text().splitlines()) == trip["images"]
  vision = summary["vision"]
  assert vision["prompts"] >= 1 and vision["layout"] in ("chat", "raw")
  for task in ("understanding", "generation"):
    assert set(vision[task]) == {"correct", "colour", "shape", "background"}
    assert all(0.0 <= x <= 1.0 for x in vision[task].values())
  for key in ("generation_png", "understanding_png"):
    width, height = _png_size(out / vision[key])
    assert width > 100 and height > 100
  trials = json.loads((out / vision["results"]).read_text())["trials"]
  side = vision["grid"]  # the demo's toy frames (8 x 8), every stage run with lwm_tokens_per_frame = side ** 2
  assert side == demo_plan.FAST.corpus.grid and len(trials) == vision["prompts"]
  assert all(len(t["generation"]["frame"]) == side * side and len(t["codes"]) == side * side for t in trials)


def test_plan_from_env():
  assert demo_plan.plan_from_env({}) is demo_plan.FULL
  assert demo_plan.plan_from_env({"LWM_DEMO_FAST": "1"}) is demo_plan.FAST
  assert demo_plan.plan_from_env({"LWM_DEMO_FAST": "no"}) is demo_plan.FULL
  with pytest.raises(ValueError, match="LWM_DEMO_FAST='fats'"):
    demo_plan.plan_from_env({"LWM_DEMO_FAST": "fats"})


@pytest.mark.parametrize("plan", [demo_plan.FULL, demo_plan.FAST], ids=lambda p: p.mode)
def test_plans_chain_shipped_configs(plan):
  from maxtext_configs import config_path  # pylint: disable=import-outside-toplevel

  assert all(config_path(s.config).is_file() for s in plan.stages)
  kinds = [s.config.split("_")[1] for s in plan.stages]
  assert "text" in kinds and "vision" in kinds and [s.extend_vocab for s in plan.stages].count(True) == 1
  assert plan.stages[0].init is None and all(s.init for s in plan.stages[1:])


@pytest.mark.parametrize("plan", [demo_plan.FULL, demo_plan.FAST], ids=lambda p: p.mode)
def test_plan_data_sources_are_valid_loader_sources_of_the_corpus(plan, tiny_lwm_data):
  """A stage's `lwm_data_sources=` override is YAML of loader sources; every file is one the corpus writes."""
  overridden = [(s.name, a.partition("=")[2]) for s in plan.stages for a in s.overrides
                if a.startswith("lwm_data_sources=")]
  assert [name for name, _ in overridden] == [s.name for s in plan.stages if s.config.startswith("tiny_vision_")
                                              and s.config != "tiny_vision_chat_4k.yml"]
  for name, value in overridden:
    sources = [LWMDataSource(**{**item, "files": item["files"].replace("${lwm_data_dir}", str(tiny_lwm_data))})
               for item in yaml.safe_load(value)]
    assert abs(sum(s.weight for s in sources) - 1.0) < 1e-9, name
    assert {s.fields for s in sources} == {"[caption],vision", "[vision],caption", None}, name
    for source in sources:
      expand_files(source.files, name)


def test_plan_rejects_a_stage_that_starts_from_a_later_one():
  with pytest.raises(ValueError, match="initialises from 'b'"):
    stages = (demo_plan.Stage("a.yml", 1, init="b"), demo_plan.Stage("b.yml", 1))
    demo_plan.Plan("x", demo_plan.FAST.corpus, stages, "a", demo_plan.FAST.grid, demo_plan.FAST.qa)


def _record(step: int, loss: float, seconds: float) -> StepRecord:
  return StepRecord(step=step, steps=11, loss=loss, text_loss=loss, vision_loss=0.0, text_tokens=4096,
                    vision_tokens=0, seconds=seconds, tokens_per_s=4096 / seconds)


def test_step_watcher_reads_our_step_records_and_estimates_time():
  out, now = io.StringIO(), iter([0.0, 12.0, 12.0])
  watcher = progress.StepWatcher(out, "stage 2/3 tiny-text-2k", steps=11, tokens_per_step=4096,
                                 remaining=[(20, 8192)], overhead_s=30.0, tail_s=60.0, now=lambda: next(now))
  with progress.watching(watcher):
    logging.getLogger(step_metrics.LOGGER).warning("completed step: 4, seconds: 0.5, loss: 9.0")  # text: ignored
    step_metrics.publish(_record(4, 5.123, 0.5))
  assert logging.getLogger(step_metrics.LOGGER).handlers.count(watcher) == 0
  step_metrics.publish(_record(5, 5.0, 0.5))  # after the block: not seen
  # step 5 of 11 at 0.5 s: 3 s left; the next stage 20 x 8192 tokens at 0.5 s / 4096 tokens = 20 s, + 30 s
  # start-up, + 60 s tail = 113 s.
  assert out.getvalue() == ("[stage 2/3 tiny-text-2k] step    5/11  loss   5.123     8,192 tokens/s  "
                            "ETA stage 0:03, demo 1:53\n")
  assert watcher.setup_seconds() == 12.0 and [r.loss for r in watcher.records] == [5.123]


def test_quiet_output_sends_file_descriptors_to_the_log(tmp_path, capfd):
  term = progress.terminal_stream()
  with progress.quiet_output(tmp_path / "x.log", term):
    os.write(1, b"to the log\n")
    subprocess.run(["echo", "from a child"], check=True)
    term.write("to the terminal\n")
  term.close()
  assert (tmp_path / "x.log").read_text() == "to the log\nfrom a child\n"
  assert capfd.readouterr().out == "to the terminal\n"


def test_output_dir_is_only_wiped_when_the_demo_wrote_it(tmp_path):
  foreign = tmp_path / "mine"
  foreign.mkdir()
  (foreign / "notes.txt").write_text("keep me")
  with pytest.raises(DemoError, match="was not written by the demo"):
    _fresh_output_dir(foreign)
  assert (foreign / "notes.txt").read_text() == "keep me"
  ours = tmp_path / "demo_output"
  _fresh_output_dir(ours)
  (ours / "runs").mkdir()
  _fresh_output_dir(ours)
  assert sorted(p.name for p in ours.iterdir()) == [MARKER]


@pytest.mark.parametrize("seconds, text", [(0, "0:00"), (59.6, "1:00"), (754, "12:34"), (3723, "1:02:03")])
def test_clock(seconds, text):
  assert progress.clock(seconds) == text


def test_jax_environment_must_come_before_jax():
  code = ("import jax\nfrom lwm_plugin.demo import jax_env\n"
          "try:\n  jax_env.configure()\nexcept RuntimeError as e:\n  print('REFUSED:', e)\n")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(1), capture_output=True,
                        text=True, timeout=120, check=True)
  assert "REFUSED: the demo must configure JAX before it is imported" in proc.stdout


def test_report_lists_stages_and_reads_accuracies_from_the_results(tmp_path):
  import types  # pylint: disable=import-outside-toplevel

  import numpy as np  # pylint: disable=import-outside-toplevel

  from lwm_plugin.demo import report  # pylint: disable=import-outside-toplevel
  from lwm_plugin.evaluation import needle  # pylint: disable=import-outside-toplevel

  plan = demo_plan.FAST
  stages = [types.SimpleNamespace(stage=s, context=1024, rope_theta=1e4, tokens_per_step=4096, losses=[6.0, 5.0],
                                  text_loss=5.0, vision_loss=None, tokens_per_s=8000.0, setup_s=20.0,
                                  wall_s=30.0) for s in plan.stages]
  trials = [needle.Trial(n, d, 0, ["Oslo"], ["1234567"], np.zeros(3, np.int32))
            for n in (500, 1000) for d in (0.0, 1.0)]
  for t, answer in zip(trials, ["Oslo 1234567", "Oslo 1234000", "Rome 7654321", "x"]):
    t.response, t.score = answer, needle.score_answer(answer, t.values)
    t.city_named, t.chars_right = needle.partial_credit(answer, t.cities, t.values)
  results = needle.write_results(tmp_path / "needle_single.json", needle.NeedleTask(), trials)
  result = types.SimpleNamespace(task="single", results=results, heatmap=tmp_path / "needle_single.png", mean=0.25)

  def render(needle_result):
    return report.render(report.Summary(plan=plan, stages=stages, needles=[needle_result],
                                        hf_final=tmp_path / "hf" / "a", hf_needle=tmp_path / "hf" / "b",
                                        timings={"data": 1.0}, wall_s=100.0, devices=4, machine="test",
                                        needle_model_size="2 layers, 64 wide"), tmp_path)

  text = render(result)
  for stage in plan.stages:
    assert f"| {stage.name} | `{stage.config}` |" in text
  assert "| 0% | 1.00 | 0.00 |" in text and "| 100% | 0.00 | 0.00 |" in text
  # per context length: accuracy (1 + 0) / 2 -> 0; cities (1 + 1) / 2 -> (0 + 0) / 2; digits (1 + 4/7) / 2 -> 0.
  assert "accuracy 0.50 → 0.00" in text and "names the asked city 1.00 → 0.00" in text
  assert "gets 0.79 → 0.07 of the number's digits (chance 0.10) right" in text
  assert "No needle was retrieved" not in text and "without matching the asked city" not in text  # one needle
  assert "| 5.000 / — |" in text  # text stages show no vision loss
  nothing = render(types.SimpleNamespace(**{**vars(result), "mean": 0.0}))
  assert "**No needle was retrieved.** The tiny model (2 layers, 64 wide)" in nothing
  multi = needle.write_results(tmp_path / "needle_multi.json", needle.NeedleTask(4, 1, "word"), trials)
  text = render(types.SimpleNamespace(**{**vars(result), "task": "multi", "results": multi}))
  assert "copies the value of one of the 4 needles without matching the asked city scores 0.25" in text
  assert "of the word's letters right" in text

  scores = {"correct": 0.5, "colour": 0.75, "shape": 0.5, "background": 0.25}
  vision = vision_eval.VisionResult(understanding=scores, generation={**scores, "correct": 0.25}, prompts=4,
                                    layout="raw", cfg_scale=1.5, grid=8, seen_in_training=1,
                                    results=tmp_path / "vision.json", generation_png=tmp_path / "vision_generation.png",
                                    understanding_png=tmp_path / "vision_understanding.png", wall_s=12.0)
  trip = vqgan_round_trip.RoundTripResult(weights="/w/vqvae", toy_weights=False, images=4, codes_per_image=256,
                                          codebook_size=8192, cell_colour=0.875, psnr_db=21.04,
                                          codes=tmp_path / "vqgan" / "codes.jsonl",
                                          figure=tmp_path / "vqgan_round_trip.png", wall_s=5.0)
  summary = report.Summary(plan=plan, stages=stages, needles=[result], hf_final=tmp_path / "hf" / "a",
                           hf_needle=tmp_path / "hf" / "b", timings={"data": 1.0}, wall_s=100.0, devices=4,
                           machine="test", needle_model_size="2 layers, 64 wide", vision=vision, vqgan=trip)
  text = report.render(summary, tmp_path)
  assert "with `/w/vqvae` (LWM_DEMO_VQGAN). Scored against the rendered pictures: cell colours right **0.88**" in text
  assert "PSNR 21.0 dB" in text and "Codes: `vqgan/codes.jsonl`" in text
  assert "| image understanding (answer greedy, text ids) | 0.50 | 0.75 | 0.50 | 0.25 |" in text
  assert "on the 8 × 8 code grid (LWM's VQGAN: 16 × 16)" in text
  assert "| text-to-image (greedy, guidance 1.5) | 0.25 | 0.75 |" in text
  assert "Guidance 1.5 is against `<s><vision>`, a branch the demo's vision stages do not train" in text
  assert "![generation](vision_generation.png)" in text and "1 of their captions also occur" in text
  doc = report.summary_json(summary, tmp_path)
  assert doc["phases_s"] == {**{f"train {s.name}": 30.0 for s in plan.stages}, "data": 1.0}
  assert [s["losses"] for s in doc["stages"]] == [[6.0, 5.0]] * len(plan.stages)
  assert doc["needle"]["single"]["accuracy"] == [[1.0, 0.0], [0.0, 0.0]]  # depth 0 / 100% x lengths 500 / 1000
  assert np.allclose(doc["needle"]["single"]["chars_right"], [[1.0, 1 / 7], [4 / 7, 0.0]])
  assert doc["vision"]["prompts"] == 4 and doc["vision"]["results"] == "vision.json"   # paths relative to the output
  assert doc["vqgan"]["codes"] == "vqgan/codes.jsonl" and doc["vqgan"]["cell_colour"] == 0.875
  assert doc["longqa"] is None
  outside = dataclasses.replace(trip, figure=Path("/elsewhere/figure.png"))
  assert report.result_json(outside, tmp_path)["figure"] == "/elsewhere/figure.png"
  json.dumps(doc)
