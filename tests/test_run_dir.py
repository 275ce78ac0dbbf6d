"""`lwm_plugin.run_dir`: the fingerprint beside a run's checkpoints, refused resumes, and one run_name per config."""

import json
import os
import stat

import pydantic
import pytest

import maxtext_configs
from lwm_plugin import run_dir
from lwm_plugin.config.files import ConfigError, peek


class FakeConfig(pydantic.BaseModel):
  """The keys run_dir reads, as the resolved (pydantic) config has them."""
  base_output_directory: str
  run_name: str = "run"
  lwm_stage: str = "tiny-cpu"
  model_name: str = "default"
  decoder_block: str = "llama2"
  base_num_decoder_layers: int = 2
  base_emb_dim: int = 64
  base_num_query_heads: int = 4
  base_num_kv_heads: int = 2
  head_dim: int = 16
  base_mlp_dim: int = 128
  vocab_size: int = 512


def _checkpoint(config, step=5):
  (run_dir.run_dir(config) / "checkpoints" / str(step) / "items").mkdir(parents=True)


def test_a_fresh_directory_is_recorded_with_umask_permissions(tmp_path):
  config = FakeConfig(base_output_directory=str(tmp_path))
  run_dir.check_resume(config, "a.yml")  # nothing there: fine
  resolved = run_dir.record_start(config, "a.yml")
  record = json.loads((tmp_path / "run" / "lwm_run.json").read_text())
  assert record == {"config_file": "a.yml", "stage": "tiny-cpu",
                    "model": {k: getattr(config, k) for k in run_dir.MODEL_KEYS}}
  assert json.loads(resolved.read_text())["base_emb_dim"] == 64
  assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["lwm_config.json", "lwm_run.json"]  # no temp left
  mode = stat.S_IMODE((tmp_path / "run" / "lwm_run.json").stat().st_mode)
  mask = os.umask(0)
  os.umask(mask)
  assert mode == 0o666 & ~mask


def test_the_same_config_resumes_its_own_checkpoints(tmp_path):
  config = FakeConfig(base_output_directory=str(tmp_path))
  run_dir.record_start(config, "a.yml")
  _checkpoint(config)
  run_dir.check_resume(config, "/elsewhere/a_copy.yml")  # same stage and model: the file's path does not matter


@pytest.mark.parametrize("change", [{"lwm_stage": "tiny-cpu-ring"}, {"base_emb_dim": 128}, {"vocab_size": 1408}])
def test_another_stage_or_model_is_refused_naming_both_configs(tmp_path, change):
  first = FakeConfig(base_output_directory=str(tmp_path))
  run_dir.record_start(first, "first.yml")
  _checkpoint(first)
  second = first.model_copy(update=change)
  with pytest.raises(ConfigError) as err:
    run_dir.check_resume(second, "second.yml")
  message = str(err.value)
  assert "first.yml" in message and "second.yml" in message and "run_name 'run'" in message
  assert "steps 5" in message and "choose another run_name" in message
  key, value = next(iter(change.items()))
  assert (f"stage {value!r}" if key == "lwm_stage" else f"{key}={value}") in message


def test_a_differing_fingerprint_without_checkpoints_is_no_resume(tmp_path):
  first = FakeConfig(base_output_directory=str(tmp_path))
  run_dir.record_start(first, "first.yml")
  run_dir.check_resume(first.model_copy(update={"base_emb_dim": 128}), "second.yml")


def test_checkpoints_without_a_fingerprint_are_refused(tmp_path):
  config = FakeConfig(base_output_directory=str(tmp_path))
  _checkpoint(config, 0)
  with pytest.raises(ConfigError, match=r"holds checkpoints \(steps 0\) but no lwm_run.json"):
    run_dir.check_resume(config, "a.yml")


def test_every_shipped_config_has_its_own_run_name():
  names = {p.name: peek(str(p), [], "run_name") for p in maxtext_configs.CONFIG_DIR.glob("*.yml")}
  assert all(names.values()), names
  assert len(set(names.values())) == len(names), sorted(names.items(), key=lambda kv: kv[1])
