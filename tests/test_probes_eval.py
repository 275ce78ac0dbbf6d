"""Probes of `lwm-eval` (lwm_plugin/evaluation/cli.py) with bad inputs, as a new user would type them.

Each probe runs `main([...])` in-process from an empty working directory and asserts the exit code
(2), the message (`lwm-eval: error: ...` naming what is wrong) and that nothing was written: not
the `--output` directory, not `hf_import/`, nothing else under the working directory.
"""

from __future__ import annotations

import json

import pytest
from helpers.usage_probe import probe_usage_error

from lwm_plugin.evaluation import cli as evaluate

TEXT = "tiny_text_chat_4k.yml"  # max_target_length 4096, ring attention over 4 devices, tokenizer from the data dir


def _probe(argv, tmp_path, monkeypatch, capsys, *, keep=()) -> str:
  return probe_usage_error(evaluate.main, argv, tmp_path, monkeypatch, capsys, keep=keep)


@pytest.fixture(name="items")
def fixture_items(tmp_path) -> str:
  """An existing (empty) MaxText items directory: enough to get past the --model check."""
  path = tmp_path / "ckpt" / "0" / "items"
  path.mkdir(parents=True)
  return str(path)


def _needle(model, *extra, config=TEXT):
  return ["needle", "--config", config, "--model", model, "--output", "out", *extra]


def test_missing_model_option(tmp_path, monkeypatch, capsys):
  err = _probe(["needle", "--config", TEXT, "--output", "out"], tmp_path, monkeypatch, capsys)
  assert "lwm-eval: error: the following arguments are required: --model" in err


def test_model_that_does_not_exist(tmp_path, monkeypatch, capsys):
  err = _probe(_needle("nowhere"), tmp_path, monkeypatch, capsys)
  assert "lwm-eval: error: --model nowhere: neither a MaxText checkpoint items directory nor a Hugging Face" in err


@pytest.mark.parametrize("length", [4065, 100_000])
def test_context_longer_than_the_model(length, items, tmp_path, monkeypatch, capsys):
  """4065 + 32 answer tokens is one over the model's 4096; 100000 used to end in an OOM after writing hf_import/."""
  err = _probe(_needle(items, "--context-lengths", f"1000,{length}"), tmp_path, monkeypatch, capsys)
  assert (f"lwm-eval: error: --context-lengths {length}: a {length}-token prompt plus up to 32 answer tokens exceeds "
          "the model's max_target_length 4096") in err
  assert "use lengths up to 4064" in err


def test_context_longer_than_an_overridden_model_length(items, tmp_path, monkeypatch, capsys):
  err = _probe(_needle(items, "--context-lengths", "2000", "max_target_length=640"), tmp_path, monkeypatch, capsys)
  assert "--context-lengths 2000: a 2000-token prompt plus up to 32 answer tokens exceeds the model's " \
         "max_target_length 640" in err


def test_multi_needle_answer_budget_counts(items, tmp_path, monkeypatch, capsys):
  err = _probe(_needle(items, "--context-lengths", "4040", "--needles", "4", "--asked", "2"), tmp_path, monkeypatch,
               capsys)
  assert "a 4040-token prompt plus up to 64 answer tokens exceeds" in err


@pytest.mark.parametrize("option, value, message", [
    ("--context-lengths", "1k", "argument --context-lengths: expected comma-separated ints, got '1k'"),
    ("--context-lengths", "0,512", "--context-lengths [0, 512]: expected one or more positive token counts"),
    ("--context-lengths", ",", "--context-lengths []: expected one or more positive token counts"),
    ("--depths", "0.5,1.5", r"--depths [0.5, 1.5]: expected one or more fractions in [0, 1]"),
    ("--depths", "half", "argument --depths: expected comma-separated floats, got 'half'"),
    ("--rounds", "0", "--rounds 0: expected at least 1"),
    ("--needles", "two", "argument --needles: invalid int value: 'two'"),
    ("--asked", "3", "need 1 <= asked (3) <= needles (1)"),
    ("--haystack", "no_such.txt", "--haystack no_such.txt: no such file"),
    ("--prompt-format", "gpt", "argument --prompt-format: invalid choice: 'gpt'"),
    ("--needle-value", "digits", "argument --needle-value: invalid choice: 'digits'"),
])
def test_bad_grid_options(option, value, message, items, tmp_path, monkeypatch, capsys):
  err = _probe(_needle(items, option, value), tmp_path, monkeypatch, capsys)
  assert f"lwm-eval: error: {message}" in err


def test_word_needles_need_the_chat_format(items, tiny_lwm_data, tmp_path, monkeypatch, capsys):
  err = _probe(_needle(items, "--needle-value", "word", "--prompt-format", "lwm", f"lwm_data_dir={tiny_lwm_data}"),
               tmp_path, monkeypatch, capsys)
  assert "lwm-eval: error: the lwm prompt format is LWM's own number needle" in err


def test_unknown_config_key(items, tmp_path, monkeypatch, capsys):
  err = _probe(_needle(items, "max_target_lenght=640"), tmp_path, monkeypatch, capsys)
  assert "lwm-eval: error:" in err and "max_target_lenght" in err and "max_target_length" in err


def test_missing_config_file(items, tmp_path, monkeypatch, capsys):
  err = _probe(_needle(items, config="no_such_config.yml"), tmp_path, monkeypatch, capsys)
  assert "lwm-eval: error:" in err and "no_such_config.yml" in err


def test_output_is_a_file(items, tmp_path, monkeypatch, capsys):
  err = _probe(_needle(items), tmp_path, monkeypatch, capsys, keep=[("out", lambda p: p.write_text("mine"))])
  assert "lwm-eval: error: --output out: exists and is not a directory" in err
  assert (tmp_path / "cwd" / "out").read_text() == "mine"


def test_context_too_short_for_a_prompt(items, tiny_lwm_data, tmp_path, monkeypatch, capsys):
  """Caught while the prompts are built, before the model is loaded or anything is written."""
  err = _probe(_needle(items, "--context-lengths", "20", f"lwm_data_dir={tiny_lwm_data}"), tmp_path, monkeypatch,
               capsys)
  assert "lwm-eval: error:" in err and "too short" in err


def test_vocabulary_that_does_not_fit_the_model(items, tiny_lwm_data, tmp_path, monkeypatch, capsys):
  err = _probe(_needle(items, f"lwm_data_dir={tiny_lwm_data}", "vocab_size=1000"), tmp_path, monkeypatch, capsys)
  assert "lwm-eval: error:" in err and "vocab_size" in err and "1000" in err


@pytest.mark.parametrize("files, message", [
    ({"config.json": "{not json"}, "config.json is not readable JSON"),
    ({"config.json": json.dumps({"model_type": "llama"})}, "a Hugging Face directory needs a config.json object and "
     "weights (model.safetensors or"),
])
def test_hugging_face_directory_without_a_model(files, message, tmp_path, monkeypatch, capsys):
  hf = tmp_path / "hf"
  hf.mkdir()
  for name, text in files.items():
    (hf / name).write_text(text)
  err = _probe(_needle(str(hf)), tmp_path, monkeypatch, capsys)
  assert f"lwm-eval: error: --model {hf}: {message}" in err


def test_hugging_face_directory_that_does_not_import(tiny_lwm_data, tmp_path, monkeypatch, capsys):
  """Weights whose names the converter does not know: the import fails after it began writing, and the
  output directory it was writing into goes too."""
  from conversion.safetensors_io import SINGLE_FILE  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

  hf = tmp_path / "hf"
  hf.mkdir()
  (hf / "config.json").write_text(json.dumps({
      "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
      "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2, "head_dim": 16,
      "vocab_size": 1024, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False}))
  save_file({"not.a.llama.tensor": np.zeros((2, 2), np.float32)}, str(hf / SINGLE_FILE))
  err = _probe(_needle(str(hf), "--context-lengths", "500", f"lwm_data_dir={tiny_lwm_data}"), tmp_path, monkeypatch,
               capsys)
  assert f"lwm-eval: error: --model {hf}: importing the Hugging Face model failed" in err


def test_config_that_is_not_valid_yaml(items, tmp_path, monkeypatch, capsys):
  (tmp_path / "bad.yml").write_text("steps: 2\nhardware: [cpu\n")
  err = _probe(_needle(items, config=str(tmp_path / "bad.yml")), tmp_path, monkeypatch, capsys)
  assert f"lwm-eval: error: {tmp_path}/bad.yml:2: not valid YAML: " in err
