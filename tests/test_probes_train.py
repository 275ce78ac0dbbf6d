"""Bad inputs x `lwm-train`, as a new user would try them: each probe checks the exit code, the message, and
(for errors caught before training) that nothing was written.

Exit codes: 2 for a config or usage error (before anything is written), 1 for a failed run; a data-loader error
is the last line on stderr (`file:line: reason` for a bad line), with and without Grain worker processes.
Data: the tiny LWM dataset; one source of 40 good text lines and a bad 41st, which the loader reaches after a few
training steps (with workers, batches already in flight and in shared memory when the run fails).
"""

import json
import shutil

import pytest

import maxtext_configs
from conftest import run_lwm_train

FAST = ["steps=2", "max_target_length=320", "lwm_max_frames=1", "per_device_batch_size=2"]
GOOD_LINES = 40


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_lwm_data):
  work = tmp_path_factory.mktemp("probes")
  shutil.copytree(tiny_lwm_data, work / "tiny_lwm_data")
  return work


def _files(root):
  """Every path under `root` with its size and modification time (to show nothing was written)."""
  return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def _image_line(workdir, **change):
  obj = json.loads((workdir / "tiny_lwm_data" / "image.jsonl").read_text().splitlines()[0])
  for key, value in change.items():
    if value is None:
      del obj[key]
    else:
      obj[key] = value
  return json.dumps(obj)


def _codes(workdir, first):
  codes = json.loads((workdir / "tiny_lwm_data" / "image.jsonl").read_text().splitlines()[0])["vision"]
  return [first] + codes[1:]


def test_unknown_key_exits_2_and_writes_nothing(tmp_path):
  proc = run_lwm_train(["tiny_cpu.yml", "stepz=3", f"base_output_directory={tmp_path}/out"], cwd=tmp_path)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines()[-1] == ("lwm-train: error: command-line argument 'stepz=3': unknown config "
                                                  "key 'stepz'; did you mean 'steps'?")
  assert list(tmp_path.iterdir()) == []


def test_missing_data_dir_exits_2_and_writes_nothing(tmp_path):
  proc = run_lwm_train(["tiny_text_1k.yml", f"lwm_data_dir={tmp_path}/nope", f"base_output_directory={tmp_path}/out"],
                       cwd=tmp_path)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines()[-1] == (f"lwm-train: error: {maxtext_configs.CONFIG_DIR}/tiny_text_1k.yml: "
                                                  f"lwm_data_dir='{tmp_path}/nope' is not a directory "
                                                  f"(relative paths start at {tmp_path})")
  assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("text, line", [("steps: 2\nhardware: [cpu\n", 2), ("steps: 2\n\xff\n", None)])
def test_config_that_is_not_valid_yaml_exits_2_and_writes_nothing(tmp_path, text, line):
  """A YAML syntax error names file and line; a file that is not UTF-8 names the file (no traceback)."""
  (tmp_path / "bad.yml").write_bytes(text.encode("latin-1"))
  proc = run_lwm_train(["bad.yml"], cwd=tmp_path)
  assert proc.returncode == 2, proc.stderr[-3000:]
  where = f"{tmp_path}/bad.yml:{line}: not valid YAML: " if line else f"{tmp_path}/bad.yml: cannot read the config file: "
  assert proc.stderr.strip().splitlines()[-1].startswith(f"lwm-train: error: {where}"), proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  assert [p.name for p in tmp_path.iterdir()] == ["bad.yml"]


@pytest.mark.slow
@pytest.mark.parametrize("case, workers", [("json", 0), ("code", 1), ("missing", 0)])
def test_a_bad_line_fails_the_run_with_file_line_last(workdir, case, workers):
  """One run per kind (each compiles the step, ~45 s); a negative code takes the same path as code 64
  (test_lwm_format checks both messages), one case crosses a Grain worker process."""
  bad = {
      "json": ('{"fields": "text", "text": "broken', "malformed JSON (Unterminated string"),
      "code": (_image_line(workdir, vision=_codes(workdir, 64)), "field 'vision': vision code 64 out of range [0, 64)"),
      "missing": (_image_line(workdir, caption=None), "missing field 'caption' named by fields spec"),
  }
  line, reason = bad[case]
  name = f"bad_{case}.jsonl"
  good = (workdir / "tiny_lwm_data" / "text.jsonl").read_text().splitlines()[:GOOD_LINES]
  (workdir / name).write_text("\n".join([*good, line]) + "\n")
  proc = run_lwm_train(["tiny_cpu_lwm_data.yml", *FAST, "steps=100", f"base_output_directory={workdir}/out_{case}",
                        f"lwm_data_sources=[{{name: bad, files: {name}}}]", f"grain_worker_count={workers}"],
                       cwd=workdir)
  assert proc.returncode == 1, proc.stderr[-6000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f"lwm-train: error: data loader: {name}:{GOOD_LINES + 1}: ") and reason in last, \
      proc.stderr[-3000:]
  assert "Training stopped" not in proc.stderr and "Traceback" not in proc.stderr
  assert "step 2/100 " in proc.stdout and "step 100/100 " not in proc.stdout  # it failed mid-run


@pytest.mark.slow
def test_a_missing_data_file_fails_the_run_naming_it(workdir):
  proc = run_lwm_train(["tiny_cpu_lwm_data.yml", *FAST, f"base_output_directory={workdir}/out_missing_file",
                        "lwm_data_sources=[{name: gone, files: no_such.jsonl}]"], cwd=workdir)
  assert proc.returncode == 1, proc.stderr[-6000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last == ("lwm-train: error: data loader: data source 'gone': 'no_such.jsonl' matches no file "
                  f"(relative paths start at {workdir})")
  assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_a_run_prints_a_summary_and_step_lines_and_another_config_cannot_resume_it(workdir):
  out = workdir / "shared_out"
  proc = run_lwm_train(["tiny_cpu.yml", "steps=2", f"base_output_directory={out}", "run_name=shared",
                        "enable_checkpointing=true", "checkpoint_period=1"], cwd=workdir)
  assert proc.returncode == 0, proc.stderr[-6000:]
  run = out / "shared"
  assert f"full config {run}/lwm_config.json" in proc.stdout and "stage       tiny-cpu" in proc.stdout
  steps = [line for line in proc.stdout.splitlines() if line.startswith("step ")]
  assert [s.split("  ")[0] for s in steps] == ["step 1/2", "step 2/2"] and all(" text " in s for s in steps)
  assert "Config param" not in proc.stderr and json.loads((run / "lwm_config.json").read_text())["steps"] == 2
  assert (run / "checkpoints" / "1").is_dir()

  before = _files(out)
  proc = run_lwm_train(["tiny_cpu_lwm_data.yml", *FAST, f"base_output_directory={out}", "run_name=shared"],
                       cwd=workdir)
  assert proc.returncode == 2, proc.stderr[-6000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("lwm-train: error: run_name 'shared': ") and "would resume them" in last
  assert f"{maxtext_configs.CONFIG_DIR}/tiny_cpu.yml (stage 'tiny-cpu';" in last
  assert f"{maxtext_configs.CONFIG_DIR}/tiny_cpu_lwm_data.yml (stage 'tiny-cpu-lwm-data';" in last
  assert _files(out) == before


def test_a_user_config_names_a_shipped_base_config_by_absolute_path(tmp_path):
  """The README's form; a bare shipped name is looked up next to the file and in MaxText's configs, and fails."""
  mine = tmp_path / "my_run.yml"
  mine.write_text(f"base_config: {maxtext_configs.CONFIG_DIR}/tiny_cpu.yml\nsteps: 7\n")
  proc = run_lwm_train([str(mine), "--print-config"], cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  config = json.loads(proc.stdout.strip().splitlines()[-1])
  assert config["steps"] == 7 and config["lwm_stage"] == "tiny-cpu" and config["base_emb_dim"] == 64

  mine.write_text("base_config: tiny_cpu.yml\nsteps: 7\n")
  proc = run_lwm_train([str(mine), "--print-config"], cwd=tmp_path)
  assert proc.returncode == 2 and "base_config file" in proc.stderr and "tiny_cpu.yml' not found" in proc.stderr
