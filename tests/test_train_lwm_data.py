"""`lwm-train tiny_cpu_lwm_data.yml` end to end: the LWM loader feeds MaxText (train and eval),
per-modality metrics, one compilation, and kill-and-resume (with gradient accumulation) equal to an uninterrupted run."""

import json
import math
import re
import shutil

import pytest

from conftest import read_metrics, run_lwm_train

FAST = ["max_target_length=320", "lwm_max_frames=1", "enable_checkpointing=true", "checkpoint_period=5"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_lwm_data):
  """A working directory holding tiny_lwm_data/, as the config's relative paths expect."""
  work = tmp_path_factory.mktemp("train")
  shutil.copytree(tiny_lwm_data, work / "tiny_lwm_data")
  return work


@pytest.fixture(scope="module")
def uninterrupted(workdir):
  out = workdir / "uninterrupted"
  proc = run_lwm_train(["tiny_cpu_lwm_data.yml", "steps=10", f"base_output_directory={out}", "run_name=run",
                        f"metrics_file={out}/metrics.jsonl", *FAST, "eval_interval=5", "eval_steps=2",
                        "lwm_eval_data_sources=[{name: eval, files: tiny_lwm_data/image.jsonl}]",
                        "grain_worker_count_eval=0"], cwd=workdir, JAX_LOG_COMPILES="1")
  assert proc.returncode == 0, proc.stderr[-6000:]
  return out, proc


@pytest.mark.slow
def test_the_lwm_loader_feeds_training_with_per_modality_metrics(uninterrupted):
  out, proc = uninterrupted
  assert "LWM loader feeds training (dataset_type=grain, 4 sources)" in proc.stderr
  assert "packing group 'qa'" in proc.stderr
  # MaxText 0.2.5 truncates the metrics file whenever it writes eval step 0 (write_metrics_locally), so the
  # file keeps the train rows after the last evaluation (after step 5): steps 5..9.
  rows = [r for r in read_metrics(out / "metrics.jsonl") if "learning/loss" in r]
  assert [int(r["step"]) for r in rows] == [5, 6, 7, 8, 9]
  evals = re.findall(r"Completed eval after train step (\d+), loss=([\d.]+)", proc.stderr)
  assert [int(step) for step, _ in evals] == [0, 5] and all(math.isfinite(float(loss)) for _, loss in evals)
  for row in rows:
    assert all(math.isfinite(row[k]) for k in ("learning/loss", "lwm/text_loss", "lwm/vision_loss"))
    assert row["lwm/text_tokens"] + row["lwm/vision_tokens"] == row["learning/total_weights"]
    assert row["lwm/text_examples"] >= 1 and isinstance(row["learning/z_loss"], float)
    expected = 0.5 * row["lwm/text_loss"] + 0.5 * row["lwm/vision_loss"]  # lambda = 0.5 / 0.5
    assert row["learning/loss"] == pytest.approx(expected, rel=1e-5)
  assert sum(r["lwm/vision_examples"] > 0 for r in rows) >= 3  # images and videos arrive
  # The AOT shape includes the loader's keys: the train step compiles exactly once.
  assert proc.stderr.count("Compiling jit(train_step)") == 1, proc.stderr.count("Compiling jit(train_step)")


@pytest.mark.slow
def test_kill_and_resume_with_gradient_accumulation_equals_the_uninterrupted_run(uninterrupted, workdir):
  out, _ = uninterrupted
  state = out / "run" / "checkpoints" / "5" / "iter" / "process_0-of-1.json"
  assert '"counts"' in state.read_text()  # the LWM loader's iterator state is in MaxText's checkpoint
  # Killed right after the checkpoint of step 5: a copy of the run without its later checkpoints.
  resumed = workdir / "resumed"
  shutil.copytree(out / "run", resumed / "run")
  shutil.rmtree(resumed / "run" / "checkpoints" / "9")
  proc = run_lwm_train(["tiny_cpu_lwm_data.yml", "steps=10", f"base_output_directory={resumed}", "run_name=run",
                        f"metrics_file={resumed}/metrics.jsonl", *FAST, "per_device_batch_size=2",
                        "gradient_accumulation_steps=2"], cwd=workdir)
  assert proc.returncode == 0, proc.stderr[-6000:]
  before = {int(r["step"]): r for r in read_metrics(out / "metrics.jsonl") if "learning/loss" in r}
  after = {int(r["step"]): r for r in read_metrics(resumed / "metrics.jsonl")}
  assert sorted(after) == [6, 7, 8, 9]
  for step, row in after.items():
    ref = before[step]
    assert row["lwm/batch_fingerprint"] == ref["lwm/batch_fingerprint"], step  # same examples, same order
    for key in ("lwm/text_tokens", "lwm/vision_tokens", "lwm/text_examples", "lwm/vision_examples"):
      assert row[key] == ref[key], (step, key)
    for key in ("learning/loss", "lwm/text_loss", "lwm/vision_loss", "learning/raw_grad_norm"):
      assert row[key] == pytest.approx(ref[key], rel=1e-5), (step, key)
  json.loads(state.read_text())
