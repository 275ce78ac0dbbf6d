"""Symmetric hooks: exact inverses, and each one checked against the maths it stands for."""

import math

import ml_dtypes
import numpy as np
import pytest

from conversion import hooks

RNG = np.random.default_rng(0)


def _rand(*shape):
  return RNG.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("hook, shape", [
    (hooks.Identity(), (8,)),
    (hooks.Kernel((8, 4, 2)), (8, 4, 2)),
    (hooks.Kernel((4, 2, 8), n_in=2), (4, 2, 8)),
    (hooks.Transpose(), (8, 6)),
    (hooks.ScaleQuery(16), (8, 4, 2)),
    (hooks.ScaleQuery(64), (8, 4, 2)),
    (hooks.InterleavedRope(2), (2 * 8, 5)),
    (hooks.chain(hooks.ScaleQuery(16), hooks.Kernel((8, 2, 16))), (8, 2, 16)),
    (hooks.chain(hooks.Transpose(), hooks.InterleavedRope(4)), (6, 4 * 4)),
])
def test_round_trip_is_bit_exact(hook, shape):
  x = _rand(*shape)
  np.testing.assert_array_equal(hook.from_hf(hook.to_hf(x)), x)


def test_kernel_matches_the_linear_layer_it_stands_for():
  x_BxE = _rand(3, 8)
  q_ExHxD = _rand(8, 4, 2)
  w = hooks.Kernel((8, 4, 2)).to_hf(q_ExHxD)          # torch Linear weight [H*D, E]: y = x @ W.T
  np.testing.assert_allclose(x_BxE @ w.T, np.einsum("be,ehd->bhd", x_BxE, q_ExHxD).reshape(3, 8), atol=1e-5)
  o_HxDxE = _rand(4, 2, 8)
  w = hooks.Kernel((4, 2, 8), n_in=2).to_hf(o_HxDxE)  # o_proj [E, H*D]
  a_BxHxD = _rand(3, 4, 2)
  np.testing.assert_allclose(a_BxHxD.reshape(3, 8) @ w.T, np.einsum("bhd,hde->be", a_BxHxD, o_HxDxE), atol=1e-5)


def test_scale_query_multiplies_by_sqrt_head_dim():
  x = _rand(8, 4, 128)
  np.testing.assert_allclose(hooks.ScaleQuery(128).to_hf(x), x * math.sqrt(128), rtol=1e-6)


def test_bfloat16_queries_round_trip_exactly_through_float32_for_head_dim_128():
  # A bf16 Hugging Face q_proj -> float32 MaxText (scaled by 1/sqrt(128), not a power of two) -> bf16.
  x = _rand(256, 64).astype(ml_dtypes.bfloat16)
  hook = hooks.ScaleQuery(128)
  back = hook.to_hf(hook.from_hf(x.astype(np.float32))).astype(ml_dtypes.bfloat16)
  np.testing.assert_array_equal(back.view(np.uint16), x.view(np.uint16))


def _rope_interleaved(x_SxD, theta=1e4):
  """Meta/LWM RoPE: pairs (2i, 2i+1) rotated as complex numbers (lwm/llama.py apply_rotary_emb)."""
  S, D = x_SxD.shape
  freqs = np.outer(np.arange(S), 1.0 / theta ** (np.arange(0, D, 2) / D))
  z = (x_SxD[:, 0::2] + 1j * x_SxD[:, 1::2]) * np.exp(1j * freqs)
  return np.stack([z.real, z.imag], axis=-1).reshape(S, D)


def _rope_half(x_SxD, theta=1e4):
  """Hugging Face / MaxText default RoPE: pairs (i, i + D/2), rotate_half."""
  S, D = x_SxD.shape
  freqs = np.outer(np.arange(S), 1.0 / theta ** (np.arange(0, D, 2) / D))
  cos, sin = np.cos(np.concatenate([freqs, freqs], -1)), np.sin(np.concatenate([freqs, freqs], -1))
  rotated = np.concatenate([-x_SxD[:, D // 2:], x_SxD[:, :D // 2]], -1)
  return x_SxD * cos + rotated * sin


def test_interleaved_rope_permutation_keeps_attention_scores():
  # Scores of an LWM (interleaved) head equal those of the permuted weights under rotate-half RoPE.
  S, E, H, D = 7, 12, 2, 8
  x_SxE = _rand(S, E).astype(np.float64)
  wq_meta, wk_meta = _rand(H * D, E).astype(np.float64), _rand(H * D, E).astype(np.float64)
  perm = hooks.InterleavedRope(H)
  wq_hf, wk_hf = perm.to_hf(wq_meta), perm.to_hf(wk_meta)
  for h in range(H):
    rows = slice(h * D, (h + 1) * D)
    meta = _rope_interleaved(x_SxE @ wq_meta[rows].T) @ _rope_interleaved(x_SxE @ wk_meta[rows].T).T
    hf = _rope_half(x_SxE @ wq_hf[rows].T) @ _rope_half(x_SxE @ wk_hf[rows].T).T
    np.testing.assert_allclose(hf, meta, rtol=1e-10, atol=1e-10)
    wrong = _rope_half(x_SxE @ wq_meta[rows].T) @ _rope_half(x_SxE @ wk_meta[rows].T).T
    assert np.abs(wrong - meta).max() > 1e-2  # the permutation matters


def test_grow_rows_draws_new_rows_around_the_mean_at_the_tables_scale():
  shift, scale = np.array([5.0, -2.0, 0.0, 1.0]), np.array([3.0, 0.5, 1.0, 10.0])
  table = (np.random.default_rng(3).standard_normal((400, 4)) * scale + shift).astype(np.float32)
  out = hooks.grow_rows(table, 400 + 20_000, seed=7)
  np.testing.assert_array_equal(out[:400], table)
  new = out[400:].astype(np.float64)
  mean, sd = table.astype(np.float64).mean(0), table.astype(np.float64).std(0)
  np.testing.assert_allclose(new.mean(0), mean, atol=0.05 * sd.max())   # 20,000 draws: sd/141 per dim
  np.testing.assert_allclose(new.std(0), sd, rtol=0.03)
  assert len(np.unique(new, axis=0)) == 20_000                            # every new id its own row
  np.testing.assert_array_equal(hooks.grow_rows(table, 20_400, seed=7), out)   # reproducible
  assert not np.array_equal(hooks.grow_rows(table, 20_400, seed=8)[400:], out[400:])
  with pytest.raises(ValueError, match="more than"):
    hooks.grow_rows(table, 399, seed=7)


def test_concat_rows_pads_with_the_mean_row():
  a, b = _rand(5, 3), _rand(2, 3)
  out = hooks.concat_rows([a, b], 10)
  np.testing.assert_array_equal(out[:5], a)
  np.testing.assert_array_equal(out[5:7], b)
  np.testing.assert_allclose(out[7:], np.broadcast_to(np.concatenate([a, b]).mean(0), (3, 3)), rtol=1e-6)
  with pytest.raises(ValueError, match="more than"):
    hooks.concat_rows([a, b], 6)
