"""VQGAN encode and decode throughput on this CPU: ours (JAX) vs diffusers' `VQModel` (torch), same run.

  JAX_PLATFORMS=cpu .venv/bin/python benchmarks/vqgan.py [--batch 8] [--runs 3] [--dtype float32]

Writes random weights of the full-size model (aMUSEd-256 / LWM: 146M parameters) as a diffusers
directory under --work, then times, on the same weights and the same batch of random 256x256
images, `lwm_plugin.vision.vqgan` (`load_vqgan(dir)`: jit-compiled, all local devices) and
diffusers 0.42 `VQModel` in the .venv-hf reference venv (torch CPU, one thread per core, a
persistent process: tests/helpers/diffusers_side.py "serve"): encode (pixels -> 16x16 codes) and
decode (codes -> pixels). The two sides' calls alternate (ours, diffusers, ours, ...), so load from
other processes on a shared machine falls on both alike; each figure is the median of --runs calls
after one warm-up call each (which compiles ours). Prints images/s and the ours/diffusers ratio;
--json also writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from helpers.vqgan_files import write_random_vqgan  # noqa: E402  (tests/helpers: the test weights' maker)
from lwm_plugin.vision.vqgan import VQGANConfig, load_vqgan  # noqa: E402


def diffusers_server(model_dir: Path, work: Path, batch: int, threads: int) -> subprocess.Popen:
  """diffusers_side.py "serve" in .venv-hf, ready to time one call per line."""
  proc = subprocess.run([str(REPO / "tools" / "hf_venv.sh")], capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    sys.exit(f"benchmarks/vqgan.py: error: tools/hf_venv.sh failed:\n{proc.stderr[-3000:]}")
  jobs = work / "serve_job.json"
  jobs.write_text(json.dumps([{"op": "serve", "model": str(model_dir), "batch": batch, "size": 256,
                               "threads": threads}]))
  server = subprocess.Popen([proc.stdout.strip().splitlines()[-1], str(REPO / "tests/helpers/diffusers_side.py"),
                             str(jobs)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  if server.stdout.readline().strip() != "ready":
    sys.exit("benchmarks/vqgan.py: error: the diffusers process did not start")
  return server


def peer_call_s(server: subprocess.Popen, op: str) -> float:
  server.stdin.write(op + "\n")
  server.stdin.flush()
  return float(server.stdout.readline())


def ours_call_s(fn, arg) -> float:
  start = time.perf_counter()
  fn(arg)
  return time.perf_counter() - start


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--runs", type=int, default=3)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--work", type=Path, default=None, help="directory for the weights (default: a temporary one)")
  parser.add_argument("--json", type=Path, default=None)
  args = parser.parse_args()
  threads = os.cpu_count() or 1
  with tempfile.TemporaryDirectory() as tmp:
    work = args.work or Path(tmp)
    model_dir = work / "vqvae"
    t = time.time()
    write_random_vqgan(model_dir, "diffusers", VQGANConfig(), seed=0)
    print(f"random full-size VQGAN (diffusers layout) written in {time.time() - t:.0f} s; batch {args.batch} x "
          f"256x256, {threads} CPU threads, median of {args.runs}")
    import jax  # pylint: disable=import-outside-toplevel
    codec = load_vqgan(model_dir, dtype=args.dtype, max_batch_per_device=args.batch)
    pixels = np.random.default_rng(0).uniform(-1, 1, (args.batch, 256, 256, 3)).astype(np.float32)
    calls = {"encode": (codec.encode, pixels), "decode": (codec.decode, codec.encode(pixels))}
    server = diffusers_server(model_dir, work, args.batch, threads)
    times = {(side, op): [] for side in ("ours", "peer") for op in calls}
    for op, (fn, arg) in calls.items():
      ours_call_s(fn, arg)   # warm-up (compiles)
      peer_call_s(server, op)
      for _ in range(args.runs):
        times["ours", op].append(ours_call_s(fn, arg))
        times["peer", op].append(peer_call_s(server, op))
    server.stdin.close()
    server.wait()
    ours = {f"{op}_s": statistics.median(times["ours", op]) for op in calls}
    peer = {f"{op}_s": statistics.median(times["peer", op]) for op in calls}
  result = {"batch": args.batch, "dtype": args.dtype, "devices": len(jax.devices()), "threads": threads}
  for op in ("encode", "decode"):
    ours_ips, peer_ips = args.batch / ours[f"{op}_s"], args.batch / peer[f"{op}_s"]
    result[op] = {"ours_images_per_s": ours_ips, "diffusers_images_per_s": peer_ips, "ratio": ours_ips / peer_ips}
    print(f"{op}: ours {ours_ips:6.2f} images/s ({args.dtype}), diffusers VQModel {peer_ips:6.2f} images/s "
          f"(float32), ours/diffusers {ours_ips / peer_ips:.2f}x")
  if args.json:
    args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
  main()
