"""The KV-cache decoder (`lwm_plugin.integration.inference.CachedDecoder`) with `attention: ring` on 4 fake CPU
devices (context parallelism 4), against two independent references on the same random checkpoint:

* transformers' greedy `generate` (its own KV cache) on the Hugging Face export of the checkpoint;
* one train-mode forward of the whole sequence (the recompute path): its logits at every generated
  position, teacher-forced on the cached path's tokens, within 1e-4 relative, and the same argmax.

A batch of prompts of different lengths (1K to 4K tokens, plus a padding row) decodes 40 new tokens;
the model has GQA (4 query heads, 2 kv heads). The decode step's compiled HLO has no all-gather of
a cache-sized operand, and each device holds 1/4 of the cache.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, subprocess_env
from conversion import from_hf, to_hf
from conversion.spec import ModelSpec
from test_conversion_hf import hf_python

PROMPT_LENGTHS = (1000, 2500, 4000)
NEW_TOKENS = 40
PREFILL = 4096
SPEC = ModelSpec(E=64, H=4, K=2, D=16, M=128, L=2, V=512, norm_eps=1e-5, rope_theta=1e4, max_positions=8192,
                 tie_embeddings=False, scan_layers=True)
HF_CONFIG = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5, max_position_embeddings=8192,
                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
OVERRIDES = ["ici_context_parallelism=4", f"max_prefill_predict_length={PREFILL}",
             f"max_target_length={PREFILL + 64}", "per_device_batch_size=1", "matmul_precision=highest"]


def _run(cmd, what, env=None, timeout=900):
  proc = subprocess.run(cmd, cwd=REPO, env=env or subprocess_env(), capture_output=True, text=True, timeout=timeout,
                        check=False)
  if proc.returncode != 0:
    pytest.fail(f"{what} failed (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")


@pytest.mark.slow
def test_ring_kv_cache_decode_is_exact_against_transformers_and_the_full_forward(tmp_path):
  hf_py = hf_python()
  hf_side = str(REPO / "tests" / "helpers" / "hf_side.py")
  jobs = tmp_path / "make.json"
  jobs.write_text(json.dumps([{"op": "make", "out": str(tmp_path / "hf"), "config": HF_CONFIG, "seed": 3}]))
  _run([hf_py, hf_side, str(jobs)], "making the random transformers model")
  from_hf.convert(SPEC, tmp_path / "hf", tmp_path / "mt", vocab=None, progress=False)
  checkpoint = tmp_path / "mt" / "0" / "items"
  to_hf.convert(SPEC, checkpoint, tmp_path / "export", vocab=None, dtype="float32", progress=False)

  rng = np.random.default_rng(0)
  prompts = [rng.integers(1, SPEC.V, n).astype(np.int32) for n in PROMPT_LENGTHS]
  np.savez(tmp_path / "prompts.npz", **{f"p{i}": p for i, p in enumerate(prompts)})
  ours = {"config": "maxtext_configs/tiny_cpu_ring.yml", "overrides": OVERRIDES, "checkpoint": str(checkpoint),
          "prompts": str(tmp_path / "prompts.npz"), "max_new_tokens": NEW_TOKENS, "bucket": 1024,
          "out": str(tmp_path / "ours.npz")}
  (tmp_path / "ours.json").write_text(json.dumps(ours))
  hf_job = [{"op": "generate", "model": str(tmp_path / "export"), "prompts": [p.tolist() for p in prompts],
             "max_new_tokens": NEW_TOKENS, "out": str(tmp_path / "hf.json")}]
  (tmp_path / "hf_gen.json").write_text(json.dumps(hf_job))
  procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for cmd, env in (([sys.executable, str(REPO / "tests/helpers/cached_decode.py"), str(tmp_path / "ours.json")],
                             subprocess_env(4)),
                            ([hf_py, hf_side, str(tmp_path / "hf_gen.json")], subprocess_env()))]
  for proc in procs:
    out, err = proc.communicate(timeout=900)
    if proc.returncode:
      pytest.fail(f"{proc.args} failed (rc={proc.returncode}):\n{out[-3000:]}\n{err[-6000:]}")

  got = np.load(tmp_path / "ours.npz")
  hf_tokens = json.loads((tmp_path / "hf.json").read_text())
  for i, prompt in enumerate(prompts):
    tokens, cached, full = got[f"tokens_{i}"], got[f"cached_{i}"], got[f"full_{i}"]
    assert cached.shape == full.shape == (NEW_TOKENS, SPEC.V), (cached.shape, full.shape)
    np.testing.assert_allclose(cached, full, rtol=1e-4, atol=1e-4 * np.abs(full).max(),
                               err_msg=f"prompt {i} ({len(prompt)} tokens)")
    np.testing.assert_array_equal(tokens, full.argmax(-1), err_msg=f"prompt {i}: full-forward greedy differs")
    np.testing.assert_array_equal(tokens, hf_tokens[i], err_msg=f"prompt {i}: transformers' greedy differs")
    assert len(set(tokens.tolist())) > 3, tokens  # a degenerate model would make equal tokens a weak check
    np.testing.assert_array_equal(got[f"greedy_{i}"], tokens)
  first = got["tokens_0"].tolist().index(got["tokens_0"][5])
  np.testing.assert_array_equal(got["greedy_stopped"], got["tokens_0"][:first + 1])  # stops after the stop id

  # Memory and traffic: the cache is split over the 4 devices, and no all-gather moves a cache-sized operand.
  layers, length, kv_heads, batch, head_dim = got["prefill_cache_shape"]
  assert length == PREFILL and tuple(got["prefill_cache_shard"]) == (layers, PREFILL // 4, kv_heads, batch, head_dim)
  for program in ("", "prefill_"):
    gathered = [s for s in got[f"{program}all_gather_shapes"].tolist() if s]
    assert gathered  # the weights are gathered (fsdp over the context axis): the parse sees all-gathers
    too_big = [s for s in gathered if any(int(d) >= PREFILL // 4 for d in s[s.index("[") + 1:s.index("]")].split(","))]
    assert not too_big, f"{program or 'decode step '}all-gathers cache-sized operands: {too_big} (all: {gathered})"
  assert got["prefill_collective_permutes"] > 0  # the prefill is the ring: K/V blocks hop between the devices
