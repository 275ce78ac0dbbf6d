"""The diffusers reference for the VQGAN tests and benchmark; runs in .venv-hf (Python 3.11, torch CPU).

Usage: python diffusers_side.py JOBS.json, a list of jobs run in one process (torch imports once):
  {"op": "encode", "model": DIR, "pixels": NPY, "out": NPY}
      int32 codes [B, h, w] of float32 NHWC pixels [B, H, W, C] (VQModel.encode, then its quantizer);
  {"op": "decode", "model": DIR, "codes": NPY, "out": NPY}
      float32 NHWC pixels of codes [B, h, w] (VQModel.decode with force_not_quantize=True: the
      codebook lookup of `lookup_from_codebook`), clipped to [-1, 1] as LWM does;
  {"op": "serve", "model": DIR, "batch": B, "size": H, "threads": T}
      for the benchmark: prepares a batch of random pixels and its codes (torch CPU,
      `torch.set_num_threads(T)`), prints "ready", then for each line "encode" or "decode" on stdin
      runs that once and prints its wall seconds (so the caller can interleave its own timings).
DIR is loaded with `VQModel.from_pretrained`, then its safetensors are loaded again with
`load_state_dict(strict=True)`, so a missing, extra or misshapen tensor fails here, by diffusers' own rules.
This file never imports the project (it runs in another interpreter).
"""

import json
import os
import sys
import time

import numpy as np
import torch
from diffusers import VQModel
from safetensors.torch import load_file

_models = {}


def model(path):
  if path not in _models:
    m = VQModel.from_pretrained(path).to(torch.float32).eval()
    m.load_state_dict(load_file(os.path.join(path, "diffusion_pytorch_model.safetensors")), strict=True)
    _models[path] = m
  return _models[path]


@torch.no_grad()
def encode(m, pixels_BxHxWxC):
  x = torch.from_numpy(pixels_BxHxWxC).permute(0, 3, 1, 2).contiguous()
  h = m.encode(x).latents
  _, _, (_, _, indices) = m.quantize(h)
  return indices.reshape(h.shape[0], h.shape[2], h.shape[3]).to(torch.int32).numpy()


@torch.no_grad()
def decode(m, codes_Bxhxw):
  b, h, w = codes_Bxhxw.shape
  codes = torch.from_numpy(codes_Bxhxw.astype(np.int64)).reshape(-1)
  out = m.decode(codes, force_not_quantize=True, shape=(b, h, w, m.config.vq_embed_dim or m.config.latent_channels))
  return out.sample.clamp(-1, 1).permute(0, 2, 3, 1).contiguous().numpy()


def serve(m, job):
  torch.set_num_threads(job["threads"])
  pixels = np.random.default_rng(0).uniform(-1, 1, (job["batch"], job["size"], job["size"], 3)).astype(np.float32)
  args = {"encode": (encode, pixels), "decode": (decode, encode(m, pixels))}
  print("ready", flush=True)
  for line in sys.stdin:
    fn, arg = args[line.strip()]
    start = time.perf_counter()
    fn(m, arg)
    print(time.perf_counter() - start, flush=True)


def main():
  with open(sys.argv[1]) as f:
    jobs = json.load(f)
  for job in jobs:
    m = model(job["model"])
    if job["op"] == "encode":
      np.save(job["out"], encode(m, np.load(job["pixels"])))
    elif job["op"] == "decode":
      np.save(job["out"], decode(m, np.load(job["codes"])))
    elif job["op"] == "serve":
      serve(m, job)
    else:
      raise ValueError(f"unknown op {job['op']!r}")


if __name__ == "__main__":
  main()
