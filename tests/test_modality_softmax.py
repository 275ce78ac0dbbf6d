"""Per-modality softmax on the merged head == two separate softmaxes (LWM's two heads)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lwm_plugin.losses.modality_softmax import (mask_logits_by_target_modality, mask_value, modality_logits_mask,
                                         per_modality_cross_entropy, per_modality_log_softmax)
from data_loaders.vocab import MultimodalVocab, VocabLayout

# Text 0..5, vision 6..12, dedicated markers 13 and 14 (text modality), padding 15.
LAYOUT = VocabLayout(text_size=6, vision_start=6, vision_end=13, marker_ids=(13, 14), size=16)
TEXT_COLS, VISION_COLS = [0, 1, 2, 3, 4, 5, 13, 14], list(range(6, 13))


def _inputs(seed=0, b=2, s=5):
  rng = np.random.default_rng(seed)
  logits = rng.normal(0, 3, (b, s, LAYOUT.size)).astype(np.float32)
  logits[..., 15] = 50.0  # a padding row with a huge logit must get no probability
  targets = rng.choice(TEXT_COLS + VISION_COLS, (b, s)).astype(np.int32)
  return logits, targets


def _reference_logp(logits, targets):
  """Two heads, as LWM: log-softmax over the text logits or over the vision logits, in float64."""
  out = np.full(logits.shape, -np.inf)
  for idx in np.ndindex(targets.shape):
    cols = VISION_COLS if targets[idx] in VISION_COLS else TEXT_COLS
    x = logits[idx][cols].astype(np.float64)
    out[idx + (cols,)] = x - (np.log(np.sum(np.exp(x - x.max()))) + x.max())
  return out


def test_log_softmax_equals_two_separate_softmaxes():
  logits, targets = _inputs()
  got = np.asarray(per_modality_log_softmax(jnp.asarray(logits), jnp.asarray(targets), LAYOUT))
  want = _reference_logp(logits, targets)
  np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
  np.testing.assert_allclose(got[np.isfinite(want)], want[np.isfinite(want)], rtol=1e-6, atol=1e-6)


def test_cross_entropy_and_z_loss():
  logits, targets = _inputs(1)
  loss, z = per_modality_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), LAYOUT, z_loss=1e-2)
  logp = _reference_logp(logits, targets)
  nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  log_z = np.take_along_axis(logits, targets[..., None], -1)[..., 0] + nll  # log Z = logit - log p
  np.testing.assert_allclose(np.asarray(z), 1e-2 * log_z**2, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(loss), nll + 1e-2 * log_z**2, rtol=1e-5, atol=1e-6)


def test_masked_logits_in_maxtexts_cross_entropy():
  """The masking route: MaxText's own cross entropy on masked logits gives the per-modality loss."""
  from maxtext.utils.max_utils import cross_entropy_with_logits
  logits, targets = _inputs(2)
  masked = mask_logits_by_target_modality(jnp.asarray(logits), jnp.asarray(targets), LAYOUT)
  loss, _ = cross_entropy_with_logits(masked, jax.nn.one_hot(targets, LAYOUT.size), z_loss=0.0)
  want, _ = per_modality_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), LAYOUT)
  np.testing.assert_allclose(np.asarray(loss), np.asarray(want), rtol=1e-6, atol=1e-6)
  assert np.all(np.isfinite(np.asarray(loss)))


def test_no_gradient_reaches_the_other_partition():
  logits, targets = _inputs(3)
  grad = jax.grad(lambda x: per_modality_cross_entropy(x, jnp.asarray(targets), LAYOUT)[0].sum())(jnp.asarray(logits))
  allowed = np.asarray(modality_logits_mask(jnp.asarray(targets), LAYOUT))
  assert np.all(np.asarray(grad)[~allowed] == 0.0) and np.any(np.asarray(grad)[allowed] != 0.0)
  assert not allowed[..., 15].any()  # padding belongs to neither modality


def test_masked_logits_keep_dtype_and_stay_finite():
  logits, targets = _inputs(4)
  for dtype in (jnp.bfloat16, jnp.float16):
    masked = mask_logits_by_target_modality(jnp.asarray(logits, dtype), jnp.asarray(targets), LAYOUT)
    assert masked.dtype == dtype and bool(jnp.all(jnp.isfinite(masked)))
    assert float(jnp.exp(jnp.asarray(mask_value(dtype), jnp.float32) - 50.0)) == 0.0


def test_default_vocabulary_layout():
  vocab = MultimodalVocab.default()
  targets = jnp.asarray([[263, vocab.vision_id(5), vocab.eof_id, vocab.eov_id, vocab.eos_id]])
  mask = np.asarray(modality_logits_mask(targets, vocab.layout))
  assert mask.shape == (1, 5, 40448)
  assert mask[0, 0].sum() == 32000 and mask[0, 0, :32000].all()
  assert all(mask[0, k].sum() == 8448 and mask[0, k, 32000:].all() for k in (1, 2, 3))
  assert mask[0, 4, 2] and not mask[0, 4, 40192]


def test_shape_errors():
  logits, targets = _inputs()
  with pytest.raises(ValueError, match="vocabulary size 16"):
    per_modality_cross_entropy(jnp.asarray(logits[..., :12]), jnp.asarray(targets), LAYOUT)
  with pytest.raises(ValueError, match="targets_BxS.shape"):
    mask_logits_by_target_modality(jnp.asarray(logits), jnp.asarray(targets[:, :3]), LAYOUT)
