"""Ring attention hop kernels on one GPU: TFLOP/s against cuDNN, emulated ring efficiency, packing, segment ids.

    .venv/bin/python benchmarks/ring_attention_gpu.py [--sections kernel,ring,packing,segments] [--json OUT.json]
    .venv/bin/python benchmarks/ring_attention_gpu.py --smoke     # CPU check: tiny shapes, Pallas interpreted

One H100/H200. B=1, 32 query / 8 kv heads, D=128, bfloat16, local lengths 8K..64K. Ours is one ring
hop as a differentiable op (`hop_attention`): "pallas" is the Triton hop (`impl="pallas_gpu"`), "xla
hop" the pure-JAX hop (`impl="xla"`). The peer, in the same run on the same inputs, is
`jax.nn.dot_product_attention(implementation="cudnn")` (cuDNN flash attention; GQA native).

Sections (each prints its rows, ratios and targets with pass/miss; `--json` writes them all):
1. kernel    fwd, bwd and fwd+bwd time and TFLOP/s, causal (a diagonal hop) and unmasked (an
             off-diagonal hop); ratio = cuDNN time / our time. Target: pallas fwd+bwd >= 0.75x
             cuDNN at L >= 8K (stretch 0.9x).
2. ring      ring efficiency emulated on one GPU: the real `ring_attention` over N chunks of L
             tokens, its N devices emulated by `jax.vmap` over a named axis (permutes become local
             copies, so communication is free and not measured), against one full-length hop
             call over N*L tokens; efficiency = full-length time / emulated-ring time (1.0: the
             ring loses nothing to chunking, merging and per-hop overheads). Causal uses the
             dual-chunk-swap layout (every hop visible, equal work per device), unmasked the
             contiguous one. Target: fwd+bwd efficiency >= 0.92 at >= 8K per chunk.
3. packing   causal, packed documents (lengths exponential with mean 2K and 8K, positions restart
             per document) against the same length unpacked: tile skipping should approach the
             visible-work fraction. cuDNN through `jax.nn.dot_product_attention` has no segment
             ids (a dense mask would be [L, L]); its unpacked causal time is printed for scale.
4. segments  all-one segment ids passed as arrays vs `segment_ids=None`. Target: cost <= 5%.

Every timed program's output and gradients are checked first: ours against cuDNN (the XLA hop
against the Pallas hop where cuDNN is unavailable), the ring against the full-length call, packed
hops against the XLA hop; a relative error above 2e-2 marks the row, is listed at the end, and the
script exits 1.

FLOPs count visible (query, key) pairs exactly: 4 * B * H * D per pair forward (two matmuls),
backward 2.5x forward (five matmuls, FlashAttention-2's convention; our separate dq and dk/dv
kernels recompute two more, which count as time, not FLOPs), fwd+bwd 3.5x. A causal hop
has L(L+1)/2 pairs (half of L^2), a packed one the sum over its documents. Times are the median
of --runs calls after compilation and --warmup calls, each waited for with `block_until_ready`.

--smoke runs every section on CPU at tiny shapes (L = 128, one causal ring of 4 x 64 tokens): the
Triton kernels run in Pallas interpret mode, cuDNN rows say it is unavailable, and targets are
evaluated at the tiny lengths only to exercise the report. Its figures say nothing about
performance; `tests/test_benchmark_ring_attention_gpu.py` runs it and checks every row and ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import bench_lib
from lwm_plugin.kernels.ring import layouts
from lwm_plugin.kernels.ring.common import BlockSizes
from lwm_plugin.kernels.ring.hop_pallas import hop_attention
from lwm_plugin.kernels.ring.ring import ring_attention

CUDNN, PALLAS, XLA_HOP = "cudnn", "pallas", "xla hop"
HOP_IMPL = {PALLAS: "pallas_gpu", XLA_HOP: "xla"}  # our names -> hop_attention(impl=...)
BWD_FLOPS, FWD_BWD_FLOPS = 2.5, 3.5  # x forward FLOPs
KERNEL_GOAL, KERNEL_STRETCH, RING_GOAL, SEGMENT_GOAL = 0.75, 0.9, 0.92, 0.05
TOLERANCE = 2e-2  # max |ours - peer| / max |peer| for bfloat16 outputs and gradients
SECTIONS = ("kernel", "ring", "packing", "segments")


@dataclasses.dataclass(frozen=True)
class Setup:
  lengths: tuple[int, ...] = (8192, 16384, 32768, 65536)
  ring_sizes: tuple[int, ...] = (2, 4, 8)
  ring_lengths: tuple[int, ...] = (8192, 16384)  # tokens per chunk
  ring_parts: tuple[str, ...] = ("fwd", "fwd+bwd")  # the ring's timed programs (the target is on fwd+bwd)
  ring_masks: tuple[str, ...] = ("causal", "unmasked")
  doc_means: tuple[int, ...] = (2048, 8192)
  heads: int = 32
  kv_heads: int = 8
  head_dim: int = 128
  batch: int = 1
  dtype: str = "bfloat16"
  blocks: tuple[int, ...] | None = None  # BlockSizes fields; None: the kernels' defaults
  warmup: int = 2
  runs: int = 7
  target_length: int = 8192  # targets apply from this local length (per chunk for the ring)
  smoke: bool = False

  @property
  def block_sizes(self) -> BlockSizes:
    return BlockSizes(*self.blocks) if self.blocks else BlockSizes()


# Interpret mode costs about 1 s of CPU per kernel call site to trace, lower and compile, and the ring's
# fwd+bwd has 12 of them from N = 3 on, so the smoke run keeps one ring: causal, N = 4, fwd+bwd only.
# N = 8 is the same program with a longer hop loop, N = 2 its first and last hop; unmasked the same
# program without the mask.
SMOKE = Setup(lengths=(128,), ring_sizes=(4,), ring_lengths=(64,), ring_parts=("fwd+bwd",), ring_masks=("causal",),
              doc_means=(16, 64), heads=4, kv_heads=2, head_dim=32, blocks=(32, 32), warmup=0, runs=1,
              target_length=64, smoke=True)
SMOKE_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"  # compile faster


# ----------------------------------------------------------------------------------------------------
# FLOPs, inputs, verdicts


def visible_pairs(seg_BxL, causal: bool) -> int:
  """(query, key) pairs the mask rule lets through: per document of c tokens c(c+1)/2 causal, c^2 not.

  Assumes distinct positions within a document (as packing gives); segment 0 is padding.
  """
  total = 0
  for row in np.asarray(seg_BxL):
    _, counts = np.unique(row[row != 0], return_counts=True)
    counts = counts.astype(np.int64)
    total += int((counts * (counts + 1) // 2).sum() if causal else (counts * counts).sum())
  return total


def fwd_flops(setup: Setup, pairs: int) -> int:
  return 4 * setup.heads * setup.head_dim * pairs


def documents(batch: int, length: int, mean: int, seed: int = 0):
  """Packed rows: segment ids 1, 2, ... in runs of exponential length (mean `mean`), positions restart per run."""
  rng = np.random.default_rng(seed)
  seg = np.zeros((batch, length), np.int32)
  pos = np.zeros((batch, length), np.int32)
  for b in range(batch):
    start, doc = 0, 1
    while start < length:
      n = min(max(1, int(round(rng.exponential(mean)))), length - start)
      seg[b, start:start + n], pos[b, start:start + n] = doc, np.arange(n)
      start, doc = start + n, doc + 1
  return jnp.asarray(seg), jnp.asarray(pos)


def verdict(value: float | None, goal: float, *, at_least: bool = True, applies: bool = True,
            na_reason: str = "", stretch: float | None = None) -> str:
  if value is None or not applies:
    return f"n/a ({na_reason})"
  ok = value >= goal if at_least else value <= goal
  text = "pass" if ok else "miss"
  if stretch is not None:
    text += f", stretch {stretch}x {'pass' if value >= stretch else 'miss'}"
  return text


def relative_error(got, want) -> float:
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  return float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-30))


def max_relative_error(got: tuple, want: tuple) -> float:
  """Max over (o, dq, dk, dv) of max |got - want| / max |want|."""
  return max(relative_error(g, w) for g, w in zip(got, want))


# ----------------------------------------------------------------------------------------------------
# Timed programs


def cudnn_version() -> str:
  from jax._src.lib import cuda_versions  # pylint: disable=import-outside-toplevel  (JAX's own cuDNN check uses it)

  return "no cuDNN" if cuda_versions is None else f"cuDNN {cuda_versions.cudnn_get_version()}"


def cudnn_unavailable() -> str | None:
  """Why the cuDNN peer cannot run in this process (None when it can)."""
  if jax.default_backend() != "gpu":
    return f"unavailable on {jax.default_backend()}: cuDNN flash attention needs a CUDA GPU"
  return None


@functools.cache
def attention_fn(impl: str, causal: bool, setup: Setup):
  """f(q, k, v, *meta) -> o; meta: () or (segment_ids,) or (segment_ids, positions), [B, L] each (ours only)."""
  if impl == CUDNN:
    return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="cudnn")

  def ours(q, k, v, *meta):
    seg, pos = (*meta, None, None)[:2]
    return hop_attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, q_positions=pos, kv_positions=pos,
                         causal=causal, block_sizes=setup.block_sizes, impl=HOP_IMPL[impl])

  return ours


@functools.cache
def emulated_ring_fns(n: int, causal: bool, setup: Setup):
  """(fwd(q, k, v, pos) -> o, fwd_bwd(do, q, k, v, pos) -> (o, dq, dk, dv)) on [B, N*L, ...] arrays: the real
  ring, its N devices a vmapped named axis. The backward runs inside the vmap (the ring's custom VJP
  needs its axis bound), so there is no separate backward program.
  """
  chunks = lambda x: jnp.moveaxis(x.reshape(x.shape[0], n, x.shape[1] // n, *x.shape[2:]), 1, 0)
  whole = lambda x: jnp.moveaxis(x, 0, 1).reshape(x.shape[1], -1, *x.shape[3:])
  ring = functools.partial(ring_attention, axis_name="ring", causal=causal, block_sizes=setup.block_sizes,
                           impl=HOP_IMPL[PALLAS])

  def device_fwd_bwd(do, q, k, v, pos):
    o, vjp_fn = jax.vjp(lambda q, k, v: ring(q, k, v, positions=pos), q, k, v)
    return (o, *vjp_fn(do))

  def fwd(q, k, v, pos):
    return whole(jax.vmap(lambda q, k, v, p: ring(q, k, v, positions=p), axis_name="ring")(
        chunks(q), chunks(k), chunks(v), chunks(pos)))

  def fwd_bwd(do, q, k, v, pos):
    return tuple(map(whole, jax.vmap(device_fwd_bwd, axis_name="ring")(*map(chunks, (do, q, k, v, pos)))))

  return fwd, fwd_bwd


@functools.cache
def _jitted(attention, custom_fwd_bwd=None):
  """(fwd, fwd with its VJP, bwd, fwd+bwd) jitted once per attention function, so that every
  `Programs` of the same function and shapes reuses one compilation."""
  with_vjp = lambda q, k, v, *m: jax.vjp(lambda q, k, v: attention(q, k, v, *m), q, k, v)

  def fwd_bwd(do, *args):
    o, vjp_fn = with_vjp(*args)
    return (o, *vjp_fn(do))

  bwd = jax.jit(lambda vjp_fn, do: vjp_fn(do))  # the backward alone, on the forward's residuals
  return jax.jit(attention), jax.jit(with_vjp), bwd, jax.jit(custom_fwd_bwd or fwd_bwd)


class Programs:
  """The jitted fwd, bwd and fwd+bwd of one attention function, bound to fixed inputs.

  `custom_fwd_bwd`, if given, replaces the fwd+bwd program (same signature: do first), and there is no bwd.
  """

  def __init__(self, attention, q, k, v, do, meta=(), custom_fwd_bwd=None):
    self.args = (q, k, v, *meta)
    self.do = do
    self.fwd, self._with_vjp, self.bwd, self.fwd_bwd = _jitted(attention, custom_fwd_bwd)
    self.has_bwd = custom_fwd_bwd is None

  def time(self, setup: Setup, part: str) -> float:
    if part == "bwd":
      if not self.has_bwd:
        raise ValueError("these programs have no separate backward")
      vjp_fn = self._with_vjp(*self.args)[1]  # residuals held only while the backward is timed
      return bench_lib.median_seconds(self.bwd, (vjp_fn, self.do), warmup=setup.warmup, runs=setup.runs)
    fn, args = {"fwd": (self.fwd, self.args), "fwd+bwd": (self.fwd_bwd, (self.do, *self.args))}[part]
    return bench_lib.median_seconds(fn, args, warmup=setup.warmup, runs=setup.runs)

  def outputs(self) -> tuple:
    return self.fwd_bwd(self.do, *self.args)


class Bench:
  """Runs the sections; keeps every row (for --json) and the timings later sections reuse."""

  def __init__(self, setup: Setup):
    self.setup = setup
    self.rows: list[dict] = []
    self.failures: list[str] = []
    self._times: dict[tuple, float] = {}

  def check(self, what: str, got: tuple, want: tuple) -> float:
    """Max relative error of (o, dq, dk, dv); above TOLERANCE the run is marked failed (reported, exit 1)."""
    error = max_relative_error(got, want)
    if not error <= TOLERANCE:
      self.failures.append(f"{what}: max relative error {error:.3g} > {TOLERANCE}")
      print(f"  CHECK FAILED: {self.failures[-1]}", flush=True)
    return error

  def inputs(self, length: int):
    s = self.setup
    return bench_lib.attention_inputs(s.batch, length, s.heads, s.kv_heads, s.head_dim, s.dtype)

  def timed(self, key: tuple, programs: Programs, parts=("fwd", "bwd", "fwd+bwd")) -> dict[str, float]:
    """Times of `parts` of `programs`, measured once per `key` and run (later sections reuse them)."""
    for part in parts:
      if (*key, part) not in self._times:
        self._times[(*key, part)] = programs.time(self.setup, part)
    return {p: self._times[(*key, p)] for p in parts}

  def add(self, row: dict) -> dict:
    self.rows.append(row)
    return row

  # --------------------------------------------------------------------------------------------------

  def kernel_section(self):
    s = self.setup
    print(f"\n== 1. hop kernels vs cuDNN: B={s.batch}, H={s.heads}, K={s.kv_heads}, D={s.head_dim}, {s.dtype}; "
          f"TFLOP/s of visible pairs; ratio = cuDNN time / ours ==")
    print(f"   target: pallas fwd+bwd >= {KERNEL_GOAL}x cuDNN at L >= {s.target_length} (stretch {KERNEL_STRETCH}x)")
    no_cudnn = cudnn_unavailable()
    parts = ("fwd", "bwd", "fwd+bwd")
    for length in s.lengths:
      q, k, v, do = self.inputs(length)
      for causal in (True, False):
        mask = "causal" if causal else "unmasked"
        flops = fwd_flops(s, visible_pairs(np.ones((s.batch, length), np.int32), causal))
        times, checked = {}, {}  # impl -> {part: seconds}; impl -> (reference impl, max relative error)
        reference = None
        for impl in (CUDNN, PALLAS, XLA_HOP):
          if impl == CUDNN and no_cudnn:
            continue
          programs = Programs(attention_fn(impl, causal, s), q, k, v, do)
          outputs = programs.outputs()
          if reference is None:
            reference = (impl, outputs)
          else:
            checked[impl] = (reference[0], self.check(f"{impl} L={length} {mask}", outputs, reference[1]))
          del outputs
          times[impl] = self.timed((impl, length, causal, "none"), programs, parts)
        del reference
        for impl in (CUDNN, PALLAS, XLA_HOP):
          self._kernel_row(length, mask, impl, flops, times, checked, no_cudnn)

  def _kernel_row(self, length, mask, impl, flops, times, checked, no_cudnn):
    s, parts = self.setup, ("fwd", "bwd", "fwd+bwd")
    row = dict(section="kernel", length=length, mask=mask, impl=impl, fwd_flops=flops)
    if impl not in times:
      self.add(dict(row, available=False, note=no_cudnn))
      print(f"  L={length:6d} {mask:>8} {impl:>8}: {no_cudnn}")
      return
    factor = {"fwd": 1.0, "bwd": BWD_FLOPS, "fwd+bwd": FWD_BWD_FLOPS}
    vs = lambda peer: {p: (times[peer][p] / times[impl][p] if peer in times else None) for p in parts}
    row.update(available=True, **{f"{p}_s": times[impl][p] for p in parts},
               **{f"{p}_tflops": factor[p] * flops / times[impl][p] / 1e12 for p in parts},
               vs_cudnn=vs(CUDNN) if impl != CUDNN else None, vs_xla_hop=vs(XLA_HOP) if impl == PALLAS else None)
    line = "  ".join(f"{p} {1e3 * times[impl][p]:9.3f} ms {row[f'{p}_tflops']:7.1f} TF/s" for p in parts)
    if impl == PALLAS:
      row["target"] = verdict(row["vs_cudnn"]["fwd+bwd"], KERNEL_GOAL, stretch=KERNEL_STRETCH,
                              applies=length >= s.target_length, na_reason=no_cudnn or f"L < {s.target_length}")
      cudnn_text = "/".join("n/a" if row["vs_cudnn"][p] is None else f"{row['vs_cudnn'][p]:.2f}" for p in parts)
      line += (f" | vs cuDNN (fwd/bwd/f+b) {cudnn_text} | vs xla hop f+b {row['vs_xla_hop']['fwd+bwd']:.2f}"
               f" | target: {row['target']}")
    if impl in checked:
      row.update(checked_against=checked[impl][0], max_rel_error=checked[impl][1])
      line += f" | max rel. error vs {checked[impl][0]} {checked[impl][1]:.1e}"
    print(f"  L={length:6d} {mask:>8} {impl:>8}: {line}", flush=True)
    self.add(row)

  def ring_section(self):
    s = self.setup
    print(f"\n== 2. ring efficiency emulated on one device: the ring over N chunks of L (vmapped devices, free "
          f"transfers) vs one hop over N*L; pallas, {s.dtype}; efficiency = full-length time / ring time ==")
    print(f"   target: fwd+bwd efficiency >= {RING_GOAL} at L >= {s.target_length} per chunk")
    for mask in s.ring_masks:
      causal, layout = {"causal": (True, "dual_chunk_swap"), "unmasked": (False, "contiguous")}[mask]
      for length in s.ring_lengths:
        for n in s.ring_sizes:
          total = n * length
          q, k, v, do = self.inputs(total)
          full_programs = Programs(attention_fn(PALLAS, causal, s), q, k, v, do)
          full = self.timed((PALLAS, total, causal, "none"), full_programs, s.ring_parts)
          perm = layouts.permutation(total, n, layout)
          pos = jnp.asarray(np.broadcast_to(perm.astype(np.int32), (s.batch, total)))
          order = lambda x, p=perm: jnp.take(x, jnp.asarray(p), axis=1)
          ring_fwd, ring_fwd_bwd = emulated_ring_fns(n, causal, s)
          ring = Programs(ring_fwd, order(q), order(k), order(v), order(do), (pos,), custom_fwd_bwd=ring_fwd_bwd)
          want = tuple(map(order, full_programs.outputs()))
          error = self.check(f"ring N={n} L={length} {mask}", ring.outputs(), want)
          del want, full_programs
          times = self.timed(("ring", n, length, causal), ring, s.ring_parts)
          eff = {p: full[p] / times[p] if p in times else None for p in ("fwd", "fwd+bwd")}
          target = verdict(eff["fwd+bwd"], RING_GOAL, applies=length >= s.target_length,
                           na_reason=f"L < {s.target_length}")
          self.add(dict(section="ring", mask=mask, layout=layout, ring_size=n, chunk_length=length,
                        full_fwd_s=full.get("fwd"), full_fwd_bwd_s=full["fwd+bwd"], ring_fwd_s=times.get("fwd"),
                        ring_fwd_bwd_s=times["fwd+bwd"], efficiency_fwd=eff["fwd"],
                        efficiency_fwd_bwd=eff["fwd+bwd"], max_rel_error=error, target=target))
          fwd_text = "not timed" if eff["fwd"] is None else f"{eff['fwd']:.3f}"
          print(f"  {mask:>8} ({layout}) L={length:6d} N={n}: full {1e3 * full['fwd+bwd']:9.3f} ms, ring "
                f"{1e3 * times['fwd+bwd']:9.3f} ms fwd+bwd | efficiency fwd {fwd_text} fwd+bwd "
                f"{eff['fwd+bwd']:.3f} | max rel. error vs full {error:.1e} | target: {target}", flush=True)

  def packing_section(self):
    s = self.setup
    no_cudnn = cudnn_unavailable()
    print(f"\n== 3. packed documents, causal, pallas fwd+bwd: tile skipping vs visible work "
          f"(speed-up ideal = 1 / visible fraction) ==")
    for length in s.lengths:
      q, k, v, do = self.inputs(length)
      unpacked_fwd_bwd = lambda impl: self.timed(
          (impl, length, True, "none"), Programs(attention_fn(impl, True, s), q, k, v, do), ("fwd+bwd",))["fwd+bwd"]
      unpacked = unpacked_fwd_bwd(PALLAS)
      cudnn = None if no_cudnn else unpacked_fwd_bwd(CUDNN)
      causal_pairs = visible_pairs(np.ones((s.batch, length), np.int32), True)
      for mean in s.doc_means:
        seg, pos = documents(s.batch, length, mean)
        pairs = visible_pairs(seg, True)
        packed = Programs(attention_fn(PALLAS, True, s), q, k, v, do, (seg, pos))
        want = Programs(attention_fn(XLA_HOP, True, s), q, k, v, do, (seg, pos)).outputs()
        error = self.check(f"packed L={length} mean {mean}", packed.outputs(), want)
        del want
        t = self.timed(("packed", length, mean), packed, ("fwd+bwd",))["fwd+bwd"]
        row = self.add(dict(
            section="packing", length=length, doc_mean=mean,
            documents=sum(len(np.unique(r[r != 0])) for r in np.asarray(seg)),
            visible_fraction=pairs / causal_pairs, fwd_bwd_s=t, unpacked_fwd_bwd_s=unpacked,
            speedup_vs_unpacked=unpacked / t, ideal_speedup=causal_pairs / pairs,
            fwd_bwd_tflops=FWD_BWD_FLOPS * fwd_flops(s, pairs) / t / 1e12, max_rel_error=error,
            cudnn_unpacked_fwd_bwd_s=cudnn, cudnn_unpacked_over_packed=None if cudnn is None else cudnn / t))
        cudnn_text = (no_cudnn if cudnn is None
                      else f"cuDNN causal unpacked {1e3 * cudnn:9.3f} ms ({cudnn / t:.2f}x ours)")
        print(f"  L={length:6d} docs mean {mean:5d} ({row['documents']} docs, visible {row['visible_fraction']:.3f}): "
              f"{1e3 * t:9.3f} ms, {row['fwd_bwd_tflops']:6.1f} TF/s | vs unpacked {1e3 * unpacked:9.3f} ms: "
              f"speed-up {row['speedup_vs_unpacked']:.2f}x of ideal {row['ideal_speedup']:.2f}x | {cudnn_text} "
              f"| max rel. error vs xla hop {error:.1e}", flush=True)

  def segments_section(self):
    s = self.setup
    print(f"\n== 4. all-one segment ids (arrays) vs segment_ids=None, causal, pallas fwd+bwd; "
          f"target: cost <= {SEGMENT_GOAL:.0%} at L >= {s.target_length} ==")
    for length in s.lengths:
      q, k, v, do = self.inputs(length)
      ones = jnp.ones((s.batch, length), jnp.int32)
      fwd_bwd = lambda meta: self.timed((PALLAS, length, True, "ones" if meta else "none"),
                                        Programs(attention_fn(PALLAS, True, s), q, k, v, do, meta), ("fwd+bwd",))
      none, ids = fwd_bwd(())["fwd+bwd"], fwd_bwd((ones,))["fwd+bwd"]
      cost = ids / none - 1
      target = verdict(cost, SEGMENT_GOAL, at_least=False, applies=length >= s.target_length,
                       na_reason=f"L < {s.target_length}")
      self.add(dict(section="segments", length=length, none_fwd_bwd_s=none, ones_fwd_bwd_s=ids, cost=cost,
                    target=target))
      print(f"  L={length:6d}: None {1e3 * none:9.3f} ms, all-one ids {1e3 * ids:9.3f} ms, cost {cost:+.1%} "
            f"| target: {target}", flush=True)


def _ints(text: str) -> tuple[int, ...]:
  return tuple(int(x) for x in text.split(",") if x)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
  parser.add_argument("--smoke", action="store_true",
                      help="tiny shapes on CPU, Pallas interpreted (a check, not a measurement)")
  parser.add_argument("--lengths", type=_ints, help="local lengths (default 8192,16384,32768,65536)")
  parser.add_argument("--ring-sizes", type=_ints, help="emulated ring sizes N (default 2,4,8)")
  parser.add_argument("--ring-lengths", type=_ints, help="tokens per ring chunk (default 8192,16384)")
  parser.add_argument("--doc-means", type=_ints, help="mean packed document lengths (default 2048,8192)")
  parser.add_argument("--blocks", type=_ints,
                      help="hop tiles block_q,block_kv[,block_q_bwd,block_kv_bwd] (default: the kernels')")
  parser.add_argument("--runs", type=int, help="timed calls per figure, median taken (default 7)")
  parser.add_argument("--warmup", type=int, help="untimed calls after compilation (default 2)")
  parser.add_argument("--json", help="also write every row to this JSON file")
  args = parser.parse_args(argv)
  sections = bench_lib.parse_sections(parser, args.sections, SECTIONS)
  if args.blocks is not None and not 2 <= len(args.blocks) <= 4:
    parser.error(f"--blocks takes 2 to 4 sizes (block_q,block_kv[,block_q_bwd,block_kv_bwd]), got {args.blocks}")
  setup = SMOKE if args.smoke else Setup()
  overrides = dict(lengths=args.lengths, ring_sizes=args.ring_sizes, ring_lengths=args.ring_lengths,
                   doc_means=args.doc_means, blocks=args.blocks, runs=args.runs, warmup=args.warmup)
  setup = dataclasses.replace(setup, **{key: value for key, value in overrides.items() if value is not None})
  if args.smoke:
    if "JAX_PLATFORMS" not in os.environ:
      jax.config.update("jax_platforms", "cpu")
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {SMOKE_XLA_FLAGS}"  # read when the backend starts
  elif jax.default_backend() != "gpu":
    parser.error(f"this benchmark measures GPU kernels and the JAX backend is {jax.default_backend()!r}; run it on "
                 "a CUDA GPU, or with --smoke for the CPU check")
  device = jax.devices()[0]
  print(f"ring attention GPU benchmark, {time.strftime('%Y-%m-%d')}, {device.platform} {device.device_kind}, "
        f"jax {jax.__version__}, {cudnn_version()}, blocks {setup.block_sizes}")
  if setup.smoke:
    print(f"SMOKE MODE on {device.platform}: tiny shapes (on CPU the Triton kernels run in Pallas interpret mode and "
          "cuDNN is unavailable); figures and verdicts exercise the report only and say nothing about performance")
  bench = Bench(setup)
  for name in sections:
    start = time.perf_counter()
    getattr(bench, f"{name}_section")()
    print(f"   ({name}: {time.perf_counter() - start:.0f} s including compilation)", flush=True)
  if args.json:
    bench_lib.write_json(args.json, dict(
        date=time.strftime("%Y-%m-%d"), device=f"{device.platform} {device.device_kind}", jax=jax.__version__,
        cudnn=cudnn_version(), setup=dataclasses.asdict(setup), rows=bench.rows, failures=bench.failures))
  if bench.failures:
    print(f"\n{len(bench.failures)} numerics check(s) FAILED (figures of those rows are not valid):\n  "
          + "\n  ".join(bench.failures))
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
