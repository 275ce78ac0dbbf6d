"""The paper's 14 stage YAMLs and the tiny CPU chain: the values `lwm-train STAGE.yml --print-config`
resolves against the paper's tables, the initialisation chain, the model/stage key split, headers
and the data-directory error."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import maxtext_configs
from conftest import read_metrics, run_lwm_train, run_python, subprocess_env
from lwm_plugin import integration
from lwm_plugin.config.files import config_chain, uses_data_dir
from lwm_plugin.config.files import topology_overrides as _topology

M = 2**20


@dataclasses.dataclass(frozen=True)
class Paper:
  """One column of Tables 11-13 (arXiv 2402.08268, App. F), typed from the paper."""

  init: str                 # "Initialize From"
  seq_len: int
  theta: float
  tokens_per_batch: int     # "4M" / "8M": 2^22 / 2^23 tokens (whole sequences of 2^k tokens)
  steps: int
  warmup: int
  max_lr: float
  min_lr: float
  topology: str
  chips: int
  mesh: tuple[int, int, int, int]   # LWM's mesh_dim = dp, fsdp, tp, sp (fsdp = the rest of the chips)


def _text(init, seq_len, theta, steps, warmup, tp, sp=1):
  return Paper(init, seq_len, theta, 4 * M, steps, warmup, 4e-5, 4e-5, "v4-512", 256, (1, 256 // (tp * sp), tp, sp))


def _vision(init, seq_len, steps, warmup, max_lr, min_lr, tp, sp=1):
  return Paper(init, seq_len, 5e7, 8 * M, steps, warmup, max_lr, min_lr, "v4-1024", 512, (1, 512 // (tp * sp), tp, sp))


PAPER = {
    # Table 11: LWM-Text (constant LR 4e-5 after warmup, v4-512).
    "lwm_text_32k.yml": _text("LLaMA-2 7B", 2**15, 1e6, 1200, 100, tp=4),
    "lwm_text_128k.yml": _text("lwm_text_32k.yml", 2**17, 1e7, 3000, 200, tp=8),
    "lwm_text_256k.yml": _text("lwm_text_128k.yml", 2**18, 1e7, 3000, 200, tp=16),
    "lwm_text_512k.yml": _text("lwm_text_256k.yml", 2**19, 2.5e7, 720, 50, tp=16, sp=2),
    "lwm_text_1m.yml": _text("lwm_text_512k.yml", 2**20, 5e7, 450, 25, tp=16, sp=4),
    # Table 12: LWM-Text-Chat, each from the text model of its length.
    "lwm_text_chat_128k.yml": _text("lwm_text_128k.yml", 2**17, 1e7, 300, 25, tp=4),
    "lwm_text_chat_256k.yml": _text("lwm_text_256k.yml", 2**18, 1e7, 300, 25, tp=8),
    "lwm_text_chat_512k.yml": _text("lwm_text_512k.yml", 2**19, 2.5e7, 300, 25, tp=16),
    "lwm_text_chat_1m.yml": _text("lwm_text_1m.yml", 2**20, 5e7, 300, 25, tp=16, sp=2),
    # Table 13: LWM / LWM-Chat (cosine from max to min LR, v4-1024).
    "lwm_vision_1k.yml": _vision("lwm_text_1m.yml+vocab", 2**10, 45000, 1000, 6e-4, 6e-5, tp=1),
    "lwm_vision_8k.yml": _vision("lwm_vision_1k.yml", 2**13, 14000, 500, 6e-4, 6e-5, tp=1),
    "lwm_vision_chat_32k.yml": _vision("lwm_vision_8k.yml", 2**15, 1200, 100, 8e-5, 8e-5, tp=4),
    "lwm_vision_chat_128k.yml": _vision("lwm_vision_chat_32k.yml", 2**17, 450, 50, 8e-5, 8e-5, tp=8),
    "lwm_vision_chat_1m.yml": _vision("lwm_vision_chat_128k.yml", 2**20, 50, 5, 8e-5, 8e-5, tp=16, sp=4),
}
# Table 12's meshes give twice as many fsdp groups as sequences per batch (128K: (1, -1, 4, 1) = fsdp
# 64 for 32 sequences): the batch cannot be sharded, in LWM (batch over dp x fsdp) as in MaxText.
# Each equals Table 11's mesh one stage shorter; the chat stages use Table 11's mesh for their length.
CHAT_MESH = {"lwm_text_chat_128k.yml": "lwm_text_128k.yml", "lwm_text_chat_256k.yml": "lwm_text_256k.yml",
             "lwm_text_chat_512k.yml": "lwm_text_512k.yml", "lwm_text_chat_1m.yml": "lwm_text_1m.yml"}
TINY = ["tiny_text_1k.yml", "tiny_text_2k.yml", "tiny_text_4k.yml", "tiny_text_chat_4k.yml", "tiny_vision_1k.yml",
        "tiny_vision_2k.yml", "tiny_vision_chat_4k.yml"]
TINY_INIT = {"tiny_text_2k.yml": "tiny_text_1k.yml", "tiny_text_4k.yml": "tiny_text_2k.yml",
             "tiny_text_chat_4k.yml": "tiny_text_4k.yml", "tiny_vision_1k.yml": "tiny_text_4k.yml+vocab",
             "tiny_vision_2k.yml": "tiny_vision_1k.yml", "tiny_vision_chat_4k.yml": "tiny_vision_2k.yml"}
# The released LWM models as LWM's own code runs them (theta, RMSNorm eps, vocabulary): what from-lwm needs.
RELEASED = {"models/lwm_7b_released.yml": (5e7, 1e-6, 32000), "models/lwm_7b_vision_released.yml": (5e7, 1e-6, 40448)}
BASE = "gs://bucket/lwm"
_resolved: dict[str, types.SimpleNamespace] = {}


def resolve(name: str) -> types.SimpleNamespace:
  """The stage as `lwm-train NAME base_output_directory=BASE --print-config` prints it (on its paper pod).

  The command line itself, for every paper and tiny stage in one subprocess on the first call.
  """
  if not _resolved:
    names = [*PAPER, *TINY, *RELEASED]
    proc = run_python(f"""
from lwm_plugin import train
for name in {names!r}:
  print("STAGE=" + name, flush=True)
  assert train.main([name, "base_output_directory={BASE}", "--print-config"]) == 0, name
""")
    current = None
    for line in proc.stdout.splitlines():
      if line.startswith("STAGE="):
        current = line.removeprefix("STAGE=")
      elif line.startswith("{") and current:
        _resolved[current] = types.SimpleNamespace(**json.loads(line))
    assert set(_resolved) == set(names), proc.stdout[-3000:]
  return _resolved[name]


def test_every_stage_of_the_paper_has_its_file():
  shipped = {p.name for p in maxtext_configs.CONFIG_DIR.glob("lwm_*.yml")} - {"lwm_base.yml"}
  assert shipped == set(PAPER)


@pytest.mark.parametrize("name", PAPER)
def test_resolved_values_are_the_papers(name):
  paper, cfg = PAPER[name], resolve(name)
  dp, fsdp, tp, sp = PAPER[CHAT_MESH.get(name, name)].mesh
  assert cfg.max_target_length == paper.seq_len
  assert cfg.rope_max_timescale == paper.theta
  assert cfg.steps == paper.steps
  assert cfg.learning_rate == paper.max_lr
  assert cfg.learning_rate * cfg.learning_rate_final_fraction == pytest.approx(paper.min_lr, rel=1e-9)
  assert cfg.lr_schedule_type == "cosine"   # final fraction 1.0: linear warmup, then constant
  assert int(cfg.learning_rate_schedule_steps * cfg.warmup_steps_fraction) == paper.warmup   # MaxText's rule
  assert cfg.lwm_topology == paper.topology and cfg.num_target_devices == paper.chips
  assert cfg.global_batch_size_to_train_on * cfg.max_target_length == paper.tokens_per_batch
  fsdp_resolved = paper.chips // (cfg.ici_data_parallelism * cfg.ici_tensor_parallelism * cfg.ici_context_parallelism)
  assert cfg.ici_fsdp_parallelism in (-1, fsdp)
  assert (cfg.ici_data_parallelism, fsdp_resolved, cfg.ici_tensor_parallelism, cfg.ici_context_parallelism) == \
      (dp, fsdp, tp, sp)
  assert (cfg.attention == "ring") == (sp > 1)
  assert cfg.dtype == "float32" and cfg.weight_dtype == "float32"   # "Precision: float32"
  # LWM's optimizer (lwm_base.yml).
  assert (cfg.opt_type, cfg.adam_b1, cfg.adam_b2, cfg.adam_weight_decay, cfg.gradient_clipping_threshold) == \
      ("adamw", 0.9, 0.95, 0.1, 1.0)
  assert list(cfg.adamw_mask) == []
  assert cfg.vocab_size == (40448 if name.startswith("lwm_vision") else 32000)
  assert cfg.normalization_layer_epsilon == 1e-6   # LWM's RMSNorm eps (its 7b config), not LLaMA-2's 1e-5


@pytest.mark.parametrize("name", RELEASED)
def test_released_model_files_resolve_lwms_theta_and_eps(name):
  cfg = resolve(name)
  assert (cfg.rope_max_timescale, cfg.normalization_layer_epsilon, cfg.vocab_size) == RELEASED[name]


def test_table_12_meshes_cannot_shard_their_batch_and_table_11_meshes_can():
  for chat, text in CHAT_MESH.items():
    sequences = PAPER[chat].tokens_per_batch // PAPER[chat].seq_len
    assert PAPER[chat].mesh[1] == 2 * sequences            # fsdp groups in Table 12
    assert PAPER[text].mesh[1] == sequences                 # fsdp groups in Table 11, same length
  for name, paper in PAPER.items():
    if name not in CHAT_MESH:
      assert (paper.tokens_per_batch // paper.seq_len) % paper.mesh[1] == 0, name


def _final_checkpoint(name: str) -> str:
  cfg = resolve(name)
  return f"{BASE}/{cfg.run_name}/checkpoints/{cfg.steps - 1}/items"   # MaxText saves the last step, steps - 1


@pytest.mark.parametrize("name", PAPER)
def test_each_stage_initialises_from_the_final_checkpoint_of_the_one_before(name):
  init, cfg = PAPER[name].init, resolve(name)
  if init == "LLaMA-2 7B":
    assert cfg.load_parameters_path == f"{BASE}/llama-2-7b/0/items"   # lwm-convert from-hf output
  elif init.endswith("+vocab"):
    assert cfg.load_parameters_path == f"{BASE}/lwm-text-1m-vision-vocab/0/items"   # lwm-convert extend-vocab output
    header = maxtext_configs.config_path(name).read_text()
    assert f"--checkpoint {_final_checkpoint(init.removesuffix('+vocab')).replace(BASE, 'gs://BUCKET/lwm')}" in header
  else:
    assert cfg.load_parameters_path == _final_checkpoint(init)
  assert len({resolve(n).run_name for n in PAPER}) == len(PAPER)


def _keys_by_role(path: Path) -> tuple[dict[str, str], dict[str, str]]:
  """({key: stage file}, {key: model file}) over the chain below MaxText's base.yml."""
  stage, model = {}, {}
  for file, keys in config_chain(str(path)):
    if Path(file).name == "base.yml" and "maxtext" in file:
      break
    role = model if Path(file).parent.name == "models" else stage
    for key in keys:
      if key != "base_config" and Path(file).name != "lwm_base.yml":
        role.setdefault(key, Path(file).name)
  return stage, model


@pytest.mark.parametrize("name", [*PAPER, *TINY])
def test_no_stage_file_sets_a_key_its_model_file_sets(name):
  stage, model = _keys_by_role(maxtext_configs.config_path(name))
  assert model, f"{name} has no model file in its chain"
  clash = {key: (stage[key], model[key]) for key in set(stage) & set(model)}
  assert not clash, f"stage keys that override the model: {clash}"


@pytest.mark.parametrize("name", [*PAPER, *TINY])
def test_header_gives_the_run_command_and_the_initialisation(name):
  text = maxtext_configs.config_path(name).read_text()
  header = text[:text.index("base_config:")]
  assert all(line.startswith("#") for line in header.splitlines())
  assert re.search(rf"lwm-train {re.escape(name)}\b", header)
  assert "Initialises from" in header


def test_tiny_chain_mirrors_the_papers_structure():
  for name, init in TINY_INIT.items():
    cfg = resolve(name)
    if init.endswith("+vocab"):
      assert cfg.load_parameters_path == f"{BASE}/tiny-text-4k-vision-vocab/0/items"
      assert resolve(init.removesuffix("+vocab")).vocab_size == 1024 and cfg.vocab_size == 1408
    else:
      assert cfg.load_parameters_path == _final_checkpoint(init)
  assert resolve("tiny_text_1k.yml").load_parameters_path == ""
  thetas = [resolve(n).rope_max_timescale for n in TINY[:3]]
  assert thetas == sorted(thetas) and len(set(thetas)) == 3   # theta grows with the length, as the paper's
  for name in TINY:
    cfg = resolve(name)
    assert (cfg.hardware, cfg.attention, cfg.ici_context_parallelism) == ("cpu", "ring", 4)
    tokens = cfg.per_device_batch_size * 4 * cfg.max_target_length   # on 4 devices
    assert tokens == (8192 if "vision" in name else 4096)   # constant per chain; vision twice text, as the paper's


def test_stages_read_their_data_under_the_data_dir():
  for name in [*PAPER, *TINY]:
    assert uses_data_dir(str(maxtext_configs.config_path(name)), []), name
  assert not uses_data_dir(str(maxtext_configs.config_path("tiny_cpu_lwm_data.yml")), [])
  path = str(maxtext_configs.config_path("lwm_text_32k.yml"))
  assert not uses_data_dir(path, ["lwm_data_sources=[{name: mine, files: /data/*.jsonl}]"])
  cfg = integration.resolve_config(["test", path, "lwm_data_dir=/data/lwm", *_topology(path, [])])
  assert cfg.lwm_data_sources[0].files == ("/data/lwm/books3-10k-100k/*.jsonl",)


def test_training_a_stage_without_its_data_dir_is_a_clear_error(tmp_path):
  proc = run_lwm_train(["lwm_text_32k.yml", f"base_output_directory={tmp_path}"], cwd=tmp_path)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "under ${lwm_data_dir}, which is not set; pass lwm_data_dir=/path/to/your/data" in proc.stderr


@pytest.mark.slow
def test_tiny_chain_runs_a_text_stage_then_a_vision_stage_from_its_extended_checkpoint(tmp_path):
  from data_loaders import tiny_data  # pylint: disable=import-outside-toplevel

  tiny_data.generate(tmp_path / "data")
  out = tmp_path / "out"
  common = [f"lwm_data_dir={tmp_path / 'data'}", f"base_output_directory={out}"]
  proc = run_lwm_train(["tiny_text_1k.yml", *common], devices=4, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-4000:]
  final = out / "tiny-text-1k" / "checkpoints" / "29" / "items"   # what tiny_text_2k.yml loads
  assert final.is_dir()
  # The vision chain starts from the text chain's last checkpoint, extended (tiny-text-1k's stands in
  # for tiny-text-4k's: the same model), written where tiny_vision_1k.yml looks for it.
  convert = subprocess.run([sys.executable, "-m", "lwm_plugin.convert", "extend-vocab", "--config", "tiny_vision_1k.yml",
                            "--checkpoint", str(final), "--output", str(out / "tiny-text-4k-vision-vocab"),
                            "--no-progress", *common], env=subprocess_env(), cwd=tmp_path, capture_output=True,
                           text=True, timeout=600, check=False)
  assert convert.returncode == 0, convert.stderr[-4000:]
  proc = run_lwm_train(["tiny_vision_1k.yml", *common, "steps=2", f"metrics_file={tmp_path}/metrics.jsonl"],
                       devices=4, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-4000:]
  first = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "learning/loss" in r][0]
  # The text part starts from the text stage: the same first batch from fresh weights has a higher text
  # loss (the batch's text includes the image lines' `<vision>` marker pieces, which the text stage never
  # saw, so an absolute bound such as ln 1024 would not tell the two apart). The new vision rows are
  # random draws (`hooks.grow_rows`, tested with the converters), so the vision loss has no exact value.
  proc = run_lwm_train(["tiny_vision_1k.yml", *common, "steps=1", "load_parameters_path=\"\"", "run_name=fresh",
                        f"metrics_file={tmp_path}/fresh.jsonl"], devices=4, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-4000:]
  fresh = [r for r in read_metrics(tmp_path / "fresh.jsonl") if "learning/loss" in r][0]
  assert math.isfinite(first["lwm/vision_loss"]), first
  assert first["lwm/text_loss"] < fresh["lwm/text_loss"] - 0.25, (first, fresh)
