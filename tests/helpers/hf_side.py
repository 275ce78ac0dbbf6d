"""The Hugging Face reference for the converter tests; runs in .venv-hf (Python 3.11, torch CPU).

Usage: python hf_side.py JOBS.json, a list of jobs run in one process (torch imports once):
  {"op": "make", "out": DIR, "config": {LlamaConfig kwargs}, "seed": 0, "max_shard_size": "200KB",
   "bfloat16": false, "bin_out": DIR (optional)}
      a random LlamaForCausalLM saved with save_pretrained (weights std 0.2 and random norm scales,
      so a misplaced, unscaled or unpermuted tensor changes the logits by far more than 1e-4);
      `bin_out` also gets the same weights as PyTorch files, the older Hub layout
      (pytorch_model-0000k-of-00002.bin + pytorch_model.bin.index.json, written with torch.save);
  {"op": "logits", "model": DIR, "tokens": NPY, "out": NPY, "perturbed_out": NPY (optional)}
      float32 logits of `tokens` [B, S]; `perturbed_out` gets the logits after permuting q/k rows
      to the interleaved RoPE layout, the mistake a converter could make (shows the test is sensitive);
  {"op": "generate", "model": DIR, "prompts": [[ids...], ...], "max_new_tokens": N, "out": JSON}
      transformers' greedy `generate` (do_sample=False, its KV cache, float32), one prompt at a time,
      no stop token: the new ids of each prompt as a JSON list of lists.
This file never imports the project (it runs in another interpreter).
"""

import json
import os
import sys

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM


def make(job):
  torch.manual_seed(job.get("seed", 0))
  config = LlamaConfig(**job["config"], initializer_range=0.2)
  model = LlamaForCausalLM(config).to(torch.float32)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.uniform_(0.5, 1.5)
  if job.get("bfloat16"):
    model = model.to(torch.bfloat16)
  model.save_pretrained(job["out"], max_shard_size=job.get("max_shard_size", "5GB"))
  if job.get("bin_out"):
    save_bin(model, job["bin_out"])


def save_bin(model, out):
  """transformers 5 always writes safetensors; the .bin layout it used to write, by hand."""
  os.makedirs(out)
  model.config.save_pretrained(out)
  state = model.state_dict()
  names = list(state)
  shards = [names[:len(names) // 2], names[len(names) // 2:]]
  weight_map = {}
  for k, shard in enumerate(shards):
    file = f"pytorch_model-{k + 1:05d}-of-{len(shards):05d}.bin"
    torch.save({n: state[n].contiguous() for n in shard}, os.path.join(out, file))
    weight_map.update({n: file for n in shard})
  with open(os.path.join(out, "pytorch_model.bin.index.json"), "w", encoding="utf-8") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)


def _to_interleaved(w, heads):
  rows, cols = w.shape
  return w.reshape(heads, 2, rows // heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def logits(job):
  model = LlamaForCausalLM.from_pretrained(job["model"], dtype=torch.float32)
  model.eval()
  tokens = torch.from_numpy(np.load(job["tokens"]).astype(np.int64))
  with torch.no_grad():
    np.save(job["out"], model(tokens).logits.float().numpy())
    if job.get("perturbed_out"):
      cfg = model.config
      for layer in model.model.layers:
        attn = layer.self_attn
        attn.q_proj.weight.copy_(_to_interleaved(attn.q_proj.weight, cfg.num_attention_heads))
        attn.k_proj.weight.copy_(_to_interleaved(attn.k_proj.weight, cfg.num_key_value_heads))
      np.save(job["perturbed_out"], model(tokens).logits.float().numpy())


def generate(job):
  model = LlamaForCausalLM.from_pretrained(job["model"], dtype=torch.float32)
  model.eval()
  outs = []
  with torch.no_grad():
    for prompt in job["prompts"]:
      ids = torch.tensor([prompt], dtype=torch.int64)
      new = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=job["max_new_tokens"],
                           min_new_tokens=job["max_new_tokens"], do_sample=False, eos_token_id=None, pad_token_id=0)
      outs.append(new[0, len(prompt):].tolist())
  with open(job["out"], "w", encoding="utf-8") as f:
    json.dump(outs, f)


def main():
  with open(sys.argv[1], encoding="utf-8") as f:
    jobs = json.load(f)
  for job in jobs:
    {"make": make, "logits": logits, "generate": generate}[job["op"]](job)
    print("done", job["op"], job.get("out"), flush=True)


if __name__ == "__main__":
  main()
