"""Fitting a VQGAN by the VQ-VAE objective: the fitted weights round-trip their images through the codec.

The reference is the images themselves, read back through `VQGANCodec` (the inference path `lwm-vision`
uses, not the fitting's own forward): the fitted model reconstructs them far better than the best
constant picture, and better than its random initial weights. Dead-code restarts and the argument checks
are tested on their own.
"""

import numpy as np
import pytest

from lwm_plugin.vision import vqgan_fit
from lwm_plugin.vision.vqgan import VQGANCodec
from lwm_plugin.vision.vqgan_fit import FitOptions, fit_vqgan
from lwm_plugin.vision.vqgan_weights import VQGANConfig

CONFIG = VQGANConfig(block_channels=(8, 8), num_res_blocks=1, z_channels=4, num_embeddings=16, embed_dim=4,
                     norm_groups=4)


def _pictures(n: int, seed: int = 0) -> np.ndarray:
  """n 16 x 16 pictures: a flat colour with a square of another colour at a random place."""
  rng = np.random.default_rng(seed)
  palette = rng.uniform(-0.9, 0.9, (6, 3)).astype(np.float32)
  out = np.empty((n, 16, 16, 3), np.float32)
  for i in range(n):
    back, front = rng.choice(6, size=2, replace=False)
    out[i] = palette[back]
    r, c = rng.integers(0, 9, size=2)
    out[i, r:r + 8, c:c + 8] = palette[front]
  return out


def _mse(codec: VQGANCodec, x: np.ndarray) -> float:
  return float(np.mean((codec.decode(codec.encode(x)) - x) ** 2))


def test_fitted_weights_round_trip_their_pictures_through_the_codec():
  x = _pictures(32)
  lines = []
  fit = fit_vqgan(CONFIG, x, FitOptions(steps=300, batch=8, crop=16, learning_rate=3e-3, restart_every=10),
                  log=lines.append, log_every=100)
  constant = float(np.mean((x - x.mean(axis=(0, 1, 2))) ** 2))   # the best single colour for every pixel
  fitted = _mse(VQGANCodec(CONFIG, fit.params), x)
  initial = fit_vqgan(CONFIG, x, FitOptions(steps=1, batch=8, crop=16, learning_rate=0.0), log_every=0)
  assert fitted < 0.3 * constant, (fitted, constant)   # measured: 0.19
  assert fitted < 0.3 * _mse(VQGANCodec(CONFIG, initial.params), x)
  assert len(fit.reconstruction_mse) == 300 and fit.codes_used > 2
  assert lines[0].startswith("step 0: reconstruction MSE") and lines[-1].startswith("step 299:")


def test_kmeans_finds_separated_clusters():
  rng = np.random.default_rng(0)
  centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], np.float32)
  points = np.concatenate([c + 0.1 * rng.standard_normal((50, 2)) for c in centres]).astype(np.float32)
  found = vqgan_fit.kmeans(points, 3, rng)
  assert sorted(map(tuple, np.round(found).astype(int).tolist())) == [(0, 0), (0, 10), (10, 0)]
  assert vqgan_fit.kmeans(points[:2], 4, rng).shape == (4, 2)   # fewer points than centres


def test_dead_codes_move_onto_the_steps_latents_and_used_ones_stay():
  rng = np.random.default_rng(0)
  embedding = rng.standard_normal((6, 2)).astype(np.float32)
  latents = np.full((4, 2), 5.0, np.float32)
  params = {"codebook": {"embedding": embedding}, "encoder": {"w": np.ones(1)}}
  out = vqgan_fit._restart_dead_codes(params, np.array([[1, 3]]), latents, rng)
  new = np.asarray(out["codebook"]["embedding"])
  np.testing.assert_array_equal(new[[1, 3]], embedding[[1, 3]])
  assert np.all(np.abs(new[[0, 2, 4, 5]] - 5.0) < 0.1)
  assert out["encoder"] is params["encoder"]


@pytest.mark.parametrize("images, options, message", [
    (np.zeros((2, 16, 16, 3), np.float32), FitOptions(crop=15), "crop=15: expected a multiple of the .* factor 2"),
    (np.zeros((2, 16, 16, 3), np.float32), FitOptions(crop=32), "crop=32"),
    (np.full((2, 16, 16, 3), 2.0, np.float32), FitOptions(crop=16), "floats in \\[-1, 1\\]"),
    (np.zeros((2, 16, 16), np.float32), FitOptions(crop=16), "expected a numpy array \\[N, H, W, 3\\]"),
    (np.zeros((2, 16, 16, 3), np.float32), FitOptions(crop=16, steps=0), "steps=0"),
    (np.zeros((2, 16, 16, 3), np.float32), FitOptions(crop=16, warmup=1.0), "warmup=1.0"),
])
def test_bad_arguments_are_refused_before_fitting(images, options, message):
  with pytest.raises(ValueError, match=message):
    fit_vqgan(CONFIG, images, options)
