"""`lwm-convert extend-vocab`: a text model's MaxText checkpoint grown to the multimodal vocabulary."""

import numpy as np
import pytest

from conversion import extend_vocab, names
from conversion.orbax_params import ParamsReader, ParamsWriter
from conversion.spec import ConversionError, ModelSpec
from data_loaders.vocab import MultimodalVocab


@pytest.fixture(scope="module")
def vocab():
  return MultimodalVocab.default()   # LLaMA-2 (32000) + LWM's vision rows: 40448 ids


def _spec(V: int, scanned: bool) -> ModelSpec:
  return ModelSpec(E=16, H=2, K=2, D=8, M=32, L=2, V=V, norm_eps=1e-5, rope_theta=5e7, max_positions=64,
                   tie_embeddings=False, scan_layers=scanned)


def _write(path, spec: ModelSpec, scanned: bool, dtype=np.float32, poison=None) -> dict:
  """A random params-only checkpoint for `spec`; returns its leaves by path. `poison(leaves)` edits them."""
  rng = np.random.default_rng(0)
  leaves = {r.mt_path: rng.standard_normal(r.leaf_shape).astype(dtype) for r in names.table(spec, scanned)}
  if poison:
    poison(leaves)
  writer = ParamsWriter(path / "0", scanned)
  for leaf_path, x in leaves.items():
    writer.add(leaf_path, x)
  writer.finish()
  return leaves


@pytest.mark.parametrize("scanned", [True, False])
def test_new_rows_are_the_mean_text_row_and_everything_else_is_copied(tmp_path, vocab, scanned):
  text = _write(tmp_path / "text", _spec(vocab.text_size, scanned), scanned)
  spec = _spec(vocab.size, scanned)
  extend_vocab.convert(spec, tmp_path / "text" / "0" / "items", tmp_path / "mm", vocab=vocab, progress=False)
  reader = ParamsReader(tmp_path / "mm" / "0" / "items")
  assert set(reader.shapes()) == set(text)
  embed = ("token_embedder", "embedding")
  head = [p for p in text if p[-2:] == ("logits_dense", "kernel")][0]
  for path, before in text.items():
    after = reader.read(path)
    assert after.dtype == before.dtype
    if path == embed:      # [V, E]: rows are ids
      np.testing.assert_array_equal(after[:vocab.text_size], before)
      np.testing.assert_allclose(after[vocab.text_size:], np.broadcast_to(before.astype(np.float64).mean(0), (vocab.size - vocab.text_size,
                                                                                          before.shape[1])), rtol=1e-6)
    elif path == head:     # [E, V]: columns are ids
      np.testing.assert_array_equal(after[:, :vocab.text_size], before)
      np.testing.assert_allclose(after[:, vocab.text_size:], np.broadcast_to(
          before.astype(np.float64).mean(1, keepdims=True), (before.shape[0], vocab.size - vocab.text_size)), rtol=1e-6)
    else:
      np.testing.assert_array_equal(after, before)


def test_refuses_a_text_config_and_an_already_extended_checkpoint(tmp_path, vocab):
  _write(tmp_path / "text", _spec(vocab.text_size, True), True)
  items = tmp_path / "text" / "0" / "items"
  with pytest.raises(ConversionError, match="grows a text model"):
    extend_vocab.convert(_spec(vocab.text_size, True), items, tmp_path / "out", vocab=vocab, progress=False)
  _write(tmp_path / "mm", _spec(vocab.size, True), True)
  with pytest.raises(ConversionError, match="already has the multimodal vocabulary"):
    extend_vocab.convert(_spec(vocab.size, True), tmp_path / "mm" / "0" / "items", tmp_path / "out", vocab=vocab,
                         progress=False)
  with pytest.raises(ConversionError, match="missing tensor|shape"):   # another model's checkpoint
    extend_vocab.convert(_spec(vocab.size, True).with_(M=64), items, tmp_path / "out", vocab=vocab, progress=False)
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value, dtype, message", [
    (np.nan, "", r"checkpoint .*: tensor decoder/decoder_norm/scale has 1 NaN and 0 infinite value\(s\) "
                 r"\(first at index \(5,\)\)"),
    (1e5, "float16", r"tensor decoder/decoder_norm/scale has 0 NaN and 1 infinite value\(s\) after the cast to "
                     r"float16"),
])
def test_refuses_non_finite_tensors(tmp_path, vocab, value, dtype, message):
  def poison(leaves):
    leaves[("decoder", "decoder_norm", "scale")][5] = value
  _write(tmp_path / "text", _spec(vocab.text_size, True), True, poison=poison)
  with pytest.raises(ConversionError, match=message):
    extend_vocab.convert(_spec(vocab.size, True), tmp_path / "text" / "0" / "items", tmp_path / "out", vocab=vocab,
                         dtype=dtype, progress=False)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["text"]
