"""data_loaders.weights: the host (numpy) and device (JAX) normalisers are one definition and agree."""

import jax.numpy as jnp
import numpy as np
import pytest

from data_loaders.packing import normalize_weights
from data_loaders.weights import LossWeighting, final_weights
from lwm_plugin.losses.weighted import batch_totals, final_weights_device


def _raw_batch(seed: int):
  """Raw weights as the loader emits them: 1/n_im on each example's modality-m loss tokens."""
  rng = np.random.default_rng(seed)
  u = np.zeros((3, 24), np.float32)
  vision = rng.random((3, 24)) < 0.4
  for row in range(3):
    for start in (0, 12):   # two examples per row
      for mask in (~vision[row, start:start + 12], vision[row, start:start + 12]):
        loss = mask & (rng.random(12) < 0.7)
        if loss.any():
          u[row, start:start + 12][loss] = 1.0 / loss.sum()
  return u, vision.astype(np.int32)


@pytest.mark.parametrize("weighting", [LossWeighting("example", 0.3, 0.7), LossWeighting("token")])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_numpy_and_jax_weights_agree(weighting, seed):
  u, vision = _raw_batch(seed)
  host = normalize_weights({"targets_weights": u, "targets_vision_mask": vision}, weighting=weighting.weighting,
                           modality_weights={"text": weighting.text_weight, "vision": weighting.vision_weight})
  totals = batch_totals(jnp.asarray(u), jnp.asarray(vision))
  device = final_weights_device(jnp.asarray(u), jnp.asarray(vision), totals, weighting)
  np.testing.assert_allclose(np.asarray(device), host["targets_weights"], rtol=1e-6, atol=1e-9)


def test_example_weights_by_hand():
  """Two examples, text only: each example's tokens weigh lambda / (n_i * N) with N = 2."""
  u = np.array([[0.5, 0.5, 0.0, 1 / 3, 1 / 3, 1 / 3]])
  vision = np.zeros_like(u, bool)
  w = final_weights(u, vision, u.sum(), np.float64(0.0), LossWeighting("example", 0.5, 0.5), np)
  np.testing.assert_allclose(w, [[0.125, 0.125, 0.0, 1 / 12, 1 / 12, 1 / 12]])
