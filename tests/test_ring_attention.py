"""Ring attention (`lwm_plugin.ring_attention`, `lwm_plugin.kernels.ring`): the XLA hop through the
shared multi-device base, plus in-process checks of the reference, layouts, API errors and HLO helpers."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, run_python
from lwm_plugin.kernels.ring import hlo, hop_pallas
from lwm_plugin.ring_attention import BlockSizes, layouts, reference_attention, ring_attention
from ring_attention_base import RingAttentionTestBase, packed_batch


class TestRingAttentionXLA(RingAttentionTestBase):
  IMPL = "xla"


def _numpy_attention(q, k, v, seg, pos, causal, scale):
  """Loops over (batch, head, query): the plainest possible statement of the semantics."""
  b, s, h, _ = q.shape
  group = h // k.shape[2]
  out = np.zeros(q.shape, np.float64)
  for bi in range(b):
    for hi in range(h):
      for i in range(s):
        keys = [j for j in range(s) if seg[bi, j] == seg[bi, i] != 0 and (not causal or pos[bi, j] <= pos[bi, i])]
        if not keys:
          continue
        logits = np.array([q[bi, i, hi] @ k[bi, j, hi // group] * scale for j in keys])
        weights = np.exp(logits - logits.max())
        weights /= weights.sum()
        out[bi, i, hi] = sum(w * v[bi, j, hi // group] for w, j in zip(weights, keys))
  return out


@pytest.mark.parametrize("causal", [True, False])
def test_reference_matches_a_loop_over_tokens(causal):
  seg, pos = packed_batch()
  seg, pos = seg[:, ::4], pos[:, ::4]  # 24 tokens: documents, restarts and padding kept
  rng = np.random.default_rng(0)
  q = rng.normal(size=(2, 24, 4, 8)).astype(np.float32)
  k, v = (rng.normal(size=(2, 24, 2, 8)).astype(np.float32) for _ in range(2))
  got = reference_attention(q, k, v, segment_ids=seg, positions=pos, causal=causal, scale=0.3)
  np.testing.assert_allclose(np.asarray(got), _numpy_attention(q, k, v, seg, pos, causal, 0.3), atol=2e-6)


def test_layouts_match_maxtext_and_transformer_engine_orders():
  from maxtext.utils import max_utils  # pylint: disable=import-outside-toplevel

  tokens = jnp.arange(2 * 32).reshape(2, 32)
  for n in (2, 4):
    np.testing.assert_array_equal(layouts.reorder(tokens, num_shards=n, layout="dual_chunk_swap"),
                                  max_utils.reorder_sequence(tokens, cp_size=n))
  # Transformer Engine's documented striped example: 4 devices, 16 tokens.
  assert layouts.permutation(16, 4, "striped").tolist() == [0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15]
  assert layouts.permutation(16, 2, "striped", stripe=2).tolist() == [0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11,
                                                                       14, 15]


@pytest.mark.parametrize("layout", layouts.LAYOUTS)
def test_restore_undoes_reorder_and_batches_move_together(layout):
  x = np.arange(3 * 48 * 2).reshape(3, 48, 2)
  moved = layouts.reorder(x, num_shards=4, layout=layout)
  np.testing.assert_array_equal(layouts.restore(moved, num_shards=4, layout=layout), x)
  batch = {"inputs": x[..., 0], "targets_weights": x[..., 0].astype(np.float32), "meta": np.ones(3)}
  out = layouts.reorder_batch(batch, ["inputs", "targets_weights"], num_shards=4, layout=layout)
  np.testing.assert_array_equal(out["targets_weights"], out["inputs"])
  assert out["meta"] is batch["meta"]
  with pytest.raises(KeyError, match="not in the batch"):
    layouts.reorder_batch(batch, ["positions"], num_shards=4, layout=layout)


def test_layout_errors_name_the_problem():
  with pytest.raises(ValueError, match="not a multiple of 2"):
    layouts.permutation(12, 4, "dual_chunk_swap")
  with pytest.raises(ValueError, match="expected one of"):
    layouts.permutation(16, 4, "zigzag")


def _qkv(h=4, kh=2, length=8, dtype=jnp.float32):
  return jnp.ones((1, length, h, 8), dtype), jnp.ones((1, length, kh, 8), dtype), jnp.ones((1, length, kh, 8), dtype)


def test_argument_errors_are_eager_and_precise():
  q, k, v = _qkv()
  with pytest.raises(ValueError, match="multiple of kv heads"):
    ring_attention(*_qkv(h=3, kh=2), axis_name="sp")
  with pytest.raises(ValueError, match=r"q.shape=\(1, 8, 4, 8\)"):
    ring_attention(q, k[:, :4], v[:, :4], axis_name="sp")
  with pytest.raises(ValueError, match="share a dtype"):
    ring_attention(q, k.astype(jnp.bfloat16), v, axis_name="sp")
  with pytest.raises(ValueError, match="segment_ids must be integer"):
    ring_attention(q, k, v, axis_name="sp", segment_ids=jnp.ones((1, 8)))
  with pytest.raises(ValueError, match="scan_unroll"):
    ring_attention(q, k, v, axis_name="sp", scan_unroll=0)
  with pytest.raises(ValueError, match="positive int"):
    BlockSizes(block_q=0)


def test_impl_dispatch():
  q, k, v = _qkv()
  with pytest.raises(ValueError, match="expected one of"):
    ring_attention(q, k, v, axis_name="sp", impl="cuda")
  assert set(hop_pallas.HOP_IMPLS) == {"xla", "pallas", "pallas_tpu", "pallas_gpu"}
  assert hop_pallas.resolve_impl("auto").name == "auto"  # platform-dependent; see test_ring_attention_pallas.py


def test_single_device_ring_is_exact_without_a_mesh_axis_of_its_own():
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("sp",))
  q, k, v = (jax.random.normal(key, shape) for key, shape in zip(
      jax.random.split(jax.random.PRNGKey(0), 3), [(1, 16, 4, 8), (1, 16, 2, 8), (1, 16, 2, 8)]))
  from lwm_plugin.ring_attention import sharded_ring_attention  # pylint: disable=import-outside-toplevel

  got = sharded_ring_attention(q, k, v, mesh=mesh, axis_name="sp", block_sizes=BlockSizes(4, 8))
  np.testing.assert_allclose(got, reference_attention(q, k, v), atol=1e-6)


def test_float_token_arrays_are_cast_when_integer_valued_and_refused_otherwise():
  from lwm_plugin.ring_attention import as_token_ints  # pylint: disable=import-outside-toplevel

  ids = as_token_ints("segment_ids", jnp.zeros((2, 4)) + 1.0)
  assert ids.dtype == jnp.int32 and ids.tolist() == [[1] * 4] * 2
  assert as_token_ints("positions", jnp.arange(4, dtype=jnp.int16)).dtype == jnp.int32
  with pytest.raises(ValueError, match=r"positions must hold integer values .* found 2.5"):
    as_token_ints("positions", jnp.array([1.0, 2.5]))
  with pytest.raises(ValueError, match="segment_ids must be integer .* got dtype bool"):
    as_token_ints("segment_ids", jnp.ones(3, bool))
  jitted = jax.jit(lambda x: as_token_ints("segment_ids", x) + 1)
  assert jitted(jnp.array([1.0, 2.0])).tolist() == [2, 3]
  with pytest.raises(Exception, match=r"segment_ids must hold integer values .* found nan"):
    jitted(jnp.array([1.0, jnp.nan])).block_until_ready()


_EXPLICIT_MESH = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from lwm_plugin.ring_attention import reference_attention, sharded_ring_attention
from ring_attention_base import packed_batch

mesh = jax.make_mesh((2, 2), ("data", "sp"), axis_types=(AxisType.Explicit,) * 2)
seg, pos = packed_batch()
keys = jax.random.split(jax.random.PRNGKey(0), 3)
q = jax.random.normal(keys[0], (2, 96, 4, 8))
k, v = (jax.random.normal(key, (2, 96, 2, 8)) for key in keys[1:])
expected = reference_attention(q, k, v, segment_ids=seg, positions=pos)
put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))
# Inputs laid out unlike the ring's specs (sequence over "data", batch over "sp", float ids).
q, k, v = (put(x, P("sp", "data")) for x in (q, k, v))
seg, pos = put(seg.astype(np.float32), P(None, "data")), put(pos, P("sp", None))
with jax.set_mesh(mesh):
  for batch_axes in (None, "data"):
    got = jax.jit(lambda q, k, v, seg, pos: sharded_ring_attention(
        q, k, v, mesh=mesh, axis_name="sp", segment_ids=seg, positions=pos, batch_axes=batch_axes))(q, k, v, seg, pos)
    assert got.sharding.spec == P(batch_axes, "sp", None, None), got.sharding
    np.testing.assert_allclose(got, expected, atol=1e-5)
print("OK")
"""


def test_sharded_ring_reshards_any_input_layout_on_an_explicit_mesh():
  """Sequence sharded over "data", batch over "sp", float segment ids: all resharded to the ring's specs."""
  path = os.pathsep.join([str(REPO), str(REPO / "tests")])
  assert "OK" in run_python(_EXPLICIT_MESH, devices=4, PYTHONPATH=path).stdout


def test_sharded_ring_argument_errors_name_the_axes():
  from lwm_plugin.ring_attention import sharded_ring_attention  # pylint: disable=import-outside-toplevel

  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("sp", "data"))
  q, k, v = _qkv()
  with pytest.raises(ValueError, match=r"batch_axes \('model',\) .* must be mesh axes"):
    sharded_ring_attention(q, k, v, mesh=mesh, axis_name="sp", batch_axes="model")
  with pytest.raises(ValueError, match="other than the ring axis 'sp'"):
    sharded_ring_attention(q, k, v, mesh=mesh, axis_name="sp", head_axes=("sp",))


def test_hlo_helpers_find_loop_bodies():
  text = """HloModule m
%body (p: (s32[], f32[4])) -> (s32[], f32[4]) {
  %a = f32[4] collective-permute(%x), channel_id=1
  %b = f32[4] copy(%a)
  %c = f32[4] collective-permute-start(%b)
}
%cond (p: (s32[], f32[4])) -> pred[] {
}
ENTRY %main (x: f32[4]) -> f32[4] {
  %w = (s32[], f32[4]) while(%t), condition=%cond, body=%body
  %d = f32[4] collective-permute(%x)
}
"""
  assert hlo.ring_loops(text) == [{"collective-permute": 2, "copy": 1}]
  assert hlo.total_op_count(text) == 3


def test_gradient_through_a_scan_over_layers_keeps_no_stacked_block_masks():
  """MaxText scans the layers; segment ids and positions are the same in every layer. Differentiating
  the scan, JAX hoists loop-invariant work out of it; without the ring's barrier it split the hop loops
  and kept every block's mask and scores, stacked over all (query block, key block) pairs (655 GB per
  chip for LWM-Text-1M on v4-512)."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("sp",))
  seg = jnp.ones((1, 16), jnp.int32)
  pos = jnp.arange(16, dtype=jnp.int32)[None]
  spec = jax.sharding.PartitionSpec(None, "sp")
  attend = jax.shard_map(
      lambda q, s, p: ring_attention(q, q, q, axis_name="sp", segment_ids=s, positions=p, block_sizes=BlockSizes(4, 4)),
      mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)

  def loss(x_BxLxHxD, w_L):
    layer = lambda x, w: (x + attend(x * w, seg, pos), None)
    return jax.lax.scan(layer, x_BxLxHxD, w_L)[0].sum()

  jaxpr = str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(jnp.ones((1, 16, 2, 8)), jnp.ones((3,))))
  assert "[4,4,1," not in jaxpr   # [query blocks, key blocks, B, ...]
