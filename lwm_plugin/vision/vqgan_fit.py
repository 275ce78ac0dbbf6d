"""Fit a small VQGAN of LWM's architecture to a set of images, by the VQ-VAE objective.

LWM tokenizes with a pretrained VQGAN (aMUSEd's, trained with perceptual and adversarial losses on
millions of images); reproducing that training is out of scope. This fits the same architecture
(`vqgan.VQGANModel`, any `VQGANConfig`) to a handful of simple images, which is what the demo's toy
VQGAN is (`tools/fit_toy_vqgan.py`: `lwm-vision` run on the demo's pictures without LWM's weights):

  loss = mean (decode(z_q) - x)^2 + mean (sg[z] - e)^2 + beta * mean (z - sg[e])^2

(van den Oord et al. 2017: z the encoder's latents, e their nearest codebook vectors, sg stop-gradient),
with the straight-through estimator z_q = z + sg[e - z], Adam on a cosine schedule, and random crops
aligned to the code grid (the model is convolutional; crops make a step cheap). The first `warmup` of the
steps train a plain autoencoder (z_q = z); then the codebook starts as k-means centres of the latents of
`kmeans_images` images, and quantization is on. Every `restart_every` steps after that, while
`restart_until` of the steps have not passed, the codes no latent of the step used are moved onto
latents of the step (plus small noise): a small codebook otherwise collapses onto a few codes (measured
on the demo's pictures: 3-5 of 256 codes in use after 200 steps without restarts or warm-up).

Returns the parameters as `vqgan_weights`' flat names (ready for `write_diffusers`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from lwm_plugin.vision.vqgan import VQGANModel
from lwm_plugin.vision.vqgan_weights import VQGANConfig, check_params


@dataclasses.dataclass(frozen=True)
class FitOptions:
  """Steps, batch and crop (pixels per side, a multiple of the downsampling factor), peak learning rate,
  the commitment weight, dead-code restarts, and the seed of the initial weights, crops and restarts."""
  steps: int = 1000
  batch: int = 4
  crop: int = 128
  learning_rate: float = 1e-3
  beta: float = 0.25
  warmup: float = 0.3
  kmeans_images: int = 32
  restart_every: int = 20
  restart_until: float = 0.8
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class FitResult:
  """The fitted weights (flat `vqgan_weights` names, float32) and the per-step reconstruction MSE."""
  params: dict[str, np.ndarray]
  reconstruction_mse: list[float]
  codes_used: int              # distinct codes of the last step's latents


def _latents(model: VQGANModel, x):
  return model.quant_conv(model.encoder(x))


def _forward(model: VQGANModel, x, quantize: bool):
  """Reconstruction through the straight-through code vectors (the latents themselves without `quantize`),
  the two VQ terms, the codes and the latents."""
  z = _latents(model, x)
  codes = model.codebook.nearest(z)
  e = model.codebook.lookup(codes)
  z_q = z + jax.lax.stop_gradient(e - z) if quantize else z
  y = model.decoder(model.post_quant_conv(z_q))
  codebook_term = jnp.mean((jax.lax.stop_gradient(z) - e) ** 2)
  commitment = jnp.mean((z - jax.lax.stop_gradient(e)) ** 2)
  return y, codebook_term, commitment, codes, z


def _check(config: VQGANConfig, images: np.ndarray, options: FitOptions) -> None:
  f = config.downsample_factor
  if not (isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[3] == config.channels):
    raise ValueError(f"images: expected a numpy array [N, H, W, {config.channels}], got "
                     f"{getattr(images, 'shape', type(images).__name__)}")
  if not (np.issubdtype(images.dtype, np.floating) and np.all((images >= -1) & (images <= 1))):
    raise ValueError("images: expected floats in [-1, 1] (uint8 / 127.5 - 1)")
  if options.crop % f or not f <= options.crop <= min(images.shape[1:3]):
    raise ValueError(f"crop={options.crop}: expected a multiple of the downsampling factor {f} that fits the "
                     f"{images.shape[1]} x {images.shape[2]} images")
  for name in ("steps", "batch", "restart_every", "kmeans_images"):
    if getattr(options, name) < 1:
      raise ValueError(f"{name}={getattr(options, name)}: expected a positive integer")
  if not 0.0 <= options.warmup < 1.0:
    raise ValueError(f"warmup={options.warmup}: expected a fraction of the steps in [0, 1)")


def fit_vqgan(config: VQGANConfig, images_NxHxWxC: np.ndarray, options: FitOptions = FitOptions(), *,
              log: Callable[[str], None] = print, log_every: int = 100) -> FitResult:
  """Fits a VQGAN of `config` to `images` (float pixels in [-1, 1]) from random weights."""
  images = images_NxHxWxC
  _check(config, images, options)
  rng = np.random.default_rng(options.seed)
  model = VQGANModel(config)
  crop, f = options.crop, config.downsample_factor
  params = model.init(jax.random.key(options.seed), jnp.zeros((1, crop, crop, config.channels)))["params"]
  schedule = optax.cosine_decay_schedule(options.learning_rate, options.steps, alpha=0.1)
  optimizer = optax.adam(schedule)
  state = optimizer.init(params)

  def loss_fn(p, x, quantize):
    y, codebook_term, commitment, codes, z = model.apply({"params": p}, x, quantize, method=_forward)
    reconstruction = jnp.mean((y - x) ** 2)
    vq = codebook_term + options.beta * commitment if quantize else 0.0
    return reconstruction + vq, (reconstruction, codes, z)

  @functools.partial(jax.jit, static_argnums=3)
  def step(p, s, x, quantize):
    (_, (reconstruction, codes, z)), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, x, quantize)
    updates, s = optimizer.update(grads, s, p)
    return optax.apply_updates(p, updates), s, reconstruction, codes, z

  latents = jax.jit(lambda p, x: model.apply({"params": p}, x, method=_latents))
  history, codes, start_vq = [], None, int(options.warmup * options.steps)
  for i in range(options.steps):
    if i == start_vq:
      sample = images[rng.choice(len(images), size=min(options.kmeans_images, len(images)), replace=False)]
      z = np.concatenate([np.asarray(latents(params, sample[j:j + options.batch]))
                          for j in range(0, len(sample), options.batch)])
      params = {**params, "codebook": {"embedding": jnp.asarray(kmeans(z.reshape(-1, config.embed_dim),
                                                                        config.num_embeddings, rng))}}
    top, left = (rng.integers(0, (n - crop) // f + 1) * f for n in images.shape[1:3])
    x = images[rng.integers(len(images), size=options.batch), top:top + crop, left:left + crop].astype(np.float32)
    params, state, reconstruction, codes, z = step(params, state, x, i >= start_vq)
    history.append(float(reconstruction))
    if i > start_vq and i % options.restart_every == 0 and i < options.restart_until * options.steps:
      params = _restart_dead_codes(params, np.asarray(codes), np.asarray(z), rng)   # the step's own latents
    if log_every and (i % log_every == 0 or i == options.steps - 1):
      log(f"step {i}: reconstruction MSE {history[-1]:.4f}, {len(np.unique(np.asarray(codes)))} codes in use")
  flat = {path: np.asarray(v, np.float32) for path, v in traverse_util.flatten_dict(params, sep="/").items()}
  check_params(config, flat)
  return FitResult(flat, history, int(len(np.unique(np.asarray(codes)))))


def kmeans(points_NxD: np.ndarray, k: int, rng: np.random.Generator, iterations: int = 10) -> np.ndarray:
  """float32 [k, D]: Lloyd's k-means from k-means++ seeds (an empty cluster keeps its centre); when the points
  are fewer than k distinct ones, the extra centres are copies with 1 % noise."""
  points = np.asarray(points_NxD, np.float32)
  centres = np.empty((k, points.shape[1]), np.float32)
  centres[0] = points[rng.integers(len(points))]
  nearest_sq = ((points - centres[0]) ** 2).sum(1, dtype=np.float64)
  for c in range(1, k):
    total = nearest_sq.sum()
    pick = rng.choice(len(points), p=nearest_sq / total) if total > 0 else rng.integers(len(points))
    centres[c] = points[pick] + (0.01 * points.std() * rng.standard_normal(points.shape[1]) if total == 0 else 0)
    nearest_sq = np.minimum(nearest_sq, ((points - centres[c]) ** 2).sum(1, dtype=np.float64))
  for _ in range(iterations):
    distance = (points ** 2).sum(1)[:, None] - 2 * points @ centres.T + (centres ** 2).sum(1)[None]
    nearest = np.argmin(distance, axis=1)
    for c in np.unique(nearest):
      centres[c] = points[nearest == c].mean(axis=0)
  return centres


def _restart_dead_codes(params, codes: np.ndarray, latents_D: np.ndarray, rng: np.random.Generator):
  """The codebook with every code unused by `codes` moved onto a random latent of the step (plus 1 % noise)."""
  embedding = np.array(params["codebook"]["embedding"])
  dead = np.setdiff1d(np.arange(len(embedding)), codes.reshape(-1))
  if dead.size:
    z = latents_D.reshape(-1, embedding.shape[1])
    embedding[dead] = z[rng.integers(len(z), size=dead.size)] + 0.01 * rng.standard_normal((dead.size, z.shape[1]))
  return {**params, "codebook": {"embedding": jnp.asarray(embedding)}}
