"""Shared test helpers: subprocess runs of the launcher and of snippets on fake CPU devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

REPO = Path(__file__).resolve().parents[1]

jax.config.update("jax_numpy_rank_promotion", "raise")


def subprocess_env(devices: int = 1, **extra: str) -> dict[str, str]:
  """Environment for a child process on `devices` fake CPU devices (JAX reads it at import)."""
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  # A straggling fake device on a busy 2-core machine once exceeded XLA's 40 s collective
  # rendezvous limit (an abort, not a wrong result); give stragglers more time.
  env["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={devices} "
                      "--xla_cpu_collective_call_terminate_timeout_seconds=600")
  env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
  env.update(extra)
  return env


def run_python(code: str, devices: int = 1, timeout: int = 900, **env: str) -> subprocess.CompletedProcess:
  """Runs `code` in a fresh interpreter with `devices` fake CPU devices; fails the test on error."""
  proc = subprocess.run([sys.executable, "-c", code], env=subprocess_env(devices, **env), cwd=REPO,
                        capture_output=True, text=True, timeout=timeout, check=False)
  if proc.returncode != 0:
    pytest.fail(f"subprocess failed (rc={proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
  return proc


def run_lwm_train(args: list[str], devices: int = 1, timeout: int = 900, cwd: Path | None = None,
                  **env: str) -> subprocess.CompletedProcess:
  """`python -m lwm_plugin.train ARGS` in a subprocess; returns the completed process (any exit code)."""
  return subprocess.run([sys.executable, "-m", "lwm_plugin.train", *args], env=subprocess_env(devices, **env),
                        cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout, check=False)


def read_metrics(path: Path) -> list[dict]:
  """MaxText's `metrics_file`: one JSON object per step."""
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def tiny_lwm_data(tmp_path_factory) -> Path:
  """The tiny LWM dataset (`python -m data_loaders.tiny_data`): tokenizer + text/image/video/chat JSONL."""
  from data_loaders import tiny_data  # pylint: disable=import-outside-toplevel
  out = tmp_path_factory.mktemp("tiny") / "tiny_lwm_data"
  tiny_data.generate(out)
  return out


@pytest.fixture(scope="session")
def corpus_vocab():
  """A 400-piece tokenizer for the synthetic corpus's sentences (filler, needles, questions, captions,
  the chat template's words) with a 64-code vision block: fast to build, enough for prompt tests."""
  import numpy as np  # pylint: disable=import-outside-toplevel

  from data_loaders import synthetic_corpus as sc  # pylint: disable=import-outside-toplevel
  from data_loaders.vocab import MultimodalVocab, train_sentencepiece  # pylint: disable=import-outside-toplevel

  lines = sc.filler_sentences(np.random.default_rng(0), 300) + [sc.needle_sentence(c, "1234567") for c in sc.CITIES]
  lines += [sc.needle_question([c]) for c in sc.CITIES]
  lines += [sc.needle_sentence(c, w, "word") for c, w in zip(sc.CITIES * 2, sc.VALUE_WORDS)]
  lines += ["a red circle at the top left on a blue background", "You are a helpful assistant. USER: ASSISTANT:"]
  return MultimodalVocab.from_model_proto(train_sentencepiece(lines, vocab_size=400), codebook_size=64)
