"""Sampling (lwm_plugin/generation/sampling.py) against an independent numpy statement of each rule.

The reference below computes, per row, the set of ids that may be drawn and their probabilities
directly from the definitions (top-p as "mass of the strictly more probable ids < p", O(V^2)), with
no sorting tricks; the tests check the drawable set exactly and the frequencies over many draws.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from lwm_plugin.generation import sampling
from lwm_plugin.generation.sampling import Sampling


def reference_distribution(logits_V, allowed_V, s: Sampling) -> np.ndarray:
  """Probabilities over the V ids (float64), from the definitions in the module docstring."""
  logits_V = np.where(allowed_V, np.asarray(logits_V, np.float64), -np.inf)
  if s.temperature == 0:
    out = np.zeros(len(logits_V))
    out[int(np.argmax(logits_V))] = 1.0
    return out
  z = logits_V / s.temperature
  if s.top_k is not None:
    kth = np.sort(z)[::-1][min(s.top_k, len(z)) - 1]
    z = np.where(z >= kth, z, -np.inf)
  p = np.exp(z - z.max())
  p /= p.sum()
  if s.top_p is not None:
    keep = np.array([p[p > p[i]].sum() < s.top_p for i in range(len(p))]) & (p > 0)
    p = np.where(keep, p, 0.0)
    p /= p.sum()
  return p


def _draws(logits_BxV, allowed_BxV, s: Sampling, n: int) -> np.ndarray:
  """[n, B] ids from n independent steps."""
  keys = jax.vmap(lambda i: sampling.step_key(s.seed, i))(np.arange(n))
  draw = jax.vmap(lambda k: sampling.sample(logits_BxV, allowed_BxV, k, s))
  return np.asarray(draw(keys))


LOGITS = np.log(np.array([[0.05, 0.4, 0.1, 0.25, 0.2],     # distinct probabilities
                          [0.3, 0.3, 0.1, 0.2, 0.1]]))      # ties at the top and at the bottom


def test_greedy_is_the_masked_argmax_with_ties_to_the_lowest_id():
  allowed = np.ones_like(LOGITS, bool)
  assert sampling.sample(LOGITS, allowed, sampling.step_key(0, 0), Sampling()).tolist() == [1, 0]
  allowed[0, 1] = allowed[1, 0] = False  # the best id of each row forbidden
  assert sampling.sample(LOGITS, allowed, sampling.step_key(0, 0), Sampling()).tolist() == [3, 1]
  # top-k / top-p never change a greedy choice and greedy ignores the key
  assert sampling.sample(LOGITS, allowed, sampling.step_key(5, 9), Sampling(0.0, 1, 0.1)).tolist() == [3, 1]


@pytest.mark.parametrize("s", [
    Sampling(temperature=1.0), Sampling(temperature=0.5), Sampling(temperature=2.0, top_k=2),
    Sampling(temperature=1.0, top_k=3), Sampling(temperature=1.0, top_p=0.5), Sampling(temperature=1.0, top_p=0.7),
    Sampling(temperature=0.7, top_k=4, top_p=0.8), Sampling(temperature=1.0, top_k=1),
], ids=str)
def test_drawn_ids_and_frequencies_match_the_reference(s):
  allowed = np.ones_like(LOGITS, bool)
  allowed[0, 3] = False
  n = 4000
  ids_NxB = _draws(LOGITS, allowed, s, n)
  for b in range(LOGITS.shape[0]):
    want = reference_distribution(LOGITS[b], allowed[b], s)
    freq = np.bincount(ids_NxB[:, b], minlength=LOGITS.shape[1]) / n
    assert set(np.flatnonzero(freq)) == set(np.flatnonzero(want)), (b, freq, want)  # exactly the drawable ids
    assert np.abs(freq - want).max() < 4 * np.sqrt(0.25 / n), (b, freq, want)  # 4 sigma of a binomial


def test_top_p_boundaries():
  """probs 0.4 0.25 0.2 0.1 0.05: the nucleus grows by one id each time p passes a cumulative mass."""
  logits = np.log(np.array([[0.05, 0.4, 0.1, 0.25, 0.2]]))
  allowed = np.ones_like(logits, bool)
  cases = [(0.39, {1}), (0.41, {1, 3}), (0.64, {1, 3}), (0.66, {1, 3, 4}), (0.84, {1, 3, 4}), (0.86, {1, 3, 4, 2}),
           (0.949, {1, 3, 4, 2}), (0.951, {0, 1, 2, 3, 4}), (1.0, {0, 1, 2, 3, 4})]
  for p, want in cases:
    s = Sampling(temperature=1.0, top_p=p)
    assert set(np.flatnonzero(reference_distribution(logits[0], allowed[0], s))) == want  # the reference agrees
    assert set(np.unique(_draws(logits, allowed, s, 400))) == want, p


def test_ties_at_the_top_p_and_top_k_boundary_are_all_kept():
  logits = np.log(np.array([[0.3, 0.3, 0.2, 0.1, 0.1]]))
  allowed = np.ones_like(logits, bool)
  assert set(np.unique(_draws(logits, allowed, Sampling(1.0, top_p=0.2), 400))) == {0, 1}  # the tie at the top
  assert set(np.unique(_draws(logits, allowed, Sampling(1.0, top_k=4), 400))) == {0, 1, 2, 3, 4}  # 4th tied with 5th
  assert set(np.unique(_draws(logits, allowed, Sampling(1.0, top_p=0.85), 400))) == {0, 1, 2, 3, 4}


def test_seeded_runs_repeat_and_different_seeds_or_steps_differ():
  logits = np.zeros((8, 64), np.float32)
  allowed = np.ones_like(logits, bool)
  s = Sampling(temperature=1.0, seed=3)
  a = sampling.sample(logits, allowed, sampling.step_key(3, 0), s)
  assert np.array_equal(a, sampling.sample(logits, allowed, sampling.step_key(3, 0), s))
  assert not np.array_equal(a, sampling.sample(logits, allowed, sampling.step_key(4, 0), s))
  assert not np.array_equal(a, sampling.sample(logits, allowed, sampling.step_key(3, 1), s))
  assert len(set(np.asarray(a).tolist())) > 1  # the rows of a batch draw independently


def test_a_seed_draws_the_same_after_maxtext_changed_the_default_key_implementation():
  """MaxText's training start-up sets jax_default_prng_impl to "unsafe_rbg" for the process (the demo decodes
  after training in the same process): the draws of a seed must not depend on it."""
  logits = np.zeros((8, 64), np.float32)
  allowed = np.ones_like(logits, bool)
  s = Sampling(temperature=1.0, seed=3)
  default = jax.config.jax_default_prng_impl
  fresh = np.asarray(sampling.sample(logits, allowed, sampling.step_key(3, 0), s))
  try:
    jax.config.update("jax_default_prng_impl", "unsafe_rbg")
    unpinned = np.asarray(sampling.sample(logits, allowed, jax.random.fold_in(jax.random.key(3), 0), s))
    after = np.asarray(sampling.sample(logits, allowed, sampling.step_key(3, 0), s))
  finally:
    jax.config.update("jax_default_prng_impl", default)
  assert np.array_equal(fresh, after) and not np.array_equal(fresh, unpinned)  # a default key would have drawn others


def test_one_compile_per_setting_whatever_the_seed():
  """The seed reaches `sample` through the key: runs with new seeds reuse the compiled function."""
  logits = np.zeros((3, 17), np.float32)
  allowed = np.ones_like(logits, bool)
  s = Sampling(temperature=0.9, top_p=0.8)
  sampling.sample(logits, allowed, sampling.step_key(0, 0), s)
  before = sampling._sample._cache_size()
  draws = [np.asarray(sampling.sample(logits, allowed, sampling.step_key(seed, 0), Sampling(0.9, None, 0.8, seed)))
           for seed in range(1, 6)]
  assert sampling._sample._cache_size() == before
  assert len({d.tobytes() for d in draws}) > 1


def test_allowed_mask_is_never_left():
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((4, 50)).astype(np.float32) * 3
  allowed = rng.random((4, 50)) < 0.2
  ids = _draws(logits, allowed, Sampling(temperature=1.5), 300)
  assert all(allowed[b, ids[:, b]].all() for b in range(4))
  with pytest.raises(ValueError, match=r"rows \[1\] allow no token id"):
    sampling.check_allowed(np.array([[True, False], [False, False]]))


def test_guided_logits_and_bad_settings():
  cond, uncond = np.array([[1.0, 3.0]]), np.array([[2.0, 0.5]])
  np.testing.assert_allclose(sampling.guided_logits(cond, uncond, 5.0), [[2.0 + 5 * -1.0, 0.5 + 5 * 2.5]])
  np.testing.assert_allclose(sampling.guided_logits(cond, uncond, 1.0), cond)
  for bad, match in [(dict(temperature=-1.0), "temperature"), (dict(temperature=float("nan")), "temperature"),
                     (dict(top_k=0), "top_k"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p")]:
    with pytest.raises(ValueError, match=match):
      Sampling(**bad)
