"""Probes of `lwm-generate` (generation/generate_cli.py) with bad inputs, as a new user would type them.

Each probe runs `main([...])` in-process from an empty working directory and asserts the exit code
(2), the message (`lwm-generate: error: ...` naming what is wrong) and that nothing was written. The
argument probes never import JAX (checked in a subprocess); the last few need the resolved config.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers.usage_probe import probe_usage_error

from conftest import REPO, subprocess_env
from lwm_plugin.generation import generate_cli as cli

TEXT = "tiny_text_chat_4k.yml"   # a text model; tokenizer from the data dir
MULTI = "tiny_vision_chat_4k.yml"  # a multimodal model, 64 codes


def _probe(argv, tmp_path, monkeypatch, capsys, *, keep=()) -> str:
  return probe_usage_error(cli.main, argv, tmp_path, monkeypatch, capsys, keep=keep)


@pytest.fixture(name="items")
def fixture_items(tmp_path) -> str:
  path = tmp_path / "ckpt" / "0" / "items"
  path.mkdir(parents=True)
  return str(path)


def _gen(model, *extra, config=TEXT):
  return ["--config", config, "--model", model, *extra]


def _write(text):
  return lambda p: p.write_text(text)


def test_missing_model_option(tmp_path, monkeypatch, capsys):
  err = _probe(["--config", TEXT, "--prompt", "hi"], tmp_path, monkeypatch, capsys)
  assert "lwm-generate: error: --model is required" in err


@pytest.mark.parametrize("extra, message", [
    ([], "--check needs a TPU topology: set lwm_topology in the config or pass compile_topology="),
    (["--prompt", "hi", "compile_topology=v4-8"], "--check takes a config, --max-new-tokens and key=value "
     "overrides; not --prompt"),
    (["--model", "m", "compile_topology=v4-8"], "not --model"),
])
def test_check_usage_errors(extra, message, tmp_path, monkeypatch, capsys):
  err = _probe(["--config", TEXT, "--check", *extra], tmp_path, monkeypatch, capsys)
  assert "lwm-generate: error: " in err and message in err


def test_json_needs_check(items, tmp_path, monkeypatch, capsys):
  err = _probe(_gen(items, "--prompt", "hi", "--json"), tmp_path, monkeypatch, capsys)
  assert "lwm-generate: error: --json goes with --check" in err


@pytest.mark.parametrize("extra, message", [
    (["--image", "pic.png", "--prompt", "q"], "--image/--video need --vqgan WEIGHTS"),
    (["--image", "nowhere.png", "--prompt", "q", "--vqgan", "."], "--image/--video nowhere.png: no such file"),
    (["--image", "pic.png", "--vqgan", "."], "--image/--video take one --prompt QUESTION"),
    (["--vqgan", "nowhere", "--prompt", "q"], "--vqgan nowhere: no such file or directory"),
    (["--vqgan", ".", "--prompt", "q"], "--vqgan applies to --image/--video or --generate only"),
    (["--generate", "image", "--prompt", "c", "--codes-output", "c.jsonl", "--pixels-dir", "d"],
     "--pixels-dir needs --vqgan WEIGHTS"),
])
def test_vision_file_usage_errors(extra, message, items, tmp_path, monkeypatch, capsys):
  err = _probe(_gen(items, *extra), tmp_path, monkeypatch, capsys, keep=[("pic.png", _write("read at run time"))])
  assert f"lwm-generate: error: {message}" in err


def test_model_that_does_not_exist(tmp_path, monkeypatch, capsys):
  err = _probe(_gen("nowhere", "--prompt", "hi"), tmp_path, monkeypatch, capsys)
  assert "lwm-generate: error: --model nowhere: neither a MaxText checkpoint items directory nor a Hugging Face" in err


@pytest.mark.parametrize("extra, keep, message", [
    ([], [], "nothing to do: give --prompt, --prompt-file, --interactive, --vision-codes or --generate"),
    (["--prompt", "a", "--prompt-file", "p.txt"], [("p.txt", _write("b\n"))],
     "give prompts with --prompt or --prompt-file, not both"),
    (["--prompt-file", "p.txt"], [], "--prompt-file p.txt: not a readable UTF-8 text file"),
    (["--prompt-file", "p.txt"], [("p.txt", _write("one\n\nthree\n"))], "--prompt-file p.txt:2: empty line"),
    (["--prompt-file", "p.txt"], [("p.txt", _write(""))], "--prompt-file p.txt: no prompt"),
    (["--prompt", "a", "--temperature", "-1"], [], "temperature -1.0: expected a finite number >= 0"),
    (["--prompt", "a", "--top-p", "1.5"], [], "top_p 1.5: expected a number in (0, 1]"),
    (["--prompt", "a", "--top-k", "0"], [], "top_k 0: expected an int >= 1"),
    (["--prompt", "a", "--top-k", "many"], [], "argument --top-k: invalid int value: 'many'"),
    (["--prompt", "a", "--max-new-tokens", "0"], [], "--max-new-tokens 0: expected at least 1"),
    (["--prompt", "a", "--stop-id", "-3"], [], "--stop-id -3: expected a token id >= 0"),
    (["--prompt", "a", "--frames", "3"], [], "--frames applies to --generate only"),
    (["--prompt", "a", "--cfg-scale", "3"], [], "--cfg-scale applies to --generate only"),
    (["--prompt", "a", "--output", "d"], [("d", lambda p: p.mkdir())], "--output d: is a directory"),
    (["--prompt", "a", "--output", "no/such/out.json"], [], "--output no/such/out.json: the directory no/such does"),
    (["--interactive", "--prompt", "a"], [], "--prompt does not apply to --interactive"),
    (["--generate", "image", "--prompt", "a dog"], [], "--generate needs --codes-output CODES.jsonl"),
    (["--generate", "image", "--codes-output", "c.jsonl"], [], "--generate needs captions"),
    (["--generate", "image", "--prompt", "a", "--frames", "2", "--codes-output", "c.jsonl"], [],
     "--frames 2: an image is 1 frame"),
    (["--generate", "video", "--prompt", "a", "--frames", "0", "--codes-output", "c.jsonl"], [], "--frames 0"),
    (["--generate", "video", "--prompt", "a", "--stop-id", "2", "--codes-output", "c.jsonl"], [],
     "--stop-id does not apply to --generate"),
    (["--generate", "gif", "--prompt", "a"], [], "argument --generate: invalid choice: 'gif'"),
    (["--vision-codes", "v.jsonl"], [("v.jsonl", _write('{"vision": [[1, 2]]}\n'))],
     "--vision-codes v.jsonl:1: no question"),
    (["--vision-codes", "v.jsonl", "--prompt", "q"], [("v.jsonl", _write('{"vision": [[1]]}\n{bad\n'))],
     "--vision-codes v.jsonl:2: not JSON"),
    (["--vision-codes", "v.jsonl", "--prompt", "q"], [("v.jsonl", _write('{"codes": [1]}\n'))],
     "--vision-codes v.jsonl:1: expected an object with a \"vision\" list"),
    (["--vision-codes", "v.jsonl", "--prompt", "q", "--prompt", "r"], [("v.jsonl", _write('{"vision": [[1]]}\n'))],
     "--vision-codes takes one --prompt"),
])
def test_bad_arguments(extra, keep, message, items, tmp_path, monkeypatch, capsys):
  err = _probe(_gen(items, *extra), tmp_path, monkeypatch, capsys, keep=keep)
  assert f"lwm-generate: error: {message}" in err


def test_missing_config_file(items, tmp_path, monkeypatch, capsys):
  err = _probe(_gen(items, "--prompt", "a", config="no_such_config.yml"), tmp_path, monkeypatch, capsys)
  assert "lwm-generate: error:" in err and "no_such_config.yml" in err


def test_argument_errors_never_import_jax(tmp_path):
  code = ("import sys\nfrom lwm_plugin.generation import generate_cli as cli\n"
          "rc = cli.main(['--config', 'tiny_text_chat_4k.yml', '--model', 'nowhere', '--prompt', 'x'])\n"
          "assert rc == 2 and 'jax' not in sys.modules and 'maxtext' not in sys.modules, sorted(sys.modules)\n")
  proc = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), cwd=tmp_path, capture_output=True,
                        text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "lwm-generate: error: --model nowhere" in proc.stderr


# -- errors found once the config is resolved (MaxText imported) -----------------------------------
def test_unknown_config_key(items, tmp_path, monkeypatch, capsys):
  err = _probe(_gen(items, "--prompt", "a", "max_target_lenght=640"), tmp_path, monkeypatch, capsys)
  assert "lwm-generate: error:" in err and "max_target_lenght" in err


def test_generation_needs_a_multimodal_model(items, tiny_lwm_data, tmp_path, monkeypatch, capsys):
  err = _probe(_gen(items, "--generate", "image", "--prompt", "a", "--codes-output", "c.jsonl",
                    f"lwm_data_dir={tiny_lwm_data}"), tmp_path, monkeypatch, capsys)
  assert f"lwm-generate: error: --generate image needs a multimodal model; {REPO}" in err


def test_vision_codes_out_of_range(items, tiny_lwm_data, tmp_path, monkeypatch, capsys):
  line = json.dumps({"vision": [[64] * 256]})  # the tiny vocabulary has 64 codes
  err = _probe(_gen(items, "--vision-codes", "v.jsonl", "--prompt", "q", f"lwm_data_dir={tiny_lwm_data}",
                    config=MULTI), tmp_path, monkeypatch, capsys, keep=[("v.jsonl", _write(line + "\n"))])
  assert "lwm-generate: error: --vision-codes v.jsonl:1:" in err and "vision code 64 out of range [0, 64)" in err


def test_prompt_longer_than_the_cache(items, tiny_lwm_data, tmp_path, monkeypatch, capsys):
  err = _probe(_gen(items, "--prompt", "the old farmer " * 40, "--max-new-tokens", "32",
                    f"lwm_data_dir={tiny_lwm_data}", "max_target_length=64"), tmp_path, monkeypatch, capsys)
  assert "lwm-generate: error: prompt 1 has" in err and "the cache holds 32 prompt tokens" in err


def test_config_that_is_not_valid_yaml(items, tmp_path, monkeypatch, capsys):
  (tmp_path / "bad.yml").write_text("steps: 2\nhardware: [cpu\n")
  err = _probe(_gen(items, "--prompt", "a", config=str(tmp_path / "bad.yml")), tmp_path, monkeypatch, capsys)
  assert f"lwm-generate: error: {tmp_path}/bad.yml:2: not valid YAML: " in err
