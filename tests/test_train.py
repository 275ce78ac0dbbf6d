"""`lwm-train` end to end in subprocesses: training, checkpoints, errors, multi-device, --print-config."""

import json
import re
import math

import pytest

from conftest import read_metrics, run_lwm_train


def _losses(metrics_file):
  return [m["learning/loss"] for m in read_metrics(metrics_file)]


@pytest.mark.slow
def test_tiny_cpu_trains_with_decreasing_loss_and_writes_a_checkpoint(tmp_path):
  metrics = tmp_path / "metrics.jsonl"
  proc = run_lwm_train(["maxtext_configs/tiny_cpu.yml", "steps=20", f"base_output_directory={tmp_path}",
                        "run_name=e2e", f"metrics_file={metrics}", "enable_checkpointing=true",
                        "checkpoint_period=10"])
  assert proc.returncode == 0, proc.stderr[-6000:]
  assert re.search(r"lwm_plugin seam: \d+ patches, installed", proc.stderr)  # the install report is logged
  losses = _losses(metrics)
  assert len(losses) == 20 and all(math.isfinite(x) for x in losses)
  assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5, losses
  steps = sorted(int(p.name) for p in (tmp_path / "e2e" / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [0, 10, 19], steps
  assert (tmp_path / "e2e" / "checkpoints" / "19" / "items").is_dir()


@pytest.mark.slow
def test_four_fake_devices_with_fsdp(tmp_path):
  metrics = tmp_path / "metrics.jsonl"
  proc = run_lwm_train(["tiny_cpu.yml", "steps=5", "ici_fsdp_parallelism=4", f"base_output_directory={tmp_path}",
                        f"metrics_file={metrics}"], devices=4)
  assert proc.returncode == 0, proc.stderr[-6000:]
  rows = read_metrics(metrics)
  assert len(rows) == 5
  # per_device_batch_size 4 x 4 devices x 256 tokens: the global batch spans all four devices.
  assert rows[0]["learning/total_weights"] == 4 * 4 * 256


def test_print_config_is_one_json_line(tmp_path):
  proc = run_lwm_train(["tiny_cpu.yml", "steps=7", "--print-config"], cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-4000:]
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 1
  cfg = json.loads(lines[0])
  assert cfg["steps"] == 7 and cfg["lwm_stage"] == "tiny-cpu" and cfg["base_emb_dim"] == 64
  assert cfg["hardware"] == "cpu"
