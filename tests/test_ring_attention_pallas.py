"""The Pallas ring hops (`lwm_plugin.kernels.ring.hop_pallas*`) on CPU: interpret-mode numerics of both
kernel families through the shared ring test base and at the hop level against the dense reference,
the platform dispatch of "pallas"/"auto", and the Triton lowering for an (abstract) H100.

The Mosaic TPU compile is in `test_ring_attention_tpu_aot.py`. Interpret mode compiles slowly (about
9 s per ring case and size on 2 cores), so the ring base runs every case for "pallas" (the Mosaic
kernels interpreted) at fewer ring sizes, and a subset for "pallas_gpu" (the Triton kernels).
"""

from __future__ import annotations

import collections
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lwm_plugin.kernels.ring import hop_pallas, hop_pallas_gpu, hop_pallas_tpu, reference, tiles
from lwm_plugin.kernels.ring.common import BlockSizes
from ring_attention_base import RingAttentionTestBase

HOPS = {"tpu": hop_pallas_tpu, "gpu": hop_pallas_gpu}


class TestRingAttentionPallas(RingAttentionTestBase):
  """Every case and part of the base; ring sizes trimmed (1 and 8 for the growth check, 3 for an odd ring)."""

  IMPL = "pallas"
  RING_SIZES = {"gqa_causal_packed": (1, 3, 8), "gqa_causal_packed_bf16": (1, 8), "mha_noncausal_packed": (4,),
                "zigzag_gqa_causal_packed": (4,), "striped_gqa_causal_packed": (8,),
                "striped_mha_causal_packed_bf16": (4,), "defaults_one_segment": (4,),
                "odd_blocks_gqa_causal_packed": (4,)}


class TestRingAttentionPallasGPU(RingAttentionTestBase):
  """The Triton kernels interpreted: the cases that exercise GQA, balanced layouts, odd tiles and bf16."""

  IMPL = "pallas_gpu"
  RING_SIZES = {"gqa_causal_packed_bf16": (1, 8), "zigzag_gqa_causal_packed": (4,),
                "odd_blocks_gqa_causal_packed": (4,)}
  PARTS = ("leakage", "skipping")
  SKIPPED_PARTS_REASON = ("the ring's HLO does not depend on the hop (checked for 'pallas' and on the compiled TPU "
                          "program); JAX 0.12's generic Pallas interpreter cannot run inside shard_map(check_vma=True) "
                          "(it slices varying blocks with unvarying grid indices), and the Triton kernels have no "
                          "other interpreter")


# ----------------------------------------------------------------------------------------------------
# One hop against the dense reference


def _documents(rng, batch: int, length: int, offset: int, docs: int = 3):
  """Segment ids 1..docs in random-length runs, then a padding run (segment 0); positions restart per run."""
  seg = np.zeros((batch, length), np.int32)
  pos = np.zeros((batch, length), np.int32)
  for b in range(batch):
    bounds = [0, *sorted(rng.choice(np.arange(1, length), docs, replace=False)), length]
    for run, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
      seg[b, start:end] = run + 1 if run < docs else 0
      pos[b, start:end] = offset + np.arange(end - start)
  return jnp.asarray(seg), jnp.asarray(pos)


def _hop_inputs(lq=40, lk=24, h=4, kh=2, d=8, dtype=jnp.float32, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  q = jax.random.normal(keys[0], (2, lq, h, d), jnp.float32).astype(dtype)
  k = jax.random.normal(keys[1], (2, lk, kh, d), jnp.float32).astype(dtype)
  v = jax.random.normal(keys[2], (2, lk, kh, d), jnp.float32).astype(dtype)
  do = jax.random.normal(keys[3], (2, lq, h, d), jnp.float32).astype(dtype)
  rng = np.random.default_rng(seed)
  q_seg, q_pos = _documents(rng, 2, lq, offset=5)  # queries later than keys: causal hops see part of the keys
  kv_seg, kv_pos = _documents(rng, 2, lk, offset=0)
  return q, k, v, do, q_seg, kv_seg, q_pos, kv_pos


def _relative(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.abs(got - want).max() / np.abs(want).max())


def _hop_vs_reference(family, causal, dtype, d, block_sizes, tol_out, tol_grad, **shape):
  q, k, v, do, q_seg, kv_seg, q_pos, kv_pos = _hop_inputs(d=d, dtype=dtype, **shape)
  meta = (q_seg, kv_seg, q_pos, kv_pos)
  kw = dict(scale=0.4, causal=causal, block_sizes=block_sizes)
  hop = HOPS[family]
  o, lse = jax.jit(lambda *a: hop.hop_fwd(*a, **kw, interpret=True))(q, k, v, *meta)
  ref = lambda q, k, v: reference.hop_reference(q, k, v, *meta, scale=0.4, causal=causal)
  (ro, rlse), vjp = jax.vjp(ref, q, k, v)
  finite = np.isfinite(np.asarray(rlse))
  assert (np.isfinite(np.asarray(lse)) == finite).all()  # -inf exactly where the reference sees nothing
  assert not finite.all()  # the inputs do have rows that see nothing
  np.testing.assert_array_equal(np.asarray(o)[~finite.transpose(0, 2, 1)], 0.0)
  assert _relative(o, ro) <= tol_out and _relative(np.where(finite, lse, 0), np.where(finite, rlse, 0)) <= tol_out
  # Backward as the last hop of a ring: final lse and delta = rowsum(do * o); dq accumulates onto dq_in.
  rdq, rdk, rdv = vjp((do.astype(jnp.float32), jnp.zeros_like(rlse)))
  delta = jnp.einsum("blhd,blhd->bhl", do.astype(jnp.float32), ro)
  dq_in = jnp.full(q.shape, 0.5, jnp.float32)
  dq, dk, dv = jax.jit(lambda *a: hop.hop_bwd(*a, **kw, interpret=True))(q, k, v, do, rlse, delta, dq_in, *meta)
  assert dq.dtype == dk.dtype == dv.dtype == jnp.float32
  for got, want in ((dq - 0.5, rdq), (dk, rdk), (dv, rdv)):
    assert _relative(got, want) <= tol_grad


@pytest.mark.parametrize("family", ["tpu", "gpu"])
@pytest.mark.parametrize("causal", [True, False])
def test_hop_matches_the_dense_reference_fp32_gqa_packed(family, causal):
  # Tiles that divide neither length (padding path); backward tiles differ from forward ones.
  _hop_vs_reference(family, causal, jnp.float32, 8, BlockSizes(16, 8, 8, 16), 1e-5, 1e-4)


@pytest.mark.parametrize("family, d", [("tpu", 128), ("tpu", 64), ("gpu", 64)])
def test_hop_head_dims_bf16(family, d):
  # d = 128 runs the TPU kernels on the lane-folded [B, L, H*D] layout, d = 64 on the head-major one.
  _hop_vs_reference(family, True, jnp.bfloat16, d, BlockSizes(16, 16), 2e-2, 2e-2, lq=32, lk=32, h=2, kh=1)


def test_tile_plan_ranges_and_skips():
  """Causal, two documents: the table skips exactly the tiles that hold no visible pair."""
  seg = jnp.asarray([[1] * 8 + [2] * 8])
  pos = jnp.asarray([list(range(8)) * 2])
  plan = tiles.plan(tiles.Tiles(4, 4, 16, 16), seg, seg, pos, pos, causal=True)
  vis = np.asarray(tiles.tile_visible(tuple(plan.q_sum[..., f][:, :, None] for f in range(4)),
                                      tuple(plan.kv_sum[..., f][:, None, :] for f in range(4)), True))[0]
  np.testing.assert_array_equal(vis, [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]])
  np.testing.assert_array_equal(plan.q_range[0], [[0, 0], [0, 1], [2, 2], [2, 3]])
  np.testing.assert_array_equal(plan.kv_range[0], [[0, 1], [1, 1], [2, 3], [3, 3]])
  padded = tiles.plan(tiles.Tiles(4, 4, 16, 16), seg[:, :10], seg[:, :10], pos[:, :10], pos[:, :10], causal=True)
  assert padded.q_seg.shape == (1, 16) and int(padded.q_seg[0, 10:].max()) == 0  # padding is segment 0
  np.testing.assert_array_equal(padded.q_range[0, 3], [0, 0])  # an all-padding tile sees nothing


@pytest.mark.parametrize("impl", ["pallas", "pallas_gpu", "xla"])
def test_hop_attention_gradients_match_the_dense_reference(impl):
  q, k, v, do, q_seg, kv_seg, q_pos, kv_pos = _hop_inputs(lq=24, lk=24)
  meta = dict(q_segment_ids=q_seg, kv_segment_ids=kv_seg, q_positions=q_pos, kv_positions=kv_pos)
  loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v) * do)
  ours = lambda q, k, v: hop_pallas.hop_attention(q, k, v, **meta, block_sizes=BlockSizes(8, 8), impl=impl)
  ref = lambda q, k, v: reference.hop_reference(q, k, v, q_seg, kv_seg, q_pos, kv_pos, scale=8**-0.5, causal=True)[0]
  got = jax.jit(jax.grad(loss(ours), argnums=(0, 1, 2)))(q, k, v)
  want = jax.grad(loss(ref), argnums=(0, 1, 2))(q, k, v)
  for g, w in zip(got, want):
    assert _relative(g, w) <= 1e-4


def test_hop_shape_errors_are_eager_and_precise():
  q, k, v, _, q_seg, kv_seg, q_pos, kv_pos = _hop_inputs()
  for hop in HOPS.values():
    with pytest.raises(ValueError, match=r"q_seg must have shape \(2, 40\): x.shape=\(2, 24\)"):
      hop.hop_fwd(q, k, v, kv_seg, kv_seg, q_pos, kv_pos, scale=1.0, causal=True, block_sizes=BlockSizes())
    with pytest.raises(ValueError, match="multiple of kv heads"):
      hop.hop_fwd(q[:, :, :3], k, v, q_seg, kv_seg, q_pos, kv_pos, scale=1.0, causal=True, block_sizes=BlockSizes())


def test_block_sizes_resolve_to_the_implementation_defaults():
  assert BlockSizes().resolve((512, 512), (256, 128)) == BlockSizes(512, 512, 256, 128)
  assert BlockSizes(128).resolve((512, 512), (256, 128)) == BlockSizes(128, 512, 128, 128)
  assert hop_pallas_gpu.default_blocks(128) == ((128, 64), (64, 64))
  with pytest.raises(ValueError, match="call resolve"):
    _ = BlockSizes().fwd


# ----------------------------------------------------------------------------------------------------
# Platform dispatch: decided at lowering, never at import or trace


def _lowered(impl: str, platform: str) -> str:
  """StableHLO of the forward of one hop (128 tokens, 4/2 heads, d = 64, bf16) lowered for `platform`.

  For CUDA, which this host lacks, the Triton lowering asks an abstract device what it targets (an
  H100). TPU lowering loads libtpu, so it runs in the AOT test's own process (test_ring_attention_tpu_aot).
  """
  from jax._src import mesh as mesh_lib  # pylint: disable=import-outside-toplevel  (AbstractDevice is not public)

  q, k, v, *_ = _hop_inputs(lq=128, lk=128, h=4, kh=2, d=64, dtype=jnp.bfloat16)
  f = lambda q, k, v: hop_pallas.hop_attention(q, k, v, impl=impl)
  if platform == "cpu":
    return jax.jit(f).trace(q, k, v).lower(lowering_platforms=(platform,)).as_text()
  device = mesh_lib.AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132, platform="gpu")
  with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)), \
      warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # JAX 0.12 deprecates the Pallas Triton backend
    return jax.jit(f).trace(q, k, v).lower(lowering_platforms=(platform,)).as_text()


def _ops(text: str) -> collections.Counter:
  return collections.Counter(re.findall(r"(?:stablehlo|chlo)\.\w+", text))


def test_auto_is_xla_on_cpu_and_triton_on_gpu():
  auto, xla = _ops(_lowered("auto", "cpu")), _ops(_lowered("xla", "cpu"))
  assert not xla - auto and set(auto - xla) <= {"stablehlo.case", "stablehlo.constant", "stablehlo.return"}
  assert _ops(_lowered("pallas", "cpu")) - auto  # the interpreted kernels would show
  assert _lowered("auto", "cuda").count("__gpu$xla.gpu.triton") == 1  # the forward kernel


def test_pallas_interprets_on_cpu():
  cpu = _lowered("pallas", "cpu")
  assert "custom_call" not in cpu and "while" in cpu  # the interpreter's grid loop


def test_kernels_for_names_what_the_compile_target_gets():
  # An ahead-of-time compile for a TPU topology from this CPU host gets the Mosaic kernels.
  kernels_for = hop_pallas.kernels_for
  assert [kernels_for("auto", p) for p in ("tpu", "cuda", "gpu", "cpu")] == ["mosaic", "triton", "triton", "xla"]
  assert [kernels_for("pallas", p) for p in ("tpu", "rocm", "cpu")] == ["mosaic", "triton", "mosaic (interpreted)"]
  assert kernels_for("xla", "tpu") == "xla" and kernels_for("pallas_gpu", "cpu") == "triton (interpreted)"
  with pytest.raises(ValueError, match=r"'pallas_tpu' has no kernels for platform 'gpu'"):
    kernels_for("pallas_tpu", "gpu")
  with pytest.raises(ValueError, match="expected one of"):
    kernels_for("mosaic", "tpu")


def test_kernel_families_refuse_the_other_accelerator(monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  with pytest.raises(NotImplementedError, match=r"pallas_gpu has kernels for \['cpu', 'cuda', 'rocm'\], not .*'tpu'"):
    hop_pallas.resolve_impl("pallas_gpu")
  assert hop_pallas.resolve_impl("pallas_tpu").name == "pallas_tpu"
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  with pytest.raises(NotImplementedError, match="pallas_tpu has kernels for"):
    hop_pallas.resolve_impl("pallas_tpu")
  with pytest.raises(ValueError, match=r"BlockSizes.block_q=100: Triton tiles must be powers of two"):
    q, k, v, _, *meta = _hop_inputs(d=16)
    hop_pallas_gpu.hop_fwd(q, k, v, *meta, scale=1.0, causal=True, block_sizes=BlockSizes(100))
