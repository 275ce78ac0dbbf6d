"""`lwm-generate --check` (`lwm_plugin.integration.aot_decode`): prefill + one decode step compiled ahead of time
for a TPU pod (libtpu on a CPU host), LWM-Text-Chat-1M's model with 2 of its 32 layers at an 8K + 1K context on
v4-8 (context parallelism 4).

The compiled decode step's arguments hold the weights and the whole KV cache; the prefill's hold no prompt
K/V (it writes them). Their difference is the prompt cache one chip keeps: a quarter of it, so the cache is
split over the 4 chips (replicated it would be 4x). BENCHMARKS.md has LWM-7B at 1M tokens.
"""

from __future__ import annotations

import json

import pytest

from conftest import run_python

PROMPT, NEW, LAYERS, KV_HEADS, HEAD_DIM = 8192, 1024, 2, 32, 128

CODE = f"""
import sys
from lwm_plugin.generation import generate_cli
sys.exit(generate_cli.main(["--config", "lwm_text_chat_1m.yml", "--check", "--json", "--max-new-tokens", "{NEW}",
                            "run_name=check", "lwm_data_dir=/tmp", "compile_topology=v4-8",
                            "compile_topology_num_slices=1", "base_num_decoder_layers={LAYERS}",
                            "ici_tensor_parallelism=1", "ici_context_parallelism=4",
                            "max_target_length={PROMPT + NEW}", "per_device_batch_size=0.25"]))
"""


@pytest.mark.slow
def test_prefill_and_decode_step_compile_for_v4_8_with_the_cache_split_over_context():
  proc = run_python(CODE, devices=1, ALLOW_MULTIPLE_LIBTPU_LOAD="1")
  prefill, step = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
  for r in (prefill, step):
    assert r["compiled"] and r["fits"] and (r["topology"], r["chips"], r["mesh"]) == ("v4-8", 4, {"context": 4}), r
    assert r["seq_len"] == PROMPT and r["sequences_per_step"] == 1
  assert prefill["ring_hop"] == "mosaic" and prefill["ring_kernels"] > 0   # the ring's forward hop on TPU
  assert step["ring_kernels"] == 0 and step["collective_permutes"] == 0    # decode: statistics only, no ring
  prompt_cache = PROMPT * LAYERS * KV_HEADS * HEAD_DIM * 2 * 4             # K and V, float32, one sequence
  per_chip = step["argument_bytes"] - prefill["argument_bytes"]
  assert abs(per_chip - prompt_cache / 4) < 0.01 * prompt_cache / 4, (per_chip, prompt_cache)
  assert step["temp_bytes"] < prompt_cache / 4                              # no copy of the cache per step
