"""`lwm-convert extend-vocab`: a text model's MaxText checkpoint grown to the multimodal vocabulary."""

import numpy as np
import pytest
from helpers.vocab_rows import assert_drawn_from

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


def _shift_and_scale(leaves):
  """Vocabulary tables whose dimensions each have their own mean and spread (standard normal is too easy)."""
  for path, x in leaves.items():
    if path[-1] in ("embedding", "kernel") and x.ndim == 2 and max(x.shape) >= 32000:
      axis = 0 if x.shape[0] >= 32000 else 1              # the id axis: rows of [V, E], columns of [E, V]
      e = x.shape[1 - axis]
      shape = (1, e) if axis == 0 else (e, 1)
      leaves[path] = (x * np.linspace(0.5, 4.0, e).reshape(shape) + np.arange(e).reshape(shape)).astype(x.dtype)


@pytest.mark.parametrize("scanned", [True, False])
def test_new_rows_are_drawn_around_the_text_rows_and_everything_else_is_copied(tmp_path, vocab, scanned):
  text = _write(tmp_path / "text", _spec(vocab.text_size, scanned), scanned, poison=_shift_and_scale)
  spec = _spec(vocab.size, scanned)
  extend_vocab.convert(spec, tmp_path / "text" / "0" / "items", tmp_path / "mm", vocab=vocab, progress=False)
  extend_vocab.convert(spec, tmp_path / "text" / "0" / "items", tmp_path / "again", vocab=vocab, progress=False)
  reader, again = ParamsReader(tmp_path / "mm" / "0" / "items"), ParamsReader(tmp_path / "again" / "0" / "items")
  assert set(reader.shapes()) == set(text)
  embed = ("token_embedder", "embedding")
  head = [p for p in text if p[-2:] == ("logits_dense", "kernel")][0]
  for path, before in text.items():
    after = reader.read(path)
    assert after.dtype == before.dtype
    np.testing.assert_array_equal(again.read(path), after)   # the same rows every time
    if path == embed:      # [V, E]: rows are ids
      np.testing.assert_array_equal(after[:vocab.text_size], before)
      assert_drawn_from(after[vocab.text_size:], before)
    elif path == head:     # [E, V]: columns are ids
      np.testing.assert_array_equal(after[:, :vocab.text_size], before)
      assert_drawn_from(after[:, vocab.text_size:].T, before.T)
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
