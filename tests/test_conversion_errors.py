"""Bad input to the converters: a clear error naming the problem, and no output directory."""

import json
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

from conftest import REPO, subprocess_env
from conversion import from_hf, names, to_hf
from conversion.spec import ConversionError, ModelSpec
from data_loaders.vocab import MultimodalVocab

SPEC = ModelSpec(E=32, H=4, K=2, D=8, M=64, L=2, V=256, norm_eps=1e-5, rope_theta=1e4, max_positions=64,
                 tie_embeddings=False, scan_layers=True)


def _hf_dir(path, spec=SPEC, drop=(), reshape=None):
  """A Hugging Face directory (config.json + one safetensors file) with random weights."""
  path.mkdir()
  rng = np.random.default_rng(0)
  tensors = {name: rng.standard_normal(shape).astype(np.float32)
             for name, shape in names.hf_shapes(names.table(spec, True)).items() if name not in drop}
  if reshape:
    tensors[reshape[0]] = np.zeros(reshape[1], np.float32)
  save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
  config = spec.hf_config(dtype="float32", bos_token_id=1, eos_token_id=2, pad_token_id=None)
  (path / "config.json").write_text(json.dumps(config))
  return path


def _entries(path):
  return sorted(p.name for p in path.iterdir())


@pytest.mark.parametrize("kwargs, spec, message", [
    (dict(drop=("model.layers.1.mlp.up_proj.weight",)), SPEC, r"missing tensor\(s\) \['model.layers.1.mlp.up_proj"),
    (dict(reshape=("model.norm.weight", (31,))), SPEC, r"'model.norm.weight' has shape \(31,\), expected \(32,\)"),
    (dict(), SPEC.with_(L=3), "num_hidden_layers=2 but the config has base_num_decoder_layers=3"),
    (dict(), SPEC.with_(V=512), "vocabulary size mismatch: the source has 256 ids, the config vocab_size=512"),
])
def test_from_hf_refuses_bad_input_without_output(tmp_path, kwargs, spec, message):
  hf = _hf_dir(tmp_path / "hf", **kwargs)
  with pytest.raises(ConversionError, match=message):
    from_hf.convert(spec, hf, tmp_path / "out", vocab=None, progress=False)
  assert _entries(tmp_path) == ["hf"]


def test_extend_vocab_needs_the_text_vocabulary(tmp_path):
  hf = _hf_dir(tmp_path / "hf")
  vocab = MultimodalVocab.default()
  with pytest.raises(ConversionError, match="grows a text model"):
    from_hf.convert(SPEC.with_(V=vocab.size), hf, tmp_path / "out", vocab=vocab, extend_vocab=True, progress=False)
  assert _entries(tmp_path) == ["hf"]


def test_to_hf_refuses_a_config_that_does_not_match_the_checkpoint(tmp_path):
  from_hf.convert(SPEC, _hf_dir(tmp_path / "hf"), tmp_path / "mt", vocab=None, progress=False)
  items = tmp_path / "mt" / "0" / "items"
  with pytest.raises(ConversionError, match=r"token_embedder/embedding' has shape \(256, 32\), expected \(512, 32\)"):
    to_hf.convert(SPEC.with_(V=512), items, tmp_path / "out", vocab=None, progress=False)
  with pytest.raises(ConversionError,
                     match=r"config: vocab_size=256, but the multimodal vocabulary .* \(or the text vocabulary.s 32000 for"):
    to_hf.convert(SPEC, items, tmp_path / "out", vocab=MultimodalVocab.default(), progress=False)
  with pytest.raises(ConversionError, match="not a MaxText checkpoint"):
    to_hf.convert(SPEC, tmp_path / "hf", tmp_path / "out", vocab=None, progress=False)
  assert _entries(tmp_path) == ["hf", "mt"]


def test_interrupted_export_leaves_no_output(tmp_path, monkeypatch):
  from_hf.convert(SPEC, _hf_dir(tmp_path / "hf"), tmp_path / "mt", vocab=None, progress=False)
  from conversion import safetensors_io
  original, calls = safetensors_io.ShardedWriter.write, []

  def interrupt(self, name, x):
    calls.append(name)
    if len(calls) == 5:
      raise KeyboardInterrupt
    original(self, name, x)

  monkeypatch.setattr(safetensors_io.ShardedWriter, "write", interrupt)
  with pytest.raises(KeyboardInterrupt):
    to_hf.convert(SPEC, tmp_path / "mt" / "0" / "items", tmp_path / "out", vocab=None, max_shard_bytes=4096,
                  progress=False)
  assert _entries(tmp_path) == ["hf", "mt"]


def test_cli_reports_errors_with_exit_code_2(tmp_path):
  # The config resolves through MaxText; the checkpoint path is an empty directory.
  proc = subprocess.run([sys.executable, "-m", "lwm_plugin.convert", "to-hf", "--config", "tiny_cpu.yml", "--checkpoint",
                         str(tmp_path), "--output", str(tmp_path / "out")], env=subprocess_env(), cwd=REPO,
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "lwm-convert: error:" in proc.stderr and "not a MaxText checkpoint" in proc.stderr
  assert not (tmp_path / "out").exists()
