"""Per-token decode time with the KV cache vs context length, on 4 fake CPU devices (context parallelism 4).

    .venv/bin/python benchmarks/decode.py [--lengths 1024,4096,16384] [--steps 16] [--dot-product-max-length 4096]
                                          [--json OUT.json]

A small random LLaMA-shaped model (4 layers, emb 256, 8 query / 4 kv heads, head dim 32, vocab 1024,
float32; written as a MaxText checkpoint with the converter's own writer), one prompt of L tokens
(batch 1), `maxtext_configs/tiny_cpu_ring.yml` with `max_prefill_predict_length=L`. For each L:

  ring cached     `CachedDecoder`, `attention: ring`: ring prefill into the context-sharded cache, then
                  decode steps attending the cache shards in place (median of --steps steps, each a
                  full step: B ids in, B x V logits out)
  recompute       `GreedyDecoder`, the old path: one train-mode ring forward over the whole sequence
                  per new token (median of 3 tokens)
  dot cached      `CachedDecoder` with `attention: dot_product`: MaxText's own prefill and decode on its
                  KV cache, the cache replicated (up to --dot-product-max-length: its prefill builds
                  dense [L, L] scores)

and prefill tokens/s (the second prefill; the first compiles). Reported: per-token times, recompute /
ring cached, dot / ring cached, and ring cached at the longest L over the shortest (goal: nearly flat).
The 4 fake devices share the machine's cores: times are relative (same run), not device speed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEVICES = 4
MODEL = dict(E=256, H=8, K=4, D=32, M=512, L=4, V=1024)
NEW_TOKENS = 64  # the generated-token cache (max_target_length - max_prefill_predict_length)


def _overrides(length: int, attention: str) -> list[str]:
  m = MODEL
  return [f"base_emb_dim={m['E']}", f"base_num_query_heads={m['H']}", f"base_num_kv_heads={m['K']}",
          f"head_dim={m['D']}", f"base_mlp_dim={m['M']}", f"base_num_decoder_layers={m['L']}",
          f"vocab_size={m['V']}", f"attention={attention}", f"ici_context_parallelism={DEVICES}",
          f"max_prefill_predict_length={length}", f"max_target_length={length + NEW_TOKENS}",
          "per_device_batch_size=0.25", "run_name=bench_decode", "enable_checkpointing=false"]


def _write_checkpoint(out: Path) -> Path:
  """A random float32 MaxText checkpoint of MODEL through `conversion.from_hf.write_maxtext` (std 0.05)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from conversion import from_hf, names  # pylint: disable=import-outside-toplevel
  from conversion.spec import ModelSpec  # pylint: disable=import-outside-toplevel

  spec = ModelSpec(**MODEL, norm_eps=1e-5, rope_theta=1e4, max_positions=1 << 20, tie_embeddings=False,
                   scan_layers=True)
  shapes = names.hf_shapes(names.table(spec, True))
  rng = np.random.default_rng(0)

  class Random:
    def shapes(self):
      return shapes

    def get(self, name):
      return (1.0 + 0.1 * rng.standard_normal(shapes[name]) if name.endswith("norm.weight")
              else 0.05 * rng.standard_normal(shapes[name])).astype(np.float32)

  from_hf.write_maxtext(spec, Random(), spec.V, out, dtype="float32", where="random", progress=False)
  return out / "0" / "items"


def _time_cached(config, length: int, steps: int) -> tuple[float, float]:
  """(prefill tokens/s, median seconds per decode step) of `CachedDecoder` on one prompt of `length` tokens."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from lwm_plugin.integration.inference import CachedDecoder  # pylint: disable=import-outside-toplevel

  decoder = CachedDecoder(config, bucket=length)
  prompt = [np.random.default_rng(1).integers(1, MODEL["V"], length).astype(np.int32)]
  decoder.prefill(prompt)  # compiles
  start = time.perf_counter()
  state = decoder.prefill(prompt)
  prefill_s = time.perf_counter() - start
  times = []
  for i in range(steps + 2):  # the first step compiles, the second warms up
    start = time.perf_counter()
    state = decoder.step(state, state.logits_BxV.argmax(-1)[:1])
    if i >= 2:
      times.append(time.perf_counter() - start)
  return length / prefill_s, statistics.median(times)


def _time_recompute(config, length: int) -> float:
  """Median seconds per new token of `GreedyDecoder` (a full forward per token) with about `length` tokens."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from lwm_plugin.integration.inference import GreedyDecoder  # pylint: disable=import-outside-toplevel

  decoder = GreedyDecoder(config, bucket=length)
  prompt = [np.random.default_rng(1).integers(1, MODEL["V"], length - 8).astype(np.int32)]
  decoder.generate(prompt, 1)  # compiles (the padded length stays `length`)
  times = []
  for _ in range(3):
    start = time.perf_counter()
    decoder.generate(prompt, 1)
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def worker(args) -> None:
  """Runs in the child (4 fake devices): prints one result line per measurement."""
  from lwm_plugin import integration  # pylint: disable=import-outside-toplevel
  from lwm_plugin.integration.inference import load_config  # pylint: disable=import-outside-toplevel

  integration.install()
  lengths = [int(x) for x in args.lengths.split(",")]
  with tempfile.TemporaryDirectory() as tmp:
    checkpoint = _write_checkpoint(Path(tmp) / "random")

    def config(length, attention):
      return load_config(["bench_decode", str(REPO / "maxtext_configs" / "tiny_cpu_ring.yml"),
                          f"load_parameters_path={checkpoint}", *_overrides(length, attention)])

    for length in lengths:
      rate, step = _time_cached(config(length, "ring"), length, args.steps)
      print(f"RESULT ring {length} {rate:.1f} {step:.6f}", flush=True)
      print(f"RESULT recompute {length} 0 {_time_recompute(config(length, 'ring'), length):.6f}", flush=True)
      if length <= args.dot_product_max_length:
        rate, step = _time_cached(config(length, "dot_product"), length, args.steps)
        print(f"RESULT dot {length} {rate:.1f} {step:.6f}", flush=True)


def _table(results: dict, lengths: list[int]) -> str:
  rows = ["| context L | ring cached / token | recompute / token | recompute / ring | MaxText dot cached / token | "
          "dot / ring | ring prefill tok/s | dot prefill tok/s |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
  for n in lengths:
    ring, rec, dot = results.get(("ring", n)), results.get(("recompute", n)), results.get(("dot", n))
    rows.append(f"| {n} | {ring[1] * 1e3:.1f} ms | {rec[1] * 1e3:.1f} ms | **{rec[1] / ring[1]:.1f}** | "
                + (f"{dot[1] * 1e3:.1f} ms | {dot[1] / ring[1]:.2f} | " if dot else "not run | | ")
                + f"{ring[0]:.0f} | " + (f"{dot[0]:.0f} |" if dot else "not run |"))
  first, last = results[("ring", lengths[0])][1], results[("ring", lengths[-1])][1]
  rows.append(f"\nring cached per-token time, L={lengths[-1]} / L={lengths[0]}: **{last / first:.2f}**")
  return "\n".join(rows)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="benchmarks/decode.py", description=__doc__.split("\n")[0])
  parser.add_argument("--lengths", default="1024,4096,16384")
  parser.add_argument("--steps", type=int, default=16)
  parser.add_argument("--dot-product-max-length", type=int, default=4096)
  parser.add_argument("--json", help="also write the figures as JSON")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    worker(args)
    return 0
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
             XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES} "
                       "--xla_cpu_collective_call_terminate_timeout_seconds=600")
  cmd = [sys.executable, __file__, "--worker", "--lengths", args.lengths, "--steps", str(args.steps),
         "--dot-product-max-length", str(args.dot_product_max_length)]
  proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, check=False)
  if proc.returncode:
    sys.stderr.write(proc.stderr[-6000:])
    parser.exit(1, f"{parser.prog}: error: the benchmark worker failed (rc={proc.returncode})\n")
  results = {}
  for line in proc.stdout.splitlines():
    if line.startswith("RESULT "):
      _, kind, n, rate, step = line.split()
      results[(kind, int(n))] = (float(rate), float(step))
  lengths = [int(x) for x in args.lengths.split(",")]
  print(_table(results, lengths))
  if args.json:
    sys.path.insert(0, str(Path(__file__).parent))
    import bench_lib  # pylint: disable=import-outside-toplevel
    bench_lib.write_json(args.json, {"model": MODEL, "devices": DEVICES, "steps": args.steps,
                                     "results": [{"kind": k, "length": n, "prefill_tokens_per_s": r, "seconds": s}
                                                 for (k, n), (r, s) in sorted(results.items())]})
  return 0


if __name__ == "__main__":
  sys.exit(main())
