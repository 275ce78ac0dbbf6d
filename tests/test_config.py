"""Config lookup, the YAML chain, precise errors for unknown keys, and every shipped YAML loading."""

import json
from pathlib import Path

import pytest

import maxtext_configs
from lwm_plugin import integration
from lwm_plugin.config.lwm_config import check_keys
from lwm_plugin.config.files import ConfigError, config_chain, peek, resolve_config_file


@pytest.mark.parametrize("path", maxtext_configs.shipped_configs(), ids=lambda p: p.name)
def test_every_shipped_yaml_loads_through_the_real_config_class(path: Path):
  check_keys(str(path), [])
  cfg = integration.resolve_config(["test", str(path)])
  assert cfg.model_name == "default"  # no MaxText model YAML can override our dims
  assert cfg.decoder_block.value == "llama2"
  json.dumps(cfg.model_dump(mode="json"))  # --print-config must be able to serialise it


def test_resolve_config_file_finds_shipped_names(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  expected = str(maxtext_configs.config_path("tiny_cpu.yml"))
  assert resolve_config_file("tiny_cpu.yml") == expected
  assert resolve_config_file("maxtext_configs/tiny_cpu.yml") == expected
  with pytest.raises(ConfigError, match="not found"):
    resolve_config_file("nope.yml")
  with pytest.raises(ConfigError, match=r"must end in '\.yml'"):
    resolve_config_file("tiny_cpu.yaml")


def test_chain_follows_base_config_like_maxtext():
  files = [Path(p).name for p, _ in config_chain(str(maxtext_configs.config_path("tiny_cpu.yml")))]
  assert files == ["tiny_cpu.yml", "tiny.yml", "lwm_base.yml", "base.yml"]


def test_unknown_key_in_yaml_names_file_and_line(tmp_path):
  bad = tmp_path / "bad.yml"
  bad.write_text(f"base_config: {maxtext_configs.config_path('tiny_cpu.yml')}\nsteps: 3\nlearnig_rate: 0.1\n")
  with pytest.raises(ConfigError, match=rf"{bad}:3: unknown config key 'learnig_rate'; did you mean 'learning_rate'"):
    check_keys(str(bad), [])


def test_unknown_key_on_command_line_is_named():
  cfg = str(maxtext_configs.config_path("tiny_cpu.yml"))
  with pytest.raises(ConfigError, match=r"command-line argument 'stepz=3': unknown config key 'stepz'"):
    check_keys(cfg, ["steps=3", "stepz=3"])
  with pytest.raises(ConfigError, match="expected key=value"):
    check_keys(cfg, ["steps"])
  check_keys(cfg, ["lwm_stage=x", "steps=3"])  # our keys and MaxText's keys are both valid


def test_peek_reads_overrides_then_chain(monkeypatch):
  cfg = str(maxtext_configs.config_path("tiny_cpu.yml"))
  assert peek(cfg, [], "hardware") == "cpu"
  assert peek(cfg, ["hardware=tpu"], "hardware") == "tpu"
  assert peek(cfg, [], "base_emb_dim") == 64  # from models/tiny.yml
  monkeypatch.setenv("M_HARDWARE", "gpu")
  assert peek(cfg, ["hardware=tpu"], "hardware") == "gpu"
