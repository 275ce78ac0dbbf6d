"""Choosing the next token from logits: greedy, temperature, top-k, top-p, per-row allowed ids, seeded.

Pure JAX over `logits_BxV` (one row per sequence), no model and no MaxText. The order is the usual
one (Hugging Face's warpers, LWM's sampler): mask the ids a row may not produce, divide by the
temperature, keep the top-k, keep the top-p nucleus, draw. Definitions, chosen so that ties never
depend on the order of the vocabulary:

  allowed   `allowed_BxV` (bool): a row never produces an id outside its mask (text ids for an
            answer, the VQGAN codes inside a frame, only `<eof>` at a frame's end).
  greedy    `temperature == 0`: the allowed id of largest logit; ties go to the lowest id (argmax).
  top-k     keep every id whose logit is >= the k-th largest allowed logit (ids tied with the k-th
            are all kept, as `transformers`' TopKLogitsWarper does).
  top-p     on the distribution left after top-k, keep id i iff the probability of the ids strictly
            more probable than i is < p: the smallest most-probable set whose mass reaches p, plus
            every id tied with its least probable member. p = 1 keeps everything allowed.
  seed      `step_key(seed, step)`: one key per decoding step, so a run is reproducible and two
            steps never share randomness; the rows of a batch draw independently from that key. The
            key is threefry's whatever JAX's default (MaxText's training sets "unsafe_rbg").

Greedy never reads the key; top-k/top-p do not change a greedy choice (the argmax always survives).
The settings (`Sampling`) live in `sampling_params`, which imports no JAX, so a command line can check
them before it picks the JAX platform.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from lwm_plugin.generation.sampling_params import Sampling

__all__ = ["Sampling", "check_allowed", "filtered_logits", "guided_logits", "sample", "step_key"]


# The key's generator, pinned: MaxText's training start-up sets JAX's default to "unsafe_rbg" for the whole
# process, so a default key would draw other samples for one seed after training in the same process (the
# demo) than in a fresh one (`lwm-generate`, `lwm-make-qa`).
KEY_IMPL = "threefry2x32"


def step_key(seed: int, step: int) -> jax.Array:
  """The random key of decoding step `step` of a run seeded with `seed` (JAX's threefry, whatever the
  process's default key implementation)."""
  return jax.random.fold_in(jax.random.key(seed, impl=KEY_IMPL), step)


def filtered_logits(logits_BxV: jax.Array, allowed_BxV: jax.Array, sampling: Sampling) -> jax.Array:
  """float32 logits / temperature with every id outside allowed, top-k and top-p set to -inf.

  For temperature 0 the logits are only masked (greedy takes the argmax of these).
  """
  logits_BxV = jnp.where(allowed_BxV, logits_BxV.astype(jnp.float32), -jnp.inf)
  if sampling.greedy:
    return logits_BxV
  logits_BxV = logits_BxV / sampling.temperature
  vocab = logits_BxV.shape[-1]
  if sampling.top_k is not None and sampling.top_k < vocab:
    kth_Bx1 = jax.lax.top_k(logits_BxV, sampling.top_k)[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV >= kth_Bx1, logits_BxV, -jnp.inf)
  if sampling.top_p is not None and sampling.top_p < 1.0:
    probs_BxV = jax.nn.softmax(logits_BxV, axis=-1)
    sorted_BxV = -jnp.sort(-probs_BxV, axis=-1)                  # descending
    before_BxV = jnp.cumsum(sorted_BxV, axis=-1) - sorted_BxV    # mass of the ids sorted before each
    kept_B = jnp.sum(before_BxV < sampling.top_p, axis=-1)       # >= 1: before[0] == 0
    floor_Bx1 = jnp.take_along_axis(sorted_BxV, kept_B[:, None] - 1, axis=-1)
    logits_BxV = jnp.where(probs_BxV >= floor_Bx1, logits_BxV, -jnp.inf)
  return logits_BxV


def sample(logits_BxV: jax.Array, allowed_BxV: jax.Array, key: jax.Array, sampling: Sampling) -> jax.Array:
  """int32 [B]: the next id of each row. Every row must allow at least one id (`check_allowed`).

  The randomness is `key`'s; the seed in `sampling` is left out of the compiled function's static
  argument, so a run per seed (`lwm-make-qa` draws one per batch) compiles once per setting.
  """
  return _sample(logits_BxV, allowed_BxV, key, dataclasses.replace(sampling, seed=0))


@functools.partial(jax.jit, static_argnames=("sampling",))
def _sample(logits_BxV: jax.Array, allowed_BxV: jax.Array, key: jax.Array, sampling: Sampling) -> jax.Array:
  filtered_BxV = filtered_logits(logits_BxV, allowed_BxV, sampling)
  if sampling.greedy:
    return jnp.argmax(filtered_BxV, axis=-1).astype(jnp.int32)
  return jax.random.categorical(key, filtered_BxV, axis=-1).astype(jnp.int32)


def check_allowed(allowed_BxV: np.ndarray) -> None:
  """Raises ValueError if a row allows no id (inside `sample` it would silently draw id 0)."""
  empty = np.flatnonzero(~np.asarray(allowed_BxV).any(axis=-1))
  if len(empty):
    raise ValueError(f"rows {empty.tolist()} allow no token id")


def guided_logits(cond_BxV: jax.Array, uncond_BxV: jax.Array, scale: float) -> jax.Array:
  """Classifier-free guidance on logits (LWM's `vision_generation.py`): uncond + scale * (cond - uncond).

  Scale 1 is the conditional model alone; 0 the unconditional one.
  """
  cond_BxV, uncond_BxV = cond_BxV.astype(jnp.float32), uncond_BxV.astype(jnp.float32)
  return uncond_BxV + scale * (cond_BxV - uncond_BxV)
