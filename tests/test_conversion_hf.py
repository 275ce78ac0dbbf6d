"""Converters end to end against `transformers` (torch, CPU) and MaxText's own forward pass.

One module fixture runs the whole pipeline once, batching the expensive processes:
  * two tiny models trained a few steps by `lwm-train` (MHA + text vocabulary, scanned; GQA +
    multimodal vocabulary, unscanned), exported with `lwm-convert to-hf`;
  * two random `LlamaForCausalLM`s saved by transformers (MHA f32 sharded; GQA bf16 tied; also as
    PyTorch .bin files), imported with `lwm-convert from-hf` / `from_hf.convert` (scanned,
    unscanned, --extend-vocab, from .bin) and exported back;
  * a tiny LWM vision checkpoint in the released streaming format, imported with `lwm-convert from-lwm`;
  * MaxText's forward on every MaxText checkpoint (one process) and transformers' forward on every
    Hugging Face directory (one process in .venv-hf, tools/hf_venv.sh), on the same tokens.
The vocabulary is a tiny SentencePiece model (384 ids) with a 64-code vision block (768 ids), and
LLaMA-2's real one (40448 ids) for the LWM checkpoint.
"""

import json
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
import pydoc_data.topics
from safetensors.numpy import load_file

from conftest import REPO, subprocess_env
from conversion import from_hf, to_hf
from conversion.orbax_params import ParamsReader
from conversion.spec import ModelSpec
from lwm_checkpoints import lwm_logits, lwm_tree, write_lwm
from data_loaders.vocab import MultimodalVocab, train_sentencepiece

pytestmark = pytest.mark.slow
TOL = 1e-4
TINY = ["max_target_length=32", "per_device_batch_size=2", "lwm_codebook_size=64"]
TRAINED = {   # name -> (overrides, vocab kind)
    "mha_text": (["base_num_kv_heads=4", "vocab_size=384"], "text"),
    "gqa_multimodal": (["vocab_size=768", "scan_layers=false"], "multimodal"),
}
LWM_OVERRIDES = ["base_num_kv_heads=4", "vocab_size=40448", "rope_max_timescale=50000000",
                 "normalization_layer_epsilon=1e-6", "max_target_length=32"]
HF_CONFIGS = {
    "hf_mha": dict(vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=4, head_dim=16, rms_norm_eps=1e-5, max_position_embeddings=32,
                   rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    "hf_gqa_tied": dict(vocab_size=768, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
                        max_position_embeddings=32, tie_word_embeddings=True,
                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
}


def _parallel(cmds, what):
  """Runs commands concurrently (the machine has 2 cores; most of each is MaxText's import)."""
  procs = [subprocess.Popen(c, env=subprocess_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for c in cmds]
  for cmd, proc in zip(cmds, procs):
    out, err = proc.communicate(timeout=900)
    if proc.returncode != 0:
      pytest.fail(f"{what} failed (rc={proc.returncode}): {' '.join(map(str, cmd))}\n{out[-3000:]}\n{err[-6000:]}")


def hf_python():
  """.venv-hf's interpreter, created on first use; a failure fails the test (never a skip)."""
  proc = subprocess.run([str(REPO / "tools" / "hf_venv.sh")], capture_output=True, text=True, timeout=1200)
  if proc.returncode != 0:
    pytest.fail(f"tools/hf_venv.sh could not create the transformers reference venv:\n{proc.stderr[-4000:]}")
  return proc.stdout.strip().splitlines()[-1]


def _jobs(tmp, name, jobs):
  path = tmp / f"{name}.json"
  path.write_text(json.dumps(jobs))
  return path


def _convert(*args):
  return [sys.executable, "-m", "lwm_plugin.convert", *map(str, args), "--no-progress"]


def _tokens(path, vocab_size, seed):
  ids = np.random.default_rng(seed).integers(0, vocab_size, (2, 16)).astype(np.int32)
  np.save(path, ids)
  return path


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("conversion")
  tok = tmp / "tok.model"
  tok.write_bytes(train_sentencepiece([l for l in pydoc_data.topics.topics["if"].splitlines() +
                                       pydoc_data.topics.topics["for"].splitlines() if l.strip()], 384))
  tiny = TINY + [f"lwm_tokenizer_path={tok}"]
  vocab = MultimodalVocab.from_tokenizer(tok, codebook_size=64)
  assert (vocab.text_size, vocab.size) == (384, 768)
  hf_py = hf_python()

  # 1. Train (lwm-train) and make random HF models (transformers), concurrently.
  train = [[sys.executable, "-m", "lwm_plugin.train", "tiny_cpu.yml", *tiny, *over, "steps=3",
            "enable_checkpointing=true", "checkpoint_period=100", f"base_output_directory={tmp}", f"run_name={name}"]
           for name, (over, _) in TRAINED.items()]
  make = [{"op": "make", "out": str(tmp / name), "config": cfg, "seed": i, "max_shard_size": "100KB",
           "bfloat16": name == "hf_gqa_tied", "bin_out": str(tmp / f"{name}.bin")}
          for i, (name, cfg) in enumerate(HF_CONFIGS.items())]
  for name, cfg in HF_CONFIGS.items():
    make.append({"op": "logits", "model": str(tmp / name), "tokens": str(_tokens(tmp / f"{name}.tok.npy",
                 cfg["vocab_size"], 1)), "out": str(tmp / f"{name}.hf.npy")})
  _parallel(train + [[hf_py, str(REPO / "tests/helpers/hf_side.py"), str(_jobs(tmp, "make", make))]], "train/make")

  # 2. Convert: to-hf of the trained models, from-hf and from-lwm, concurrently through the CLI.
  ckpt = {name: tmp / name / "checkpoints" / "2" / "items" for name in TRAINED}
  lwm = lwm_tree(E=64, H=4, M=128, L=2, text_rows=32000, vision_rows=8448, dtype=ml_dtypes.bfloat16)
  write_lwm(tmp / "lwm_params", lwm)
  cmds = [_convert("to-hf", "--config", "tiny_cpu.yml", "--checkpoint", ckpt[name], "--output", tmp / f"{name}.hf",
                   "--dtype", "float32", *tiny, *over) for name, (over, _) in TRAINED.items()]
  cmds.append(_convert("from-hf", "--config", "tiny_cpu.yml", "--hf", tmp / "hf_mha", "--output", tmp / "hf_mha.mt",
                       *tiny, *HF_OVER["hf_mha"]))
  cmds.append(_convert("from-lwm", "--config", "tiny_cpu.yml", "--lwm", tmp / "lwm_params", "--output",
                       tmp / "lwm.mt", *LWM_OVERRIDES))
  _parallel(cmds, "lwm-convert")


  # In process: unscanned + tied import, vocabulary extension, and the exports back to HF.
  spec_tied = _spec(V=768, K=2, tie_embeddings=True, scan_layers=False)
  from_hf.convert(spec_tied, tmp / "hf_gqa_tied", tmp / "hf_gqa_tied.mt", vocab=None, progress=False)
  from_hf.convert(spec_tied, tmp / "hf_gqa_tied.bin", tmp / "hf_gqa_tied.bin.mt", vocab=None, progress=False)
  spec_mm = _spec(V=768, K=4)
  from_hf.convert(spec_mm, tmp / "hf_mha", tmp / "hf_mha.ext.mt", vocab=vocab, extend_vocab=True, progress=False)
  to_hf.convert(_spec(V=384, K=4), tmp / "hf_mha.mt" / "0" / "items", tmp / "hf_mha.back", vocab=None,
                dtype="float32", max_shard_bytes=100_000, progress=False)
  to_hf.convert(spec_tied, tmp / "hf_gqa_tied.mt" / "0" / "items", tmp / "hf_gqa_tied.back", vocab=None,
                dtype="bfloat16", progress=False)
  to_hf.convert(_spec(V=40448, K=4, norm_eps=1e-6, rope_theta=5e7), tmp / "lwm.mt" / "0" / "items", tmp / "lwm.hf",
                vocab=MultimodalVocab.default(), dtype="float32", progress=False)

  # 3. Forward passes: MaxText (one process), transformers (one process).
  lwm_tokens = np.concatenate([np.arange(8), 32000 + np.array([0, 5, 8191, 8192, 8193, 8447, 7, 1])])[None]
  np.save(tmp / "lwm.tok.npy", np.concatenate([lwm_tokens, lwm_tokens[:, ::-1]]).astype(np.int32))
  fwd = []
  for name, (over, _) in TRAINED.items():
    fwd.append(dict(config="maxtext_configs/tiny_cpu.yml", checkpoint=str(ckpt[name]), overrides=tiny + over,
                    tokens=str(_tokens(tmp / f"{name}.tok.npy", 768 if "multi" in name else 384, 2)),
                    out=str(tmp / f"{name}.mt.npy")))
  for name, over in (("hf_mha", HF_OVER["hf_mha"]), ("hf_gqa_tied", HF_OVER["hf_gqa_tied"]),
                     ("hf_mha.ext", ["vocab_size=768", "base_num_kv_heads=4"])):
    base = name.split(".")[0]
    fwd.append(dict(config="maxtext_configs/tiny_cpu.yml", checkpoint=str(tmp / f"{name}.mt" / "0" / "items"),
                    overrides=tiny + over, tokens=str(tmp / f"{base}.tok.npy"), out=str(tmp / f"{name}.mt.npy")))
  fwd.append(dict(config="maxtext_configs/tiny_cpu.yml", checkpoint=str(tmp / "lwm.mt" / "0" / "items"),
                  overrides=LWM_OVERRIDES, tokens=str(tmp / "lwm.tok.npy"), out=str(tmp / "lwm.mt.npy")))
  hf = [dict(op="logits", model=str(tmp / f"{name}.hf"), tokens=str(tmp / f"{name}.tok.npy"),
             out=str(tmp / f"{name}.hf.npy"), perturbed_out=str(tmp / f"{name}.perturbed.npy")) for name in TRAINED]
  hf.append(dict(op="logits", model=str(tmp / "lwm.hf"), tokens=str(tmp / "lwm.tok.npy"), out=str(tmp / "lwm.hf.npy")))
  _parallel([[sys.executable, str(REPO / "tests/helpers/maxtext_forward.py"), str(_jobs(tmp, "fwd", fwd))],
             [hf_py, str(REPO / "tests/helpers/hf_side.py"), str(_jobs(tmp, "hf", hf))]], "forward passes")
  return {"tmp": tmp, "vocab": vocab, "lwm": lwm}


HF_OVER = {
    "hf_mha": ["base_num_kv_heads=4", "vocab_size=384"],
    "hf_gqa_tied": ["vocab_size=768", "logits_via_embedding=true", "normalize_embedding_logits=false",
                    "scan_layers=false"],
}


def _spec(**changes):
  spec = ModelSpec(E=64, H=4, K=2, D=16, M=128, L=2, V=384, norm_eps=1e-5, rope_theta=1e4, max_positions=32,
                   tie_embeddings=False, scan_layers=True)
  return spec.with_(**changes)


def _load(path):
  return np.load(path)


@pytest.mark.parametrize("name", list(TRAINED))
def test_trained_model_logits_equal_transformers(pipeline, name):
  tmp = pipeline["tmp"]
  mt, hf = _load(tmp / f"{name}.mt.npy"), _load(tmp / f"{name}.hf.npy")
  assert mt.shape == hf.shape == (2, 16, 768 if "multi" in name else 384)
  assert np.abs(mt - hf).max() < TOL, np.abs(mt - hf).max()
  # The check can fail: the same model with q/k rows in the interleaved RoPE layout is far off.
  assert np.abs(mt - _load(tmp / f"{name}.perturbed.npy")).max() > 100 * TOL


@pytest.mark.parametrize("name", list(TRAINED))
def test_exported_directory_is_a_complete_hf_model(pipeline, name):
  import transformers
  tmp, vocab = pipeline["tmp"], pipeline["vocab"]
  out = tmp / f"{name}.hf"
  multimodal = TRAINED[name][1] == "multimodal"
  config = json.loads((out / "config.json").read_text())
  assert config["vocab_size"] == (vocab.size if multimodal else vocab.text_size)
  assert config["max_position_embeddings"] == 32 and config["rope_theta"] == 10000.0
  assert config["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0}
  assert (config["bos_token_id"], config["eos_token_id"]) == (vocab.bos_id, vocab.eos_id)
  assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == vocab.eos_id
  tok = transformers.AutoTokenizer.from_pretrained(str(out))
  assert len(tok) == config["vocab_size"]
  assert tok.encode("if x:", add_special_tokens=False) == vocab.encode_text("if x:")
  assert not [p for p in tmp.iterdir() if ".partial-" in p.name]


@pytest.mark.parametrize("name", ["hf_mha", "hf_gqa_tied"])
def test_hf_to_orbax_to_hf_is_bit_exact(pipeline, name):
  tmp = pipeline["tmp"]
  original = {}
  for f in (tmp / name).glob("*.safetensors"):
    original.update(load_file(f))
  back = {}
  for f in (tmp / f"{name}.back").glob("*.safetensors"):
    back.update(load_file(f))
  assert set(back) == set(original)
  for key, value in original.items():
    assert back[key].dtype == value.dtype, key
    np.testing.assert_array_equal(back[key].view(np.uint8), value.view(np.uint8), err_msg=key)
  if name == "hf_mha":
    assert len(list((tmp / f"{name}.back").glob("*.safetensors"))) > 1   # sharded, with an index
    assert (tmp / f"{name}.back" / "model.safetensors.index.json").is_file()


@pytest.mark.parametrize("name", ["hf_mha", "hf_gqa_tied"])
def test_imported_checkpoint_runs_in_maxtext_like_transformers(pipeline, name):
  tmp = pipeline["tmp"]
  mt, hf = _load(tmp / f"{name}.mt.npy"), _load(tmp / f"{name}.hf.npy")
  assert np.abs(mt - hf).max() < TOL, np.abs(mt - hf).max()


def test_pytorch_bin_weights_import_like_safetensors(pipeline):
  tmp = pipeline["tmp"]
  assert len(list((tmp / "hf_gqa_tied.bin").glob("pytorch_model-*.bin"))) == 2
  from_safetensors = ParamsReader(tmp / "hf_gqa_tied.mt" / "0" / "items")
  from_bin = ParamsReader(tmp / "hf_gqa_tied.bin.mt" / "0" / "items")
  assert from_bin.shapes() == from_safetensors.shapes()
  for path in from_safetensors.shapes():
    np.testing.assert_array_equal(from_bin.read(path), from_safetensors.read(path), err_msg="/".join(path))


def test_extended_vocabulary_keeps_text_logits_and_draws_vision_rows_around_the_text_rows(pipeline):
  tmp, vocab = pipeline["tmp"], pipeline["vocab"]
  mt, hf = _load(tmp / "hf_mha.ext.mt.npy"), _load(tmp / "hf_mha.hf.npy")
  assert mt.shape[-1] == vocab.size
  assert np.abs(mt[..., :vocab.text_size] - hf).max() < TOL
  # New head rows = mean text row + per-dimension noise: at every position the new ids' logits spread
  # about as the text ids' do, around the mean text logit (n draws: within 4 standard errors).
  new = mt[..., vocab.text_size:].astype(np.float64)
  n = new.shape[-1]
  assert np.all(new.std(-1) > 0.5 * hf.std(-1)) and np.all(new.std(-1) < 2 * hf.std(-1))
  assert np.all(np.abs(new.mean(-1) - hf.mean(-1)) < 4 * new.std(-1) / np.sqrt(n))


def test_lwm_checkpoint_matches_lwm_semantics_in_maxtext_and_transformers(pipeline):
  tmp = pipeline["tmp"]
  tokens = np.load(tmp / "lwm.tok.npy")
  want = lwm_logits(pipeline["lwm"], tokens, heads=4, theta=5e7, eps=1e-6)   # numpy, interleaved RoPE, two heads
  mt, hf = _load(tmp / "lwm.mt.npy"), _load(tmp / "lwm.hf.npy")
  assert mt.shape == hf.shape == want.shape == (2, 16, 40448)
  assert np.abs(mt - want).max() < TOL, np.abs(mt - want).max()
  assert np.abs(hf - want).max() < TOL, np.abs(hf - want).max()
