"""The Pallas ring on TPU without a TPU: ahead-of-time compiles for TPU topologies through libtpu.

One subprocess (libtpu loads once; `helpers/tpu_aot.py`) compiles
  * fwd+bwd of the ring with impl="pallas" on v4-8 (4 chips) at 16K and 32K tokens per device,
  * fwd+bwd with impl="auto" inside a shard_map with check_vma=True on v5p-16 (8 chips),
  * MaxText's train step of the tiny model with `attention: ring`, `lwm_ring_impl: pallas`
    (`train_compile`, compile_topology=v4-8),
and the tests read the compiled HLO: the Mosaic kernels (`tpu_custom_call`) of all three hop kernels,
the ring's collective-permutes, and per-device memory (printed; recorded in BENCHMARKS.md).
"""

from __future__ import annotations

import json

import pytest

from conftest import run_python

_CODE = """
import json, sys
sys.path.insert(0, "tests")
from helpers import tpu_aot
from maxtext_configs import config_path

v4, v5p = tpu_aot.topology_devices("v4-8"), tpu_aot.topology_devices("v5p-16")
report = {
    "v4_16k": tpu_aot.ring_fwd_bwd(v4, local_length=16384),
    "v4_32k": tpu_aot.ring_fwd_bwd(v4, local_length=32768),
    "v5p_auto_check_vma": tpu_aot.ring_fwd_bwd(v5p, local_length=2048, impl="auto", check_vma=True),
    "train_step": tpu_aot.train_step([
        "train_compile", str(config_path("tiny_cpu_ring.yml")), "compile_topology=v4-8",
        "compile_topology_num_slices=1", "hardware=tpu", "dtype=bfloat16", "lwm_ring_impl=pallas",
        "lwm_ring_block_q=0", "lwm_ring_block_kv=0", "max_target_length=1024", "per_device_batch_size=1"]),
}
print("REPORT=" + json.dumps(report))
"""
KERNELS = ["ring_hop_dkv", "ring_hop_dq", "ring_hop_fwd"]


@pytest.fixture(scope="module")
def report():
  proc = run_python(_CODE, devices=1, ALLOW_MULTIPLE_LIBTPU_LOAD="1")  # libtpu's lock may be held by another job
  line = [x for x in proc.stdout.splitlines() if x.startswith("REPORT=")][-1]
  found = json.loads(line[len("REPORT="):])
  for name, entry in found.items():
    print(f"{name}: per-device memory MiB {entry['memory_mib']}, "
          f"{entry['tpu_custom_calls']} Mosaic kernels, {entry['collective_permutes']} collective-permutes")
  return found


@pytest.mark.slow
def test_ring_compiles_to_mosaic_kernels_and_collective_permutes_on_v4(report):
  for key in ("v4_16k", "v4_32k"):
    entry = report[key]
    assert (entry["device_kind"], entry["devices"]) == ("TPU v4", 4)
    assert entry["kernel_names"] == KERNELS
    assert entry["tpu_custom_calls"] == 12  # 4 hops: forward, and dq + dk/dv in the backward
    assert entry["collective_permutes"] == 12  # 3 transfers x (K/V + metadata) fwd, + dK/dV and home trip bwd


@pytest.mark.slow
def test_per_device_memory_is_linear_in_the_local_length(report):
  short, long = report["v4_16k"]["memory_mib"], report["v4_32k"]["memory_mib"]
  assert long["argument"] == pytest.approx(2 * short["argument"], rel=0.01)
  assert long["temp"] <= 2.1 * short["temp"], (short, long)  # no [L, L] buffer anywhere


@pytest.mark.slow
def test_auto_picks_the_mosaic_kernels_for_tpu_inside_a_checked_shard_map(report):
  entry = report["v5p_auto_check_vma"]
  assert (entry["device_kind"], entry["devices"]) == ("TPU v5", 8)
  assert entry["kernel_names"] == KERNELS and entry["tpu_custom_calls"] == 12
  # The ring's loop survives compilation: 2 hops per iteration, K/V + metadata (+ dK/dV backward).
  assert [loop["collective-permute"] for loop in entry["ring_loops"]] == [4, 6]


@pytest.mark.slow
def test_maxtext_train_step_with_ring_attention_compiles_for_v4(report):
  entry = report["train_step"]
  assert entry["kernel_names"] == KERNELS
  assert entry["tpu_custom_calls"] >= 12 and entry["collective_permutes"] >= 12
