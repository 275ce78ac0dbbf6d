"""The KV-cache decoder (`lwm_plugin.integration.inference.CachedDecoder`) with `attention: ring` on 4 fake CPU
devices (context parallelism 4), against two independent references on the same random checkpoint:

* transformers' greedy `generate` (its own KV cache) on the Hugging Face export of the checkpoint;
* one train-mode forward of the whole sequence (the recompute path): its logits at every generated
  position, teacher-forced on the cached path's tokens, within 1e-4 relative, and the same argmax.

Two models: GQA (4 query / 2 kv heads) on a batch of prompts of 1K to 4K tokens plus a padding row,
and MHA (4 / 4) on shorter prompts; 40 new tokens each. The compiled decode step and prefill have no
all-gather of a cache-sized operand (the prefill is the ring: collective-permutes), each device holds
1/4 of the cache, and the generation loop's greedy decoding gives the same ids and stops after a stop id.
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

NEW_TOKENS = 40
MODELS = {  # name -> (kv heads, prompt lengths, max_prefill_predict_length, bucket, per_device_batch_size)
    "gqa": (2, (1000, 2500, 4000), 4096, 1024, 1),      # 4 rows: 3 prompts + a padding row
    "mha": (4, (300, 900), 1024, 256, 0.5),             # 2 rows
}


def _spec(kv_heads: int) -> ModelSpec:
  return ModelSpec(E=64, H=4, K=kv_heads, D=16, M=128, L=2, V=512, norm_eps=1e-5, rope_theta=1e4, max_positions=8192,
                   tie_embeddings=False, scan_layers=True)


def _hf_config(kv_heads: int) -> dict:
  return dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=kv_heads, head_dim=16, rms_norm_eps=1e-5, max_position_embeddings=8192,
              rope_parameters={"rope_type": "default", "rope_theta": 10000.0})


def _overrides(kv_heads: int, prefill: int, batch: float) -> list[str]:
  return [f"base_num_kv_heads={kv_heads}", "ici_context_parallelism=4", f"max_prefill_predict_length={prefill}",
          f"max_target_length={prefill + 64}", f"per_device_batch_size={batch}", "matmul_precision=highest"]


def _run_all(cmds):
  procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for cmd, env in cmds]
  for proc in procs:
    out, err = proc.communicate(timeout=900)
    if proc.returncode:
      pytest.fail(f"{proc.args} failed (rc={proc.returncode}):\n{out[-3000:]}\n{err[-6000:]}")


def _check(got, hf_tokens, prompts, prefill: int) -> None:
  for i, prompt in enumerate(prompts):
    tokens, cached, full = got[f"tokens_{i}"], got[f"cached_{i}"], got[f"full_{i}"]
    assert cached.shape == full.shape == (NEW_TOKENS, 512), (cached.shape, full.shape)
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
  assert length == prefill and tuple(got["prefill_cache_shard"]) == (layers, prefill // 4, kv_heads, batch, head_dim)
  for program in ("", "prefill_"):
    gathered = [s for s in got[f"{program}all_gather_shapes"].tolist() if s]
    assert gathered  # the weights are gathered (fsdp over the context axis): the parse sees all-gathers
    # gathering K/V over the context axis yields floats of the whole length (no weight has a dimension that long;
    # MaxText may gather the prompt's int32 token ids)
    whole = [s for s in gathered if s.startswith(("f", "bf")) and
             prefill in [int(d) for d in s[s.index("[") + 1:s.index("]")].split(",")]]
    assert not whole, f"{program or 'decode step '}all-gathers whole K/V: {whole} (all: {gathered})"
  assert got["prefill_collective_permutes"] > 0  # the prefill is the ring: K/V blocks hop between the devices


@pytest.mark.slow
def test_ring_kv_cache_decode_is_exact_against_transformers_and_the_full_forward(tmp_path):
  hf_py = hf_python()
  hf_side = str(REPO / "tests" / "helpers" / "hf_side.py")
  make = [{"op": "make", "out": str(tmp_path / f"{name}.hf"), "config": _hf_config(k), "seed": 3}
          for name, (k, *_) in MODELS.items()]
  (tmp_path / "make.json").write_text(json.dumps(make))
  _run_all([([hf_py, hf_side, str(tmp_path / "make.json")], subprocess_env())])

  rng = np.random.default_rng(0)
  ours, hf_jobs, prompts = [], [], {}
  for name, (k, lengths, prefill, bucket, batch) in MODELS.items():
    from_hf.convert(_spec(k), tmp_path / f"{name}.hf", tmp_path / f"{name}.mt", vocab=None, progress=False)
    checkpoint = tmp_path / f"{name}.mt" / "0" / "items"
    to_hf.convert(_spec(k), checkpoint, tmp_path / f"{name}.export", vocab=None, dtype="float32", progress=False)
    prompts[name] = [rng.integers(1, 512, n).astype(np.int32) for n in lengths]
    np.savez(tmp_path / f"{name}.prompts.npz", **{f"p{i}": p for i, p in enumerate(prompts[name])})
    ours.append({"config": "maxtext_configs/tiny_cpu_ring.yml", "overrides": _overrides(k, prefill, batch),
                 "checkpoint": str(checkpoint), "prompts": str(tmp_path / f"{name}.prompts.npz"),
                 "max_new_tokens": NEW_TOKENS, "bucket": bucket, "out": str(tmp_path / f"{name}.ours.npz")})
    hf_jobs.append({"op": "generate", "model": str(tmp_path / f"{name}.export"),
                    "prompts": [p.tolist() for p in prompts[name]], "max_new_tokens": NEW_TOKENS,
                    "out": str(tmp_path / f"{name}.hf.json")})
  (tmp_path / "ours.json").write_text(json.dumps(ours))
  (tmp_path / "hf_gen.json").write_text(json.dumps(hf_jobs))
  _run_all([([sys.executable, str(REPO / "tests/helpers/cached_decode.py"), str(tmp_path / "ours.json")],
             subprocess_env(4)),
            ([hf_py, hf_side, str(tmp_path / "hf_gen.json")], subprocess_env())])

  for name, (_, _, prefill, _, _) in MODELS.items():
    _check(np.load(tmp_path / f"{name}.ours.npz"), json.loads((tmp_path / f"{name}.hf.json").read_text()),
           prompts[name], prefill)
