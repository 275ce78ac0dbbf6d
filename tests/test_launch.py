"""`lwm_plugin.launch`: JAX_PLATFORMS from the config, the AOT check or the host, set before MaxText is imported."""

import os
import subprocess
import sys

import pytest

from conftest import REPO, subprocess_env
from lwm_plugin import launch
from lwm_plugin.config.files import resolve_config_file

CPU = resolve_config_file("tiny_cpu.yml")      # hardware: cpu
TPU = resolve_config_file("lwm_base.yml")      # hardware: tpu (MaxText's default)


@pytest.fixture(name="env")
def _env(monkeypatch):
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  monkeypatch.delenv("ALLOW_MULTIPLE_LIBTPU_LOAD", raising=False)
  monkeypatch.delenv("M_HARDWARE", raising=False)
  return monkeypatch


@pytest.mark.parametrize("config, overrides, expected", [
    (CPU, [], "cpu"),
    (TPU, [], None),
    (TPU, ["hardware=cpu"], "cpu"),
    (CPU, ["hardware=gpu"], None),
    (None, [], "cpu"),   # no config to read: the host
])
def test_platform_from_the_config(env, config, overrides, expected):
  launch.set_platform(config, overrides)
  assert os.environ.get("JAX_PLATFORMS") == expected
  assert "ALLOW_MULTIPLE_LIBTPU_LOAD" not in os.environ


def test_a_platform_the_user_set_is_kept(env):
  env.setenv("JAX_PLATFORMS", "cuda")
  launch.set_platform(CPU, [])
  launch.set_platform(None, [])
  assert os.environ["JAX_PLATFORMS"] == "cuda"


def test_hardware_from_the_environment(env):
  env.setenv("M_HARDWARE", "cpu")
  launch.set_platform(TPU, [])
  assert os.environ["JAX_PLATFORMS"] == "cpu"


def test_aot_check_compiles_on_the_host_beside_other_libtpu_users(env):
  env.setenv("JAX_PLATFORMS", "tpu")
  launch.set_platform(TPU, [], aot=True)
  assert os.environ["JAX_PLATFORMS"] == "cpu"
  assert os.environ["ALLOW_MULTIPLE_LIBTPU_LOAD"] == "1"


def _run(code: str) -> subprocess.CompletedProcess:
  env = subprocess_env()
  del env["JAX_PLATFORMS"]
  return subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                        timeout=600, check=False)


def test_the_launcher_and_its_command_lines_import_no_jax():
  """Every command line's module: `--help` and usage errors answer at once, and JAX_PLATFORMS still counts."""
  proc = _run("import sys\nfrom lwm_plugin import launch, train, convert\nfrom lwm_plugin.generation import generate_cli\n"
              "from lwm_plugin.evaluation import cli\nfrom lwm_plugin.longqa_gen import make_qa_cli\n"
              "from lwm_plugin.vision import vision_cli\n"
              "print(sorted(m for m in ('jax', 'maxtext', 'apache_beam', 'grain') if m in sys.modules))\n")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip() == "[]"


@pytest.mark.slow
def test_jax_starts_on_the_platform_the_launcher_chose():
  """A fresh process with no JAX_PLATFORMS: JAX, imported by the training half, reads `cpu` from tiny_cpu.yml."""
  proc = _run("import sys\nfrom lwm_plugin import launch\nassert 'jax' not in sys.modules\n"
              "apps = launch.train_apps('" + CPU + "')\nimport jax\n"
              "print(jax.config.jax_platforms, callable(apps.training.train), callable(apps.checkpoints.to_hf))\n")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip().splitlines()[-1] == "cpu True True"
