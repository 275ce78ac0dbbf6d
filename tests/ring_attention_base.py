"""Shared test base for every ring-attention hop implementation (subclass it per `impl`).

    class TestRingAttentionXLA(RingAttentionTestBase):
      IMPL = "xla"

All cases run in ONE subprocess on 8 fake CPU devices (meshes of 1, 2, 3, 4 and 8 of them), against
the dense float32 reference. Inputs carry their position (v[..., 0] += position / S), so a
misordered ring step shows. Batches are packed the way loaders pack them: documents of odd
lengths crossing shard boundaries, a single-token document, tail padding (segment 0) that fills a
whole shard at ring size 8, positions restarting per document.

Tolerances (max |error| / max |reference|): fp32 1e-5 outputs, 1e-4 gradients; bf16 2e-2.
Ring-size growth: bf16 RMS error at N=8 <= 1.25 x the error at N=1.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_python

TOLERANCE = {"float32": {"out": 1e-5, "grad": 1e-4}, "bfloat16": {"out": 2e-2, "grad": 2e-2}}
GROWTH_LIMIT = 1.25
S, D, B = 96, 8, 2  # S divisible by every ring size tested (1, 2, 3, 4, 8) and by 2 x 8 (dual-chunk)
PAD = 12  # tail padding: at ring size 8 (L = 12) the last shard is all padding
DOCS = ([5, 14, 1, 30, 20, 14], [1, 45, 38])  # per row; + PAD = S

# name -> (dtype, H, K, causal, layout, packed, block sizes (q, kv, q_bwd, kv_bwd), ring sizes)
CASES = {
    "gqa_causal_packed": ("float32", 8, 2, True, "contiguous", True, (4, 8, None, None), (1, 2, 3, 4, 8)),
    "gqa_causal_packed_bf16": ("bfloat16", 8, 2, True, "contiguous", True, (4, 8, None, None), (1, 2, 4, 8)),
    "mha_noncausal_packed": ("float32", 4, 4, False, "contiguous", True, (8, 4, None, None), (4,)),
    "zigzag_gqa_causal_packed": ("float32", 8, 2, True, "dual_chunk_swap", True, (4, 4, None, None), (2, 4, 8)),
    "striped_gqa_causal_packed": ("float32", 8, 2, True, "striped", True, (4, 4, None, None), (4, 8)),
    "striped_mha_causal_packed_bf16": ("bfloat16", 4, 4, True, "striped", True, (4, 4, None, None), (4,)),
    "defaults_one_segment": ("float32", 4, 4, True, "contiguous", False, None, (4,)),
    "odd_blocks_gqa_causal_packed": ("float32", 8, 2, True, "dual_chunk_swap", True, (3, 5, 6, 7), (4,)),
}


def packed_batch():
  """(segment_ids, positions) [B, S] int32: documents DOCS then PAD tokens of segment 0."""
  seg = np.zeros((B, S), np.int32)
  pos = np.zeros((B, S), np.int32)
  for row, docs in enumerate(DOCS):
    start = 0
    for doc_id, length in enumerate(docs, start=1):
      seg[row, start:start + length] = doc_id
      pos[row, start:start + length] = np.arange(length)
      start += length
    assert start == S - PAD
  return seg, pos


def _inputs(dtype, h, kh, seed=0):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  q = jax.random.normal(keys[0], (B, S, h, D), jnp.float32)
  k = jax.random.normal(keys[1], (B, S, kh, D), jnp.float32)
  v = jax.random.normal(keys[2], (B, S, kh, D), jnp.float32)
  v = v.at[..., 0].add(jnp.arange(S, dtype=jnp.float32)[None, :, None] / S)  # coded by position
  do = jax.random.normal(keys[3], (B, S, h, D), jnp.float32)
  return tuple(x.astype(dtype) for x in (q, k, v, do))


def _ring_vjp(mesh, impl, causal, layout, seg, pos, block_sizes, q, k, v, do):
  """Output and (dq, dk, dv) of the ring in `layout`, returned in the original token order."""
  import jax  # pylint: disable=import-outside-toplevel

  from lwm_plugin.ring_attention import BlockSizes, layouts, sharded_ring_attention  # pylint: disable=import-outside-toplevel

  n = mesh.shape["sp"]
  to = lambda x: None if x is None else layouts.reorder(x, num_shards=n, layout=layout)
  back = lambda x: layouts.restore(x, num_shards=n, layout=layout)
  bs = None if block_sizes is None else BlockSizes(*block_sizes)

  @jax.jit
  def run(q, k, v, do, seg, pos):
    f = lambda q, k, v: sharded_ring_attention(q, k, v, mesh=mesh, axis_name="sp", segment_ids=seg, positions=pos,
                                               causal=causal, block_sizes=bs, impl=impl)
    out, vjp = jax.vjp(f, q, k, v)
    return (out, *vjp(do))

  results = run(to(q), to(k), to(v), to(do), to(seg), to(pos))
  return [back(x) for x in results]


def _errors(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return {"max": float(np.abs(got - want).max() / np.abs(want).max()),
          "rms": float(np.sqrt(np.mean((got - want)**2) / np.mean(want**2))), "finite": bool(np.isfinite(got).all())}


def run_cases(impl: str, names=None) -> dict:
  """Every case at every ring size: errors of out, dq, dk, dv and the padding-row checks."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from jax.sharding import Mesh  # pylint: disable=import-outside-toplevel

  from lwm_plugin.ring_attention import reference_attention  # pylint: disable=import-outside-toplevel

  report = {}
  seg_np, pos_np = packed_batch()
  for name in names or CASES:
    dtype, h, kh, causal, layout, packed, block_sizes, ring_sizes = CASES[name]
    q, k, v, do = _inputs(dtype, h, kh)
    seg, pos = (jnp.asarray(seg_np), jnp.asarray(pos_np)) if packed else (None, None)
    f32 = [x.astype(jnp.float32) for x in (q, k, v, do)]
    ref = lambda q, k, v: reference_attention(q, k, v, segment_ids=seg, positions=pos, causal=causal)
    ref_out, ref_vjp = jax.vjp(ref, *f32[:3])
    want = [ref_out, *ref_vjp(f32[3])]
    for n in ring_sizes:
      mesh = Mesh(np.array(jax.devices()[:n]), ("sp",))
      got = _ring_vjp(mesh, impl, causal, layout, seg, pos, block_sizes, q, k, v, do)
      entry = {"dtypes": [str(x.dtype) for x in got]}
      for label, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        entry[label] = _errors(g, w)
      if packed:  # padding rows see nothing: exactly 0 output, and no gradient flows to or from them
        pad = seg_np == 0
        entry["pad_exact_zero"] = bool(all(float(jnp.abs(x.astype(jnp.float32)[pad]).max()) == 0.0 for x in got))
      report[f"{name}@{n}"] = entry
  return report


def run_leakage(impl: str) -> dict:
  """Gradient of one query token's output w.r.t. every key/value token, ring size 4, two layouts."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from jax.sharding import Mesh  # pylint: disable=import-outside-toplevel

  seg_np, pos_np = packed_batch()
  seg, pos = jnp.asarray(seg_np), jnp.asarray(pos_np)
  q, k, v, do = _inputs("float32", 8, 2, seed=1)
  # Shards of 24 tokens. Row 0, token 45: document 4 (tokens 20..49) spans shards 0, 1 and 2.
  # Row 1, token 30: document 2 (tokens 1..45) spans shards 0 and 1.
  picks = ((0, 45), (1, 30))
  cot = jnp.zeros_like(do)
  for row, i in picks:
    cot = cot.at[row, i].set(do[row, i])
  mesh = Mesh(np.array(jax.devices()[:4]), ("sp",))
  report = {}
  for layout in ("contiguous", "dual_chunk_swap"):
    _, dq, dk, dv = _ring_vjp(mesh, impl, True, layout, seg, pos, (4, 4, None, None), q, k, v, cot)
    checks = []
    for row, i in picks:
      visible = (seg_np[row] == seg_np[row, i]) & (pos_np[row] <= pos_np[row, i])
      dk_row = np.abs(np.asarray(dk[row])).sum(axis=(1, 2))
      dv_row = np.abs(np.asarray(dv[row])).sum(axis=(1, 2))
      dq_row = np.abs(np.asarray(dq[row])).sum(axis=(1, 2))
      checks.append({
          "hidden_dk_max": float(dk_row[~visible].max()), "hidden_dv_max": float(dv_row[~visible].max()),
          "visible_dv_min": float(dv_row[visible].min()),
          "other_queries_dq_max": float(np.delete(dq_row, i).max()), "own_dq": float(dq_row[i])})
    report[layout] = checks
  return report


def run_skipping(impl: str) -> dict:
  """NaN keys/values in the last 8 tokens: rows that cannot see them stay exact only if skipped."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from jax.sharding import Mesh  # pylint: disable=import-outside-toplevel

  from lwm_plugin.ring_attention import reference_attention  # pylint: disable=import-outside-toplevel

  q, k, v, do = _inputs("float32", 4, 2, seed=2)
  cut = S - 8
  k_nan, v_nan = k.at[:, cut:].set(jnp.nan), v.at[:, cut:].set(jnp.nan)
  do = do.at[:, cut:].set(0.0)
  mesh = Mesh(np.array(jax.devices()[:4]), ("sp",))
  out, dq, _, _ = _ring_vjp(mesh, impl, True, "contiguous", None, None, (8, 8, None, None), q, k_nan, v_nan, do)
  ref = lambda q: reference_attention(q, k, v, causal=True)
  ref_out, ref_vjp = jax.vjp(ref, q)
  (ref_dq,) = ref_vjp(do)
  return {"out": _errors(out[:, :cut], ref_out[:, :cut]), "dq": _errors(dq[:, :cut], ref_dq[:, :cut])}


def run_hlo(impl: str) -> dict:
  """Collectives and copies in the compiled ring loops (ring size 8) and the K/V permute shape."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from jax.sharding import Mesh  # pylint: disable=import-outside-toplevel

  from lwm_plugin.kernels.ring import hlo  # pylint: disable=import-outside-toplevel
  from lwm_plugin.ring_attention import BlockSizes, sharded_ring_attention  # pylint: disable=import-outside-toplevel

  q, k, v, do = _inputs("float32", 8, 2)
  mesh = Mesh(np.array(jax.devices()[:8]), ("sp",))

  def fwd_bwd(q, k, v, do):
    f = lambda q, k, v: sharded_ring_attention(q, k, v, mesh=mesh, axis_name="sp", block_sizes=BlockSizes(4, 4),
                                               impl=impl)
    out, vjp = jax.vjp(f, q, k, v)
    return (out, *vjp(do))

  text = jax.jit(fwd_bwd).lower(q, k, v, do).compile().as_text()
  kv_shape = f"[2,{B},{S // 8},{k.shape[2]},{D}]"
  stacked = [line for line in text.splitlines() if " collective-permute(" in line and kv_shape in line.split("=")[1]]
  return {"loops": hlo.ring_loops(text), "stacked_kv_permutes": len(stacked), "total": hlo.total_op_count(text),
          "dtype_ok": all(x.dtype == jnp.float32 for x in jax.jit(fwd_bwd)(q, k, v, do))}


def run_check_vma(impl: str) -> dict:
  """`ring_attention` inside a user's shard_map with check_vma=True (JAX's default)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from jax.sharding import Mesh, PartitionSpec as P  # pylint: disable=import-outside-toplevel

  from lwm_plugin.ring_attention import BlockSizes, reference_attention, ring_attention  # pylint: disable=import-outside-toplevel

  seg_np, pos_np = packed_batch()
  q, k, v, do = _inputs("float32", 8, 2)
  mesh = Mesh(np.array(jax.devices()[:2]), ("sp",))
  kernel = lambda q, k, v, s, p: ring_attention(q, k, v, axis_name="sp", segment_ids=s, positions=p,
                                                block_sizes=BlockSizes(8, 8), impl=impl)
  seq, tok = P(None, "sp"), P(None, "sp")
  f = jax.shard_map(kernel, mesh=mesh, in_specs=(seq, seq, seq, tok, tok), out_specs=seq)
  args = (jnp.asarray(seg_np), jnp.asarray(pos_np))
  loss = lambda fn: lambda q, k, v: jnp.sum(fn(q, k, v) * do)
  got = jax.jit(jax.value_and_grad(loss(lambda q, k, v: f(q, k, v, *args)), argnums=(0, 1, 2)))(q, k, v)
  ref = lambda q, k, v: reference_attention(q, k, v, segment_ids=args[0], positions=args[1])
  want = jax.value_and_grad(loss(ref), argnums=(0, 1, 2))(q, k, v)
  return {"out": _errors(got[0], want[0]), **{n: _errors(g, w) for n, g, w in zip(("dq", "dk", "dv"), got[1], want[1])}}


def run_all(impl: str, names=None) -> dict:
  import jax  # pylint: disable=import-outside-toplevel

  jax.config.update("jax_numpy_rank_promotion", "raise")  # as in the test process
  return {"cases": run_cases(impl, names), "leakage": run_leakage(impl), "skipping": run_skipping(impl),
          "hlo": run_hlo(impl), "check_vma": run_check_vma(impl)}


@pytest.mark.slow
class RingAttentionTestBase:
  """Subclass with IMPL set; optionally ENV (extra environment) and CASE_NAMES (a subset of CASES)."""

  IMPL: str = ""
  ENV: dict[str, str] = {}
  CASE_NAMES: tuple[str, ...] | None = None

  @pytest.fixture(scope="class")
  @classmethod
  def results(cls):
    code = ("import json, sys; sys.path.insert(0, 'tests'); import ring_attention_base as base; "
            f"print('RESULTS=' + json.dumps(base.run_all({cls.IMPL!r}, {cls.CASE_NAMES!r})))")
    proc = run_python(code, devices=8, **cls.ENV)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULTS=")][-1]
    return json.loads(line[len("RESULTS="):])

  def _case_entries(self, results):
    for key, entry in results["cases"].items():
      name, n = key.split("@")
      yield name, int(n), CASES[name][0], entry

  def test_every_case_ran(self, results):
    want = {f"{name}@{n}" for name in (self.CASE_NAMES or CASES) for n in CASES[name][-1]}
    assert set(results["cases"]) == want

  def test_outputs_and_gradients_match_the_dense_reference(self, results):
    bad = []
    for name, n, dtype, entry in self._case_entries(results):
      tol = TOLERANCE[dtype]
      for label in ("out", "dq", "dk", "dv"):
        err = entry[label]
        limit = tol["out"] if label == "out" else tol["grad"]
        if not err["finite"] or err["max"] > limit:
          bad.append(f"{name}@{n} {label}: {err} > {limit}")
    assert not bad, "\n".join(bad)

  def test_results_keep_the_input_dtype(self, results):
    for name, n, dtype, entry in self._case_entries(results):
      assert entry["dtypes"] == [dtype] * 4, (name, n)

  def test_padding_rows_are_exactly_zero(self, results):
    for name, n, _, entry in self._case_entries(results):
      if "pad_exact_zero" in entry:
        assert entry["pad_exact_zero"], (name, n)

  def test_error_does_not_grow_with_ring_size(self, results):
    cases = results["cases"]
    for label in ("out", "dq", "dk", "dv"):
      one, eight = cases["gqa_causal_packed_bf16@1"][label]["rms"], cases["gqa_causal_packed_bf16@8"][label]["rms"]
      assert eight <= GROWTH_LIMIT * one, (label, one, eight)

  def test_no_gradient_leaks_across_segments_or_into_the_future(self, results):
    for layout, checks in results["leakage"].items():
      for check in checks:
        assert check["hidden_dk_max"] == 0.0 and check["hidden_dv_max"] == 0.0, (layout, check)
        assert check["other_queries_dq_max"] == 0.0, (layout, check)
        assert check["visible_dv_min"] > 0.0 and check["own_dq"] > 0.0, (layout, check)  # the test can fail

  def test_masked_blocks_and_hops_are_skipped(self, results):
    for label, err in results["skipping"].items():
      assert err["finite"] and err["max"] <= TOLERANCE["float32"]["grad"], (label, err)

  def test_loop_holds_one_kv_permute_per_hop_and_no_copy(self, results):
    hlo = results["hlo"]
    # Two hops per loop iteration: forward K/V + int32 metadata; backward also the dK/dV accumulator.
    assert hlo["loops"] == [{"collective-permute": 4, "copy": 0}, {"collective-permute": 6, "copy": 0}], hlo
    assert hlo["stacked_kv_permutes"] >= 2, hlo  # K and V travel as one [2, B, L, K, D] array
    assert hlo["dtype_ok"]

  def test_inside_a_shard_map_with_check_vma(self, results):
    for label, err in results["check_vma"].items():
      assert err["finite"] and err["max"] <= TOLERANCE["float32"]["grad"], (label, err)
