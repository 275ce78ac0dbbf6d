"""`lwm-train STAGE.yml --check`: the report, and real AOT compiles of paper stages for their TPU pods.

CI compiles the smallest text stage in full (LWM-Text-32K, 32 layers) and the largest, LWM-Text-1M
(ring attention over a context axis of 4), with 2 of its 32 layers (`base_num_decoder_layers=2`):
same mesh, sequence length, batch and attention (the Mosaic ring hop), less memory for the saved
layer inputs. Together about 2.5-3.5 minutes on 2 shared cores. The full table of all 14 stages
(`make check-configs`) is in docs/stages.md.
"""

from __future__ import annotations

import json

import pytest

from conftest import run_lwm_train
from lwm_plugin.integration.aot_report import GIB, CompileReport, hbm_bytes, parse_oom

E, M, H_D, V = 4096, 11008, 4096, 32000   # LLaMA-2 7B


def _model_flops(layers: int, seq_len: int, tokens: int) -> float:
  """6 x (non-embedding parameters) x tokens + causal attention (6 x L x S x E per token), fwd + bwd."""
  params = layers * (4 * E * H_D + 3 * E * M) + E * V   # attention, MLP, output head
  return 6 * params * tokens + 6 * layers * seq_len * E * tokens


def test_parse_oom_reads_both_compiler_messages():
  new = ("RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: Ran out of memory on HBM, the total memory required for HLO "
         "temporaries (655.58G) exceeds available HBM (30.75G). HLO module: jit_train_step.")
  assert parse_oom(new) == (int(655.58 * GIB), int(30.75 * GIB))
  old = "RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm. Used 141.80G of 30.75G hbm. Exceeded hbm capacity"
  assert parse_oom(old) == (int(141.8 * GIB), int(30.75 * GIB))
  assert parse_oom("INTERNAL: something else") is None


def test_report_fits_only_when_compiled_within_hbm():
  assert hbm_bytes("v4-512") == hbm_bytes("v4-1024") == 32 * GIB and hbm_bytes("v5p-128") == 95 * GIB
  assert hbm_bytes("tpu7x-64") is None
  base = dict(config_file="s.yml", stage="s", topology="v4-512", chips=256, mesh={"fsdp": 64, "tensor": 4},
              attention="flash", ring_impl=None, ring_hop=None, seq_len=32768, sequences_per_step=128, model_flops_per_step=2.7e17)
  ok = CompileReport(**base, compiled=True, argument_bytes=GIB, temp_bytes=20 * GIB, collective_permutes=3,
                     tpu_custom_calls=4, compile_seconds=40)
  assert ok.fits and ok.per_chip_bytes == 21 * GIB and ok.tokens_per_step == 2**22
  assert "= 21.00 GiB of 32.00 GiB HBM: fits" in "\n".join(ok.lines())
  assert json.loads(ok.to_json())["fits"] is True
  over = CompileReport(**base, compiled=True, argument_bytes=GIB, temp_bytes=32 * GIB)
  assert not over.fits and "DOES NOT FIT" in "\n".join(over.lines())
  ring = CompileReport(**{**base, "attention": "ring", "ring_impl": "auto", "ring_hop": "mosaic"}, compiled=True,
                       argument_bytes=GIB, temp_bytes=GIB, collective_permutes=78, tpu_custom_calls=16, ring_kernels=16)
  assert "attention ring (auto: mosaic hop)" in ring.lines()[0]
  assert "78 collective-permute, 16 tpu_custom_call (16 ring hop kernels)" in ring.lines()[3]
  refused = CompileReport(**base, compiled=False, required_bytes=655 * GIB, available_bytes=int(30.75 * GIB))
  assert not refused.fits and "needs 655.00 GiB of temporaries, 30.75 GiB of HBM" in "\n".join(refused.lines())


def _check(args: list[str], tmp_path) -> dict:
  proc = run_lwm_train([*args, "--check", "--json"], cwd=tmp_path, timeout=1500)
  assert proc.returncode in (0, 1), proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_text_32k_compiles_for_v4_512_and_fits(tmp_path):
  r = _check(["lwm_text_32k.yml"], tmp_path)
  assert (r["topology"], r["chips"], r["mesh"]) == ("v4-512", 256, {"fsdp": 64, "tensor": 4})
  assert r["tokens_per_step"] == 2**22 and r["attention"] == "flash" and r["ring_hop"] is None
  assert r["compiled"] and r["fits"] and r["per_chip_bytes"] == r["argument_bytes"] + r["temp_bytes"] < 32 * GIB
  assert r["tpu_custom_calls"] > 0   # MaxText's fused (splash) attention kernels
  assert r["model_flops_per_step"] == pytest.approx(_model_flops(32, 2**15, 2**22), rel=1e-3)


@pytest.mark.slow
def test_text_1m_with_two_layers_compiles_the_ring_for_v4_512_and_fits(tmp_path):
  r = _check(["lwm_text_1m.yml", "base_num_decoder_layers=2"], tmp_path)
  assert (r["chips"], r["mesh"]) == (256, {"fsdp": 4, "context": 4, "tensor": 16})
  assert r["seq_len"] == 2**20 and r["sequences_per_step"] == 4
  # lwm_ring_impl: auto compiles the Mosaic kernels for the TPU target although this host is a CPU.
  assert (r["attention"], r["ring_impl"], r["ring_hop"]) == ("ring", "auto", "mosaic")
  assert r["compiled"] and r["fits"], r
  assert r["collective_permutes"] > 0   # the ring's K/V hops
  assert r["ring_kernels"] == r["tpu_custom_calls"] > 0   # ring_hop_fwd, ring_hop_dq, ring_hop_dkv
  assert r["model_flops_per_step"] == pytest.approx(_model_flops(2, 2**20, 2**22), rel=1e-3)
