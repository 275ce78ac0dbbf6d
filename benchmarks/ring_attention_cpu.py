"""Ring attention on fake CPU devices: memory scaling, causal balance, peers, MaxText step time.

    .venv/bin/python benchmarks/ring_attention_cpu.py [--sections memory,time,balance,hlo,maxtext]

Sections (each prints a table and its ratios; BENCHMARKS.md records a run):
1. Compiled per-device temp memory (XLA `memory_analysis`) of one fwd+bwd, at local length L and 2L
   (goal: ratio <= 2.05) and at fixed L for ring sizes 2, 4, 8 (goal: flat), next to the original
   LWM ring (`ringattention` 0.1.2, XLA path) and an all-gather attention (what MaxText's
   `dot_product` context parallelism does: gather K/V, dense masked softmax) on the same shapes.
2. Execution time of one fwd+bwd on the same shapes: ours vs `ringattention` 0.1.2, same run.
3. Causal balance: blocks computed per device (the kernel's own skip rule), max/mean per layout
   at N = 4, 8 (goal <= 1.05) and total work vs non-causal (goal about 0.5).
4. The compiled HLO: collective-permutes and copies inside each ring loop body, ours and the peer's.
5. MaxText, tiny model, 4 fake devices, context parallelism 4: step time and peak process memory,
   `attention: ring` vs `attention: dot_product` (MaxText's all-gather CP), S = 4K, 8K and 16K
   (dot_product only up to --dot-product-max-length: at 16K its dense scores need far more memory
   than a shared 24 GiB host should give one benchmark).

The machine has 2 cores: fake devices share them, so times are relative (same run, same machine),
not absolute device speed. This script imports no MaxText (MaxText runs as `lwm-train` processes).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import bench_lib

REPO = Path(__file__).resolve().parents[1]
DEVICES = 8
H, D, BLOCK = 8, 64, 512  # MHA 8 heads so the original ring (no GQA) runs the same shapes


def _jax():
  import jax  # pylint: disable=import-outside-toplevel

  return jax


def _inputs(n, length, kv_heads=H, dtype="float32"):
  return bench_lib.attention_inputs(1, n * length, H, kv_heads, D, dtype)


def _mesh(n):
  import numpy as np  # pylint: disable=import-outside-toplevel

  jax = _jax()
  return jax.sharding.Mesh(np.array(jax.devices()[:n]), ("sp",))


def ours(mesh, q, k, v):
  from lwm_plugin.ring_attention import BlockSizes, sharded_ring_attention  # pylint: disable=import-outside-toplevel

  return sharded_ring_attention(q, k, v, mesh=mesh, axis_name="sp", block_sizes=BlockSizes(BLOCK, BLOCK))


def original_lwm_ring(mesh, q, k, v):
  """`ringattention` 0.1.2 (haoliuhl), XLA path, blocks of BLOCK, as LWM calls it."""
  jax = _jax()
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from jax.sharding import PartitionSpec as P  # pylint: disable=import-outside-toplevel

  import jax.extend  # pylint: disable=import-outside-toplevel,redefined-outer-name

  if not hasattr(jax.lib, "xla_bridge"):  # the one attribute 0.1.2 needs from older JAX
    jax.lib.xla_bridge = types.SimpleNamespace(get_backend=jax.extend.backend.get_backend)
  from ringattention import ringattention  # pylint: disable=import-outside-toplevel

  b, s = q.shape[:2]
  kernel = functools.partial(
      ringattention, axis_name="sp", float32_logits=True, cache_idx=None,
      blockwise_kwargs=dict(causal_block_size=1, deterministic=True, dropout_rng=None, attn_pdrop=0.0,
                            query_chunk_size=BLOCK, key_chunk_size=BLOCK, dtype=q.dtype,
                            policy=jax.checkpoint_policies.nothing_saveable, precision=None, prevent_cse=True))
  seq = P(None, "sp", None, None)
  return jax.shard_map(kernel, mesh=mesh, in_specs=(seq, seq, seq, P(), P()), out_specs=seq, check_vma=False)(
      q, k, v, jnp.zeros((b, 1, 1, s), q.dtype), jnp.ones((b, s), jnp.int32))


def all_gather_dense(mesh, q, k, v):
  """MaxText `dot_product` context parallelism in miniature: gather K/V, dense causal softmax."""
  jax = _jax()
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from jax.sharding import PartitionSpec as P  # pylint: disable=import-outside-toplevel

  def local(q, k, v):
    k_all = jax.lax.all_gather(k, "sp", axis=1, tiled=True)
    v_all = jax.lax.all_gather(v, "sp", axis=1, tiled=True)
    length = q.shape[1]
    rows = jax.lax.axis_index("sp") * length + jnp.arange(length)
    mask = jnp.arange(k_all.shape[1])[None, :] <= rows[:, None]
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k_all).astype(jnp.float32) * q.shape[-1]**-0.5
    p = jax.nn.softmax(jnp.where(mask, s, -jnp.inf), axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", p.astype(v.dtype), v_all)

  seq = P(None, "sp", None, None)
  return jax.shard_map(local, mesh=mesh, in_specs=(seq, seq, seq), out_specs=seq, check_vma=False)(q, k, v)


IMPLEMENTATIONS = {"ours": ours, "ringattention 0.1.2": original_lwm_ring, "all-gather dense": all_gather_dense}


def _fwd_bwd(attention, mesh):
  jax = _jax()

  def step(q, k, v, do):
    out, vjp = jax.vjp(lambda q, k, v: attention(mesh, q, k, v), q, k, v)
    return (out, *vjp(do))

  return jax.jit(step)


def temp_mib(attention, n, length, kv_heads=H):
  args = _inputs(n, length, kv_heads)
  compiled = _fwd_bwd(attention, _mesh(n)).lower(*args).compile()
  return compiled.memory_analysis().temp_size_in_bytes / 2**20


def memory_section():
  print("\n== 1. compiled per-device temp memory of fwd+bwd (MiB), fp32, B=1, H=8, D=64, blocks 512 ==")
  rows = []
  for name, fn in IMPLEMENTATIONS.items():
    lengths = {length: temp_mib(fn, 4, length) for length in (2048, 4096)}
    sizes = {n: temp_mib(fn, n, 2048) for n in (2, 4, 8)}
    rows.append((name, lengths, sizes))
    print(f"{name:>22}: N=4  L=2K {lengths[2048]:8.1f}  L=4K {lengths[4096]:8.1f}  ratio {lengths[4096] / lengths[2048]:.3f}"
          f"   |  L=2K  N=2 {sizes[2]:8.1f}  N=4 {sizes[4]:8.1f}  N=8 {sizes[8]:8.1f}  N8/N2 {sizes[8] / sizes[2]:.3f}")
  gqa = {length: temp_mib(ours, 4, length, kv_heads=2) for length in (2048, 4096)}
  print(f"{'ours GQA 8/2':>22}: N=4  L=2K {gqa[2048]:8.1f}  L=4K {gqa[4096]:8.1f}  ratio {gqa[4096] / gqa[2048]:.3f}")
  return rows


def time_section(rounds=5):
  print(f"\n== 2. wall time (s, best of {rounds} interleaved rounds), fp32, causal, B=1, H=8, D=64, blocks 512, N=4 ==")
  jax = _jax()
  mesh = _mesh(4)
  for length in (1024, 2048):
    args = _inputs(4, length)
    runs = {}
    for name in ("ours", "ringattention 0.1.2"):
      fn = IMPLEMENTATIONS[name]
      runs[(name, "fwd")] = (jax.jit(functools.partial(fn, mesh)), args[:3])
      runs[(name, "fwd+bwd")] = (_fwd_bwd(fn, mesh), args)
    best = {key: float("inf") for key in runs}
    for key, (fn, a) in runs.items():
      jax.block_until_ready(fn(*a))  # compile + warm up
    for _ in range(rounds):  # interleaved, so load from other processes hits both alike
      for key, (fn, a) in runs.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(*a))
        best[key] = min(best[key], time.perf_counter() - start)
    for part in ("fwd", "fwd+bwd"):
      ours_t, peer_t = best[("ours", part)], best[("ringattention 0.1.2", part)]
      print(f"  L={length:5d} (S={4 * length}) {part:>7}: ours {ours_t:.3f}  ringattention 0.1.2 {peer_t:.3f}  "
            f"peer/ours {peer_t / ours_t:.2f}")


def hlo_section():
  print("\n== 4. compiled HLO of fwd+bwd at N=8 (MHA 8 heads, L=2K): collectives and copies per ring loop body ==")
  from lwm_plugin.kernels.ring import hlo  # pylint: disable=import-outside-toplevel

  args = _inputs(8, 2048)
  for name in ("ours", "ringattention 0.1.2"):
    text = _fwd_bwd(IMPLEMENTATIONS[name], _mesh(8)).lower(*args).compile().as_text()
    print(f"  {name:>20}: loops {hlo.ring_loops(text)}  collective-permutes in the program {hlo.total_op_count(text)}")
  print("  (ours: two hops per loop iteration; per hop forward = K/V stacked + int32 segment ids/positions, "
        "backward = those + the float32 dK/dV accumulator)")


def blocks_per_device(n, length, layout, causal=True, block=BLOCK):
  """Blocks each device computes over the whole ring, by the kernel's own hop and block skip rules."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from lwm_plugin.kernels.ring import common, layouts  # pylint: disable=import-outside-toplevel

  pos = layouts.permutation(n * length, n, layout).reshape(n, 1, length).astype(np.int32)  # original positions
  seg = np.ones((1, length), np.int32)
  counts = []
  for r in range(n):
    q_sum = common.summarize(jnp.asarray(seg), jnp.asarray(pos[r]), block)
    total = 0
    for t in range(n):
      src = (r - t) % n
      kv_sum = common.summarize(jnp.asarray(seg), jnp.asarray(pos[src]), block)
      hop = common.visible(common.summarize(jnp.asarray(seg), jnp.asarray(pos[r]), length),
                           common.summarize(jnp.asarray(seg), jnp.asarray(pos[src]), length), causal)
      if bool(hop[0, 0]):
        total += int(common.visible(q_sum, kv_sum, causal).sum())
    counts.append(total)
  return counts


def balance_section():
  print("\n== 3. causal balance: blocks computed per device (L=8K per device, blocks 512) ==")
  for n in (4, 8):
    full = n * (8192 // BLOCK)**2  # blocks per device without a causal mask
    for layout in ("contiguous", "dual_chunk_swap", "striped"):
      counts = blocks_per_device(n, 8192, layout)
      mean = statistics.mean(counts)
      print(f"  N={n} {layout:>16}: max/mean {max(counts) / mean:.3f}  total vs non-causal {sum(counts) / (n * full):.3f}"
            f"  critical path vs contiguous {max(counts) / max(blocks_per_device(n, 8192, 'contiguous')):.3f}"
            f"  per device {counts}")


def _maxtext_run(attention, length, out_dir):
  """One `lwm-train` process: (median step time after compilation, last loss, peak RSS in GiB)."""
  metrics = out_dir / f"{attention}-{length}.jsonl"
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4 "
             "--xla_cpu_collective_call_terminate_timeout_seconds=1200", PYTHONPATH=str(REPO))
  cmd = [sys.executable, "-m", "lwm_plugin.train", "tiny_cpu_ring.yml", f"attention={attention}", "steps=6",
         f"max_target_length={length}", "per_device_batch_size=0.25", "max_segments_per_seq=8",
         f"lwm_ring_block_q={BLOCK}", f"lwm_ring_block_kv={BLOCK}", f"base_output_directory={out_dir}",
         f"run_name={attention}-{length}", f"metrics_file={metrics}"]
  log = out_dir / f"{attention}-{length}.log"
  with log.open("w") as stderr:
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
    proc.returncode = os.waitstatus_to_exitcode(status)
  if proc.returncode != 0:
    raise RuntimeError(f"lwm-train failed for {attention} at {length}:\n{log.read_text()[-4000:]}")
  rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
  step = statistics.median(row["perf/step_time_seconds"] for row in rows[2:])
  return step, rows[-1]["learning/loss"], usage.ru_maxrss / 2**20


def maxtext_section(lengths, dot_max):
  print("\n== 5. MaxText tiny model, 4 fake CPU devices, context parallelism 4, global batch 1, packing ==")
  with tempfile.TemporaryDirectory() as tmp:
    for length in lengths:
      rs, rl, rm = _maxtext_run("ring", length, Path(tmp))
      line = f"  S={length:6d}: ring step {rs:7.3f} s, peak RSS {rm:5.2f} GiB"
      if length <= dot_max:
        ds, dl, dm = _maxtext_run("dot_product", length, Path(tmp))
        line += (f"  |  dot_product step {ds:7.3f} s, peak RSS {dm:5.2f} GiB  |  ring/dot: step {rs / ds:.2f}, "
                 f"memory {rm / dm:.2f}  |  last loss {rl:.5f} vs {dl:.5f}")
      else:
        line += f"  |  dot_product not run (S > --dot-product-max-length={dot_max}: its [L, S] scores outgrow this host)"
      print(line, flush=True)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sections", default="memory,time,balance,hlo,maxtext",
                      help="comma-separated subset of: memory, time, balance, hlo, maxtext")
  parser.add_argument("--maxtext-lengths", default="4096,8192,16384")
  parser.add_argument("--dot-product-max-length", type=int, default=8192,
                      help="longest S at which to run MaxText's dot_product (memory grows with S^2)")
  args = parser.parse_args(argv)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={DEVICES}"
                             " --xla_cpu_collective_call_terminate_timeout_seconds=1200")
  sys.path.insert(0, str(REPO))
  print(f"ring attention CPU benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
        f"jax {_jax().__version__}, {len(_jax().devices())} fake devices, load average {os.getloadavg()[0]:.1f}")
  sections = {
      "memory": memory_section, "time": time_section, "balance": balance_section, "hlo": hlo_section,
      "maxtext": lambda: maxtext_section([int(x) for x in args.maxtext_lengths.split(",")], args.dot_product_max_length),
  }
  for name in bench_lib.parse_sections(parser, args.sections, sections):
    sections[name]()
  return 0


if __name__ == "__main__":
  sys.exit(main())
