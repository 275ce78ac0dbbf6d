"""The KV-cache decoder against the full forward, in a process of its own (fake CPU devices).

Usage: python cached_decode.py JOBS.json, a list of (one model each, run in turn)
  {"config": YML, "overrides": [...], "checkpoint": ".../0/items", "prompts": NPZ (arrays p0, p1, ...),
   "max_new_tokens": N, "bucket": B, "out": NPZ}
Writes to `out`: for each prompt i, `tokens_i` (greedy new ids through `CachedDecoder`), `cached_i`
(the float32 logits the cache path returned before each new id, [N, V]) and `full_i` (the logits
of one train-mode forward over prompt + new ids, at the same positions: the teacher-forced
reference, `GreedyDecoder.logits`, whose argmax is the full-forward path's greedy choice at every
step given the same prefix); `greedy_i`, the `greedy` helper's ids, and `greedy_stopped`, its ids
for prompt 0 with the 6th new id as a stop id; and the decode step's compiled HLO collectives and cache layout:
`all_gather_shapes` (one string per all-gather result), `prefill_cache_shape`, `prefill_cache_shard`; and
the prefill's: `prefill_all_gather_shapes`, `prefill_collective_permutes` (the ring's K/V hops).
"""

import json
import re
import sys

import numpy as np

from lwm_plugin import integration
from lwm_plugin.generation.loop import generate_text
from lwm_plugin.integration.inference import CachedDecoder, GreedyDecoder, load_config


def _cache_leaf(cache, name):
  found = []

  def visit(tree):
    for key, value in tree.items():
      if key == name:
        found.append(value)
      elif isinstance(value, dict):
        visit(value)

  visit(cache)
  return found[0]


def _gathered(hlo: str) -> list[str]:
  """The result shape of every all-gather in a compiled HLO text ("" if none)."""
  return [m.group(1) for m in re.finditer(r"= (\S+) all-gather\(", hlo)] or [""]


def decode(job):
  config = load_config(["cached_decode", job["config"], "run_name=cached_decode", "enable_checkpointing=false",
                        f"load_parameters_path={job['checkpoint']}", *job["overrides"]])
  with np.load(job["prompts"]) as z:
    prompts = [z[f"p{i}"] for i in range(len(z.files))]
  n_new = job["max_new_tokens"]
  decoder = CachedDecoder(config, bucket=job["bucket"])
  state = decoder.prefill(prompts)
  key = _cache_leaf(state.cache, "cached_prefill_key")
  out = {"prefill_cache_shape": np.array(key.shape), "prefill_cache_shard": np.array(key.addressable_shards[0].data.shape)}
  programs = decoder._programs  # pylint: disable=protected-access
  with decoder._context():  # pylint: disable=protected-access
    hlo = decoder._step.lower(programs.params, programs.rest, state.cache,  # pylint: disable=protected-access
                              np.zeros(decoder.batch_multiple, np.int32), state.lengths_B).compile().as_text()
    tokens = np.zeros((decoder.batch_multiple, key.shape[1]), np.int32)
    prefill_hlo = decoder._prefill.lower(programs.params, programs.rest, programs.empty_cache, tokens, tokens,  # pylint: disable=protected-access
                                         np.zeros(decoder.batch_multiple, np.int32)).compile().as_text()
  out["all_gather_shapes"] = np.array(_gathered(hlo))
  out["prefill_all_gather_shapes"] = np.array(_gathered(prefill_hlo))
  out["prefill_collective_permutes"] = np.array(len(re.findall(r"collective-permute(?:-start)?\(", prefill_hlo)))
  new, cached = [[] for _ in prompts], [[] for _ in prompts]
  for t in range(n_new):
    nxt = state.logits_BxV.argmax(-1).astype(np.int32)
    for i in range(len(prompts)):
      new[i].append(int(nxt[i]))
      cached[i].append(state.logits_BxV[i])
    if t < n_new - 1:
      state = decoder.step(state, nxt[:len(prompts)])
  stop = new[0][5]
  out["greedy_stopped"] = generate_text(decoder, prompts[:1], max_new_tokens=n_new, stop_ids=(stop,))[0].new_ids
  for i, gen in enumerate(generate_text(decoder, prompts, max_new_tokens=n_new)):
    out[f"greedy_{i}"] = gen.new_ids
  reference = GreedyDecoder(config, bucket=job["bucket"])
  full = reference.logits([np.concatenate([p, np.asarray(n[:-1], np.int32)]) for p, n in zip(prompts, new)])
  for i, p in enumerate(prompts):
    out[f"tokens_{i}"] = np.asarray(new[i], np.int32)
    out[f"cached_{i}"] = np.stack(cached[i])
    out[f"full_{i}"] = full[i][len(p) - 1:]
  np.savez(job["out"], **out)


def main():
  integration.install()
  with open(sys.argv[1], encoding="utf-8") as f:
    for job in json.load(f):
      decode(job)


if __name__ == "__main__":
  main()
