"""The decode kernel (`lwm_plugin/kernels/ring/decode.py`) and its sharded wrapper
(`ring_attention.sharded_decode_attention`) against a dense softmax written in numpy."""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, run_python
from lwm_plugin.kernels.ring.decode import EMPTY_MAX, decode_attention


def _numpy_attention(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, mask_BxS):
  """Plain float64 softmax attention per (row, head); rows that see nothing give 0."""
  b, t, h, _ = q_BxTxHxD.shape
  group = h // k_BxSxKxD.shape[2]
  out = np.zeros(q_BxTxHxD.shape)
  for i in range(b):
    seen = np.flatnonzero(mask_BxS[i])
    if not seen.size:
      continue
    for j in range(h):
      logits = q_BxTxHxD[i, :, j].astype(np.float64) @ k_BxSxKxD[i, seen, j // group].T.astype(np.float64)
      p = np.exp(logits - logits.max(-1, keepdims=True))
      out[i, :, j] = (p / p.sum(-1, keepdims=True)) @ v_BxSxKxD[i, seen, j // group]
  return out


def _inputs(b=3, t=2, h=8, k=2, s=64, d=16, seed=0):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(b, t, h, d)).astype(np.float32)
  # keys and values carry their position, so a cache shard attended in the wrong place changes the result
  pos = np.arange(s, dtype=np.float32)[None, :, None, None] / s
  key = (rng.normal(size=(b, s, k, d)) + pos).astype(np.float32)
  value = (rng.normal(size=(b, s, k, d)) + 3 * pos).astype(np.float32)
  mask = rng.random((b, s)) < 0.7
  mask[-1] = False  # a row that sees nothing (a padding row of the batch)
  return q, key, value, mask


def test_unsharded_partial_attention_normalises_to_softmax_attention():
  q, k, v, mask = _inputs()
  o, m, s = (np.asarray(x) for x in decode_attention(q, k, v, jnp.asarray(mask)))
  assert o.shape == q.shape and m.shape == s.shape == q.shape[:3] + (1,)
  seen = s[..., 0] > 0
  assert seen[:-1].all() and not seen[-1].any()
  np.testing.assert_allclose(o[:-1] / s[:-1], _numpy_attention(q, k, v, mask)[:-1], rtol=1e-5, atol=1e-5)
  assert (o[-1] == 0).all() and (m[-1] == EMPTY_MAX).all() and np.isfinite(m).all()


def test_partials_of_two_cache_pieces_merge_like_maxtext():
  """MaxText merges the prefill-cache and generated-token partials by max and sum
  (`AttentionOp.normalize_attention`); the same formula over two halves of a cache gives the whole."""
  q, k, v, mask = _inputs(seed=1)
  mask[-1, -3:] = True  # the padding row sees only the second piece: the first contributes nothing
  parts = [decode_attention(q, k[:, sl], v[:, sl], jnp.asarray(mask[:, sl])) for sl in (slice(0, 40), slice(40, 64))]
  (o1, m1, s1), (o2, m2, s2) = [[np.asarray(x, np.float64) for x in p] for p in parts]
  top = np.maximum(m1, m2)
  merged = (np.exp(m1 - top) * o1 + np.exp(m2 - top) * o2) / (np.exp(m1 - top) * s1 + np.exp(m2 - top) * s2)
  np.testing.assert_allclose(merged, _numpy_attention(q, k, v, mask), rtol=1e-5, atol=1e-5)


def test_shape_errors_name_the_arrays():
  q, k, v, mask = _inputs()
  with pytest.raises(ValueError, match=r"H must be a multiple of K"):
    decode_attention(q[:, :, :3], k, v, jnp.asarray(mask))
  with pytest.raises(ValueError, match=r"kv_mask must be \[B, L\]"):
    decode_attention(q, k, v, jnp.asarray(mask[:, :5]))


SHARDED = """
import re
import numpy as np, jax, jax.numpy as jnp
from jax.sharding import Mesh
from lwm_plugin.ring_attention import sharded_decode_attention
from test_ring_decode import _inputs, _numpy_attention
q, k, v, mask = _inputs(b=2, t=1, h=8, k=2, s=256, seed=2)
for n in (1, 2, 4):
  mesh = Mesh(np.array(jax.devices()[:n]).reshape(n, 1), ("context", "tensor"))
  fn = jax.jit(lambda *a: sharded_decode_attention(*a, mesh=mesh, axis_name="context", head_axes="tensor"))
  o, m, s = (np.asarray(x) for x in fn(q, k, v, mask))
  np.testing.assert_allclose(o[:-1] / s[:-1], _numpy_attention(q, k, v, mask)[:-1], rtol=1e-5, atol=1e-5)
  assert (o[-1] == 0).all() and (s[-1] == 0).all()
  hlo = fn.lower(q, k, v, mask).compile().as_text()
  assert "all-gather" not in hlo and "all-to-all" not in hlo, [l for l in hlo.splitlines() if "all-" in l]
  if n > 1:
    assert "all-reduce" in hlo
print("ok")
"""


def test_sharded_decode_matches_numpy_on_1_2_4_devices_without_gathering_the_cache():
  proc = run_python(SHARDED, devices=4, PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests'}")
  assert proc.stdout.strip().endswith("ok"), proc.stdout
