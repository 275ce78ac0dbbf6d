"""Released LWM/EasyLM Jax checkpoints: the streaming file reader and from-lwm (in process)."""

import ml_dtypes
import numpy as np
import pytest
from flax import serialization
from helpers.vocab_rows import assert_drawn_from
from safetensors.numpy import load_file

from conversion import from_lwm, to_hf
from conversion.lwm_checkpoint import LwmFile
from conversion.orbax_params import ParamsReader, ParamsWriter
from conversion.spec import ConversionError, ModelSpec
from damage import damaged_copies
from lwm_checkpoints import expected_hf, lwm_tree, write_lwm, write_lwm_train_state
from data_loaders.vocab import MultimodalVocab

E, H, M, L = 32, 4, 64, 2


@pytest.fixture(scope="module")
def vocab():
  return MultimodalVocab.default()   # LLaMA-2 + LWM's 8448-row vision table: 40448 ids


def _spec(vocab, **changes):
  spec = ModelSpec(E=E, H=H, K=H, D=E // H, M=M, L=L, V=vocab.size, norm_eps=1e-6, rope_theta=5e7,
                   max_positions=4096, tie_embeddings=False, scan_layers=True)
  return spec.with_(**changes)


def _tree(vocab, **kw):
  args = dict(E=E, H=H, M=M, L=L, text_rows=vocab.text_size, vision_rows=vocab.vision_rows)
  args.update(kw)
  return lwm_tree(**args)


def test_reader_index_shapes_and_chunked_arrays(tmp_path, monkeypatch):
  tree = {("transformer", "wte", "embedding"): np.arange(12, dtype=np.float32).reshape(4, 3),
          ("lm_head", "kernel"): np.ones((3, 4), ml_dtypes.bfloat16),
          ("transformer", "ln_f", "kernel"): np.full((3,), 2, np.float32)}
  # flax splits arrays over MAX_CHUNK_SIZE bytes (1 GiB: a 7B model's scanned MLP kernels) into chunks.
  monkeypatch.setattr(serialization, "MAX_CHUNK_SIZE", 16)
  write_lwm(tmp_path / "params", tree)
  monkeypatch.undo()
  lwm = LwmFile(tmp_path / "params")
  assert lwm.keys() == list(tree)   # the 'params' prefix is dropped
  for key, value in tree.items():
    assert lwm.shape(key) == value.shape
    got = lwm.read(key)
    assert got.dtype == value.dtype
    np.testing.assert_array_equal(got, value)


def test_reader_rejects_truncated_and_foreign_files(tmp_path):
  write_lwm(tmp_path / "params", {("a",): np.zeros((64,), np.float32)})
  data = (tmp_path / "params").read_bytes()
  (tmp_path / "cut").write_bytes(data[:-10])
  with pytest.raises(ConversionError, match="truncated"):
    LwmFile(tmp_path / "cut")
  (tmp_path / "json").write_text('{"not": "msgpack records"}')
  with pytest.raises(ConversionError, match="not an EasyLM/LWM streaming checkpoint"):
    LwmFile(tmp_path / "json")


@pytest.mark.parametrize("scanned", [True, False])
def test_vision_checkpoint_converts_to_the_merged_vocabulary(tmp_path, vocab, scanned):
  tree = _tree(vocab, scanned=scanned, dtype=ml_dtypes.bfloat16)
  write_lwm(tmp_path / "params", tree)
  spec = _spec(vocab)
  from_lwm.convert(spec, tmp_path / "params", tmp_path / "mt", vocab=vocab, progress=False)
  # MaxText layout: query pre-scaled by 1/sqrt(D), merged embedding with vision id v at text_size + v.
  params = ParamsReader(tmp_path / "mt" / "0" / "items")
  embed = params.read(("token_embedder", "embedding"))
  assert embed.shape == (vocab.size, E) and embed.dtype == np.float32
  np.testing.assert_array_equal(embed[vocab.eof_id], np.asarray(tree[("transformer", "vte", "embedding")][8192], np.float32))
  # Back to Hugging Face and compared with EasyLM's converter formula, tensor by tensor.
  to_hf.convert(spec, tmp_path / "mt" / "0" / "items", tmp_path / "hf", vocab=vocab, dtype="float32", progress=False)
  got = load_file(tmp_path / "hf" / "model.safetensors")
  want = expected_hf(tree, H=H, L=L, rows=vocab.size)
  assert set(got) == set(want)
  for name in want:   # D = 8: sqrt(D) is not a power of two, so the q scale round trip costs an ulp
    np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=0, err_msg=name)


def test_text_checkpoint_needs_extend_vocab_for_a_multimodal_config(tmp_path, vocab):
  write_lwm(tmp_path / "params", _tree(vocab, vision_rows=0))
  with pytest.raises(ConversionError, match="vocabulary size mismatch.*--extend-vocab"):
    from_lwm.convert(_spec(vocab), tmp_path / "params", tmp_path / "out", vocab=vocab, progress=False)
  assert not (tmp_path / "out").exists()
  from_lwm.convert(_spec(vocab), tmp_path / "params", tmp_path / "out", vocab=vocab, extend_vocab=True,
                   progress=False)
  embed = ParamsReader(tmp_path / "out" / "0" / "items").read(("token_embedder", "embedding"))
  text = np.asarray(_tree(vocab, vision_rows=0)[("transformer", "wte", "embedding")], np.float32)
  np.testing.assert_array_equal(embed[:vocab.text_size], text)
  assert_drawn_from(embed[vocab.text_size:], text)


@pytest.mark.parametrize("break_it, message", [
    (lambda t: t.pop(("transformer", "h", "scan_decoder", "feed_forward", "w3", "kernel")),
     "missing tensor transformer/h/scan_decoder/feed_forward/w3/kernel"),
    (lambda t: t.update({("transformer", "ln_f", "kernel"): np.ones(E + 1, np.float32)}),
     r"transformer/ln_f/kernel has shape \(33,\), expected \(32,\)"),
    (lambda t: t.update({("transformer", "vte", "embedding"): np.ones((8000, E), np.float32)}),
     "the vision table has 8000 rows"),
    (lambda t: t.update({("opt_state", "mu"): np.ones(3, np.float32)}),
     r"unexpected tensor\(s\) \['opt_state/mu'\] \(not part of an LWM Llama model\)"),
])
def test_bad_checkpoints_fail_clearly_without_output(tmp_path, vocab, break_it, message):
  tree = _tree(vocab)
  break_it(tree)
  write_lwm(tmp_path / "params", tree)
  with pytest.raises(ConversionError, match=message):
    from_lwm.convert(_spec(vocab), tmp_path / "params", tmp_path / "out", vocab=vocab, progress=False)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["params"]


def test_interrupted_conversion_leaves_no_output(tmp_path, vocab, monkeypatch):
  write_lwm(tmp_path / "params", _tree(vocab))
  calls = []

  def interrupt(self, path, x):
    calls.append(path)
    if len(calls) == 3:
      raise KeyboardInterrupt
    return original(self, path, x)

  original = ParamsWriter.add
  monkeypatch.setattr(ParamsWriter, "add", interrupt)
  with pytest.raises(KeyboardInterrupt):
    from_lwm.convert(_spec(vocab), tmp_path / "params", tmp_path / "out", vocab=vocab, progress=False)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["params"]


def test_train_state_converts_like_its_params(tmp_path, vocab):
  # LWM's streaming_train_state holds step, params/params/... and the optimizer state; its parameters
  # must convert exactly as the same parameters saved as a params file.
  tree = _tree(vocab, dtype=ml_dtypes.bfloat16)
  write_lwm(tmp_path / "params", tree)
  write_lwm_train_state(tmp_path / "streaming_train_state", tree)
  state = LwmFile(tmp_path / "streaming_train_state")
  assert state.train_state and not LwmFile(tmp_path / "params").train_state
  assert state.keys() == list(tree)
  for name in ("params", "streaming_train_state"):
    from_lwm.convert(_spec(vocab), tmp_path / name, tmp_path / f"{name}.mt", vocab=vocab, progress=False)
  from_params, from_state = (ParamsReader(tmp_path / f"{n}.mt" / "0" / "items") for n in ("params", "streaming_train_state"))
  assert from_state.shapes() == from_params.shapes()
  for path in from_params.shapes():
    np.testing.assert_array_equal(from_state.read(path), from_params.read(path), err_msg="/".join(path))


def test_damaged_files_fail_with_conversion_errors_only(tmp_path):
  # Whatever damaged msgpack/flax bytes make the decoders raise, the reader answers with a ConversionError
  # naming the file (or reads it: a flipped byte inside float data is not detectable).
  tree = {("transformer", "wte", "embedding"): np.arange(12, dtype=np.float32).reshape(4, 3),
          ("lm_head", "kernel"): np.ones((3, 4), ml_dtypes.bfloat16)}
  write_lwm(tmp_path / "src", tree)
  errors = 0
  for data in damaged_copies((tmp_path / "src").read_bytes(), 400):
    (tmp_path / "params").write_bytes(data)
    try:
      lwm = LwmFile(tmp_path / "params")
      for key in lwm.keys():
        assert lwm.read(key).shape == lwm.shape(key)
    except ConversionError as e:
      assert str(tmp_path / "params") in str(e)
      errors += 1
  assert errors > 200
