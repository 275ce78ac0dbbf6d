"""`benchmarks/ring_attention_gpu.py`: its smoke run on CPU reports every row, ratio and target the GPU run
will (cuDNN rows say why they are missing), its FLOP counts and ratios are consistent, and without
--smoke it refuses a CPU backend.

The smoke run interprets the Triton kernels (about 30 s of CPU on 2 cores); its figures are not
performance, so nothing here is timed.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

from conftest import REPO, subprocess_env

SCRIPT = REPO / "benchmarks" / "ring_attention_gpu.py"
PARTS = ("fwd", "bwd", "fwd+bwd")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  out = tmp_path_factory.mktemp("gpu_bench") / "smoke.json"
  proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--json", str(out)], env=subprocess_env(), cwd=REPO,
                        capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
  data = json.loads(out.read_text())
  return data, proc.stdout


@pytest.fixture(scope="module")
def bench():
  """The script as a module (its directory on sys.path while it imports its `bench_lib`)."""
  sys.path.insert(0, str(SCRIPT.parent))
  try:
    return importlib.import_module("ring_attention_gpu")
  finally:
    sys.path.remove(str(SCRIPT.parent))


def _rows(data, section):
  return [row for row in data["rows"] if row["section"] == section]


@pytest.mark.slow
def test_kernel_rows_count_flops_and_ratios(smoke):
  data, stdout = smoke
  setup = data["setup"]
  h, d = setup["heads"], setup["head_dim"]
  rows = {(r["length"], r["mask"], r["impl"]): r for r in _rows(data, "kernel")}
  assert set(rows) == {(length, mask, impl) for length in setup["lengths"] for mask in ("causal", "unmasked")
                       for impl in ("cudnn", "pallas", "xla hop")}
  for (length, mask, impl), row in rows.items():
    pairs = length * (length + 1) // 2 if mask == "causal" else length * length  # B = 1
    assert row["fwd_flops"] == 4 * h * d * pairs
    if impl == "cudnn":  # reported, not dropped
      assert row["available"] is False and row["note"].startswith("unavailable on cpu")
      assert f"L={length:6d} {mask:>8}    cudnn: unavailable on cpu" in stdout
      continue
    for part, factor in zip(PARTS, (1.0, 2.5, 3.5)):
      assert row[f"{part}_s"] > 0
      assert row[f"{part}_tflops"] == pytest.approx(factor * row["fwd_flops"] / row[f"{part}_s"] / 1e12)
      assert row["vs_cudnn"][part] is None
    if impl == "pallas":
      peer = rows[(length, mask, "xla hop")]
      for part in PARTS:
        assert row["vs_xla_hop"][part] == pytest.approx(peer[f"{part}_s"] / row[f"{part}_s"])
      assert row["target"] == "n/a (unavailable on cpu: cuDNN flash attention needs a CUDA GPU)"
    else:  # checked against the first implementation that ran
      assert row["checked_against"] == "pallas" and row["max_rel_error"] <= 2e-2


@pytest.mark.slow
def test_ring_rows_give_efficiency_and_targets(smoke):
  data, _ = smoke
  setup = data["setup"]
  rows = _rows(data, "ring")
  assert [(r["mask"], r["chunk_length"], r["ring_size"]) for r in rows] == [
      (mask, length, n)
      for mask in setup["ring_masks"] for length in setup["ring_lengths"] for n in setup["ring_sizes"]]
  kernel = {(r["length"], r["mask"]): r for r in _rows(data, "kernel") if r["impl"] == "pallas"}
  for row in rows:
    assert row["layout"] == ("dual_chunk_swap" if row["mask"] == "causal" else "contiguous")
    assert row["efficiency_fwd_bwd"] == pytest.approx(row["full_fwd_bwd_s"] / row["ring_fwd_bwd_s"])
    assert row["max_rel_error"] <= 2e-2  # the emulated ring computes the full-length attention
    assert row["target"] == ("pass" if row["efficiency_fwd_bwd"] >= 0.92 else "miss")
    full_length = row["ring_size"] * row["chunk_length"]
    if (full_length, row["mask"]) in kernel:  # the full-length call is section 1's measurement
      assert row["full_fwd_bwd_s"] == kernel[(full_length, row["mask"])]["fwd+bwd_s"]


@pytest.mark.slow
def test_packing_rows_compare_with_unpacked(smoke):
  data, stdout = smoke
  setup = data["setup"]
  rows = _rows(data, "packing")
  assert [(r["length"], r["doc_mean"]) for r in rows] == [(l, m) for l in setup["lengths"] for m in setup["doc_means"]]
  kernel = {r["length"]: r for r in _rows(data, "kernel") if (r["impl"], r["mask"]) == ("pallas", "causal")}
  for row in rows:
    assert row["documents"] >= 2 and 0 < row["visible_fraction"] < 1
    assert row["ideal_speedup"] == pytest.approx(1 / row["visible_fraction"])
    assert row["unpacked_fwd_bwd_s"] == kernel[row["length"]]["fwd+bwd_s"]
    assert row["speedup_vs_unpacked"] == pytest.approx(row["unpacked_fwd_bwd_s"] / row["fwd_bwd_s"])
    assert row["cudnn_unpacked_over_packed"] is None and row["max_rel_error"] <= 2e-2
  assert stdout.count("| unavailable on cpu: cuDNN flash attention needs a CUDA GPU |") == len(rows)
  means = [r["length"] / r["documents"] for r in rows]
  assert means[0] < means[1]  # longer documents on average for the larger mean


@pytest.mark.slow
def test_segment_rows_and_report_sections(smoke):
  data, stdout = smoke
  rows = _rows(data, "segments")
  assert [r["length"] for r in rows] == data["setup"]["lengths"]
  for row in rows:
    assert row["cost"] == pytest.approx(row["ones_fwd_bwd_s"] / row["none_fwd_bwd_s"] - 1)
    assert row["target"] == ("pass" if row["cost"] <= 0.05 else "miss")
  for header in ("SMOKE MODE on cpu", "== 1. hop kernels vs cuDNN", "== 2. ring efficiency", "== 3. packed documents",
                 "== 4. all-one segment ids"):
    assert header in stdout
  assert data["failures"] == [] and "FAILED" not in stdout


def test_visible_pairs_documents_and_verdicts(bench):
  assert bench.visible_pairs(np.array([[1, 1, 1, 2, 2, 0]]), causal=True) == 6 + 3
  assert bench.visible_pairs(np.array([[1, 1, 1, 2, 2, 0], [3] * 6]), causal=False) == 9 + 4 + 36
  seg, pos = (np.asarray(x) for x in bench.documents(2, 4096, 256))
  for row_seg, row_pos in zip(seg, pos):
    starts = np.flatnonzero(np.diff(row_seg)) + 1  # ids increase by one per document, positions restart at 0
    assert row_seg[0] == 1 and (np.diff(row_seg) >= 0).all() and (row_pos[starts] == 0).all()
    assert 256 / 2 < 4096 / row_seg.max() < 256 * 2
  assert bench.verdict(0.8, 0.75, stretch=0.9) == "pass, stretch 0.9x miss"
  assert bench.verdict(0.95, 0.75, stretch=0.9) == "pass, stretch 0.9x pass"
  assert bench.verdict(0.7, 0.75) == "miss"
  assert bench.verdict(0.06, 0.05, at_least=False) == "miss"
  assert bench.verdict(None, 0.75, na_reason="no peer") == "n/a (no peer)"
  assert bench.verdict(0.9, 0.75, applies=False, na_reason="L < 8192") == "n/a (L < 8192)"


def test_timed_programs_lower_to_triton_kernels_for_an_h100(bench):
  """What the GPU run compiles, lowered here for an abstract H100: the hop's fwd+bwd (forward, dq and dk/dv
  kernels), packed, and the emulated ring, whose vmapped devices must batch the kernels, not unroll them."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from jax._src import mesh as mesh_lib  # pylint: disable=import-outside-toplevel  (AbstractDevice is not public)

  setup = bench.Setup(heads=4, kv_heads=2, head_dim=64)
  device = mesh_lib.AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132, platform="gpu")

  def triton_kernels(fn, *shapes):
    args = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in shapes]
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)), \
        warnings.catch_warnings():
      warnings.simplefilter("ignore", DeprecationWarning)  # JAX 0.12 deprecates the Pallas Triton backend
      return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text().count("__gpu$xla.gpu.triton")

  s = 512
  q, kv, tok = ((1, s, 4, 64), jnp.bfloat16), ((1, s, 2, 64), jnp.bfloat16), ((1, s), jnp.int32)
  hop_fwd_bwd = bench._jitted(bench.attention_fn(bench.PALLAS, True, setup))[3]  # pylint: disable=protected-access
  assert triton_kernels(hop_fwd_bwd, q, q, kv, kv, tok, tok) == 3
  ring_fwd, ring_fwd_bwd = bench.emulated_ring_fns(4, True, setup)
  assert triton_kernels(ring_fwd, q, kv, kv, tok) == 4  # hop sites: first, two in the loop body, last
  assert triton_kernels(ring_fwd_bwd, q, q, kv, kv, tok) == 12


def test_full_mode_refuses_a_cpu_backend():
  proc = subprocess.run([sys.executable, str(SCRIPT), "--sections", "kernel"], env=subprocess_env(), cwd=REPO,
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 2
  assert "JAX backend is 'cpu'; run it on a CUDA GPU, or with --smoke" in proc.stderr
