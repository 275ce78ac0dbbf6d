"""Conversion time and peak memory on a ~1B-parameter synthetic LLaMA-2-shaped model, both directions.

  python benchmarks/convert_1b.py [--work /tmp/lwm_bench_convert] [--layers 16]

Builds a Hugging Face checkpoint (bf16, random weights, 2048 hidden, 16 heads, MLP 5504, 32000 ids:
0.94B parameters at 16 layers), then measures, each in a fresh process (wall time, peak RSS):
  from-hf  ours: `lwm-convert from-hf` (float32 Orbax, streamed leaf by leaf)
           peer: MaxText 0.2.5's `checkpoint_conversion.to_maxtext` (llama3.1-8b table with this
                 model's dimensions, lazy safetensors loading, float32, its default 16 simulated devices: with 1 its
                 save fails in MaxText 0.2.5, an Orbax v1 handler error for a numpy TrainState)
  to-hf    ours: `lwm-convert to-hf` (bf16 safetensors + tokenizer, streamed tensor by tensor)
           peer: MaxText 0.2.5's `checkpoint_conversion.to_huggingface` (same checkpoint)
and prints the peer/ours ratios. The peers use MaxText's Llama-3.1 hooks (interleaved RoPE), so
their outputs are not LLaMA-2-correct; they are measured for cost only.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import shutil
import subprocess
import sys
import time
from pathlib import Path

import ml_dtypes
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def dims(layers: int) -> dict[str, int]:
  return dict(E=2048, H=16, K=16, D=128, M=5504, L=layers, V=32000)


def overrides(d: dict[str, int]) -> list[str]:
  return [f"base_emb_dim={d['E']}", f"base_num_query_heads={d['H']}", f"base_num_kv_heads={d['K']}",
          f"head_dim={d['D']}", f"base_mlp_dim={d['M']}", f"base_num_decoder_layers={d['L']}",
          f"vocab_size={d['V']}", "max_target_length=4096"]


def make_hf(out: Path, d: dict[str, int]) -> int:
  """A synthetic HF checkpoint written tensor by tensor; returns its parameter count."""
  sys.path.insert(0, str(REPO))
  from conversion import names  # pylint: disable=import-outside-toplevel
  from conversion.safetensors_io import Entry, ShardedWriter  # pylint: disable=import-outside-toplevel
  from conversion.spec import ModelSpec  # pylint: disable=import-outside-toplevel

  spec = ModelSpec(**d, norm_eps=1e-5, rope_theta=1e4, max_positions=4096, tie_embeddings=False, scan_layers=True)
  shapes = names.hf_shapes(names.table(spec, True))
  out.mkdir(parents=True)
  writer = ShardedWriter(out, [Entry(n, s, np.dtype(ml_dtypes.bfloat16)) for n, s in shapes.items()], 2 * 1024**3)
  rng = np.random.default_rng(0)
  for name, shape in shapes.items():
    writer.write(name, (0.02 * rng.standard_normal(shape, np.float32)).astype(ml_dtypes.bfloat16))
  writer.close()
  config = spec.hf_config(dtype="bfloat16", bos_token_id=1, eos_token_id=2, pad_token_id=None)
  (out / "config.json").write_text(json.dumps(config, indent=2))
  return sum(int(np.prod(s)) for s in shapes.values())


def measure(cmd: list[str], log: Path) -> tuple[float, float]:
  """(seconds, peak RSS GiB) of `cmd` run in a wrapper process that waits only for it."""
  wrapper = ("import resource, subprocess, sys, time\n"
             "t = time.time(); rc = subprocess.call(sys.argv[1:])\n"
             "print(rc, time.time() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  with open(log, "w", encoding="utf-8") as f:
    out = subprocess.run([sys.executable, "-c", wrapper, *cmd], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=f,
                         text=True, check=True).stdout.strip().splitlines()[-1]
  rc, seconds, kib = out.split()
  if rc != "0":
    raise SystemExit(f"{cmd[:4]} failed (rc={rc}); see {log}")
  return float(seconds), int(kib) / 1024**2


def peer_to_maxtext(hf_dir: str, out: str, *args: str) -> None:
  """MaxText's to_maxtext with its llama3.1-8b entry re-pointed at this model's config (no download)."""
  from maxtext.checkpoint_conversion.utils import hf_model_configs  # pylint: disable=import-outside-toplevel
  from transformers import AutoConfig  # pylint: disable=import-outside-toplevel

  hf_model_configs.HF_MODEL_CONFIGS["llama3.1-8b"] = AutoConfig.from_pretrained(hf_dir)
  sys.argv = ["to_maxtext", base_yml(), "model_name=llama3.1-8b", "override_model_config=True", *args,
              f"base_output_directory={out}", "scan_layers=True", "hardware=cpu", "skip_jax_distributed_system=True",
              "weight_dtype=float32", f"--hf_model_path={hf_dir}", "--save_dtype=float32"]
  runpy.run_module("maxtext.checkpoint_conversion.to_maxtext", run_name="__main__")


def base_yml() -> str:
  import importlib.util  # pylint: disable=import-outside-toplevel
  return str(Path(importlib.util.find_spec("maxtext").origin).parent / "configs" / "base.yml")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--work", default="/tmp/lwm_bench_convert")
  parser.add_argument("--layers", type=int, default=16)
  parser.add_argument("--peer-to-maxtext", nargs="+", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.peer_to_maxtext:
    peer_to_maxtext(*args.peer_to_maxtext)
    return
  work = Path(args.work)
  shutil.rmtree(work, ignore_errors=True)
  work.mkdir(parents=True)
  d = dims(args.layers)
  t = time.time()
  n = make_hf(work / "hf", d)
  print(f"synthetic HF checkpoint: {n / 1e9:.2f}B parameters, bf16, made in {time.time() - t:.0f} s")
  over = overrides(d)
  lwm_convert = [sys.executable, "-m", "lwm_plugin.convert"]
  runs = {
      ("from-hf", "ours"): lwm_convert + ["from-hf", "--config", "tiny_cpu.yml", "--hf", str(work / "hf"), "--output",
                                          str(work / "ours_mt"), "--no-progress", *over],
      ("from-hf", "peer"): [sys.executable, __file__, "--peer-to-maxtext", str(work / "hf"), str(work / "peer_mt"),
                            *over],
      ("to-hf", "ours"): lwm_convert + ["to-hf", "--config", "tiny_cpu.yml", "--checkpoint",
                                        str(work / "ours_mt" / "0" / "items"), "--output", str(work / "ours_hf"),
                                        "--dtype", "bfloat16", "--no-progress", *over],
      ("to-hf", "peer"): [sys.executable, "-m", "maxtext.checkpoint_conversion.to_huggingface", base_yml(),
                          "model_name=llama3.1-8b", "override_model_config=True", *over,
                          f"load_parameters_path={work / 'ours_mt' / '0' / 'items'}",
                          f"base_output_directory={work / 'peer_hf'}", "scan_layers=True", "hardware=cpu",
                          "skip_jax_distributed_system=True", "weight_dtype=bfloat16",
                          "--override_model_architecture", f"--hf_model_path={work / 'ours_hf'}"],
  }
  results = {}
  for (direction, who), cmd in runs.items():
    results[direction, who] = measure(cmd, work / f"{direction}_{who}.log")
    print(f"{direction:8s} {who:5s} {results[direction, who][0]:7.1f} s  peak RSS {results[direction, who][1]:5.2f} GiB",
          flush=True)
  for direction in ("from-hf", "to-hf"):
    (ts, ms), (tp, mp) = results[direction, "ours"], results[direction, "peer"]
    print(f"{direction}: peer/ours time {tp / ts:.2f}x, peak memory {mp / ms:.2f}x")


if __name__ == "__main__":
  main()
