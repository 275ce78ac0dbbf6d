"""The report of `lwm-train STAGE.yml --check`: does a stage's train step fit its TPU pod?

`lwm_plugin.integration.aot` compiles the train step ahead of time for the stage's topology (MaxText's
`train_compile`, through libtpu, on any host) and fills a `CompileReport`; this module holds the
report, the HBM of each TPU generation and the formatting, without importing MaxText.

Per-chip memory is what the compiled program needs on one chip: its arguments (the sharded train
state and batch) plus its temporaries (activations kept for the backward pass, gradients,
workspace). A train step's outputs alias the donated arguments, so they add nothing; a prefill's new
KV cache does not (`output_bytes`). "Fits" is the TPU
compiler's own verdict: it refuses a program whose memory exceeds the HBM it can use (a little
under the chip's HBM); the report then gives the compiler's figures.

FLOPs per step are MaxText's model count (`calculate_tflops_training_per_device`: 6 x parameters x
tokens for the weights, plus causal attention), the basis of its MFU figures; XLA's own cost
analysis counts a scanned layer's loop body once, so it is not used.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

GIB = 2**30

# HBM per chip by TPU generation (the prefix of a MaxText topology name such as "v4-512").
HBM_BYTES_PER_CHIP = {"v4": 32 * GIB, "v5e": 16 * GIB, "v5litepod": 16 * GIB, "v5p": 95 * GIB, "v6e": 32 * GIB}

# The TPU compiler's out-of-memory messages (two forms seen from libtpu).
_OOM_PATTERNS = (
    re.compile(r"required for HLO temporaries \((?P<need>[\d.]+)(?P<nu>[KMGT])\) exceeds available HBM "
               r"\((?P<have>[\d.]+)(?P<hu>[KMGT])\)"),
    re.compile(r"Used (?P<need>[\d.]+)(?P<nu>[KMGT]) of (?P<have>[\d.]+)(?P<hu>[KMGT]) hbm"),
)
_UNIT = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def hbm_bytes(topology: str) -> int | None:
  """HBM of one chip of `topology` ("v4-512" -> 32 GiB); None for a generation not in the table."""
  return HBM_BYTES_PER_CHIP.get(topology.split("-")[0].lower())


def parse_oom(message: str) -> tuple[int, int] | None:
  """(bytes required, bytes available) from a TPU compiler out-of-memory message, or None."""
  for pattern in _OOM_PATTERNS:
    match = pattern.search(message)
    if match:
      return (int(float(match["need"]) * _UNIT[match["nu"]]), int(float(match["have"]) * _UNIT[match["hu"]]))
  return None


@dataclasses.dataclass(frozen=True)
class CompileReport:
  """What the ahead-of-time compile of one stage's train step says about one chip of its pod."""

  config_file: str
  stage: str
  topology: str
  chips: int
  mesh: dict[str, int]                 # mesh axes of size > 1
  attention: str
  ring_impl: str | None                # lwm_ring_impl as configured (ring stages)
  ring_hop: str | None                 # the kernels it compiled to for the target ("mosaic", "xla", ...)
  seq_len: int
  sequences_per_step: int
  compiled: bool                       # False: the compiler refused it (out of memory) or failed
  argument_bytes: int | None = None
  temp_bytes: int | None = None
  output_bytes: int | None = None      # outputs not aliased to a donated argument (a new KV cache); None: all are
  required_bytes: int | None = None    # from the compiler's out-of-memory message
  available_bytes: int | None = None   # the HBM the compiler can use, from the same message
  model_flops_per_step: float = 0.0
  collective_permutes: int | None = None
  tpu_custom_calls: int | None = None
  ring_kernels: int | None = None      # of those, the ring hop's Mosaic kernels
  compile_seconds: float = 0.0
  error: str | None = None

  @property
  def hbm(self) -> int | None:
    return hbm_bytes(self.topology)

  @property
  def per_chip_bytes(self) -> int | None:
    if self.argument_bytes is None or self.temp_bytes is None:
      return self.required_bytes
    return self.argument_bytes + self.temp_bytes + (self.output_bytes or 0)

  @property
  def fits(self) -> bool:
    return self.compiled and (self.hbm is None or (self.per_chip_bytes or 0) <= self.hbm)

  @property
  def tokens_per_step(self) -> int:
    return self.sequences_per_step * self.seq_len

  def to_json(self) -> str:
    data: dict[str, Any] = dataclasses.asdict(self)
    data.update(fits=self.fits, hbm_bytes=self.hbm, per_chip_bytes=self.per_chip_bytes,
                tokens_per_step=self.tokens_per_step)
    return json.dumps(data, sort_keys=True)

  def lines(self) -> list[str]:
    """The human-readable report."""
    mesh = " x ".join(f"{axis} {size}" for axis, size in self.mesh.items()) or "one device"
    attention = f"{self.attention} ({self.ring_impl}: {self.ring_hop} hop)" if self.ring_hop else self.attention
    flops = (f"; {self.model_flops_per_step:.3e} FLOPs (model), {self.model_flops_per_step / self.chips:.3e} per chip"
             if self.model_flops_per_step else "")
    out = [f"{self.config_file} (stage {self.stage or '?'}) on {self.topology}: {self.chips} chips, mesh {mesh}, "
           f"attention {attention}",
           f"  step: {self.sequences_per_step} sequences x {self.seq_len} tokens = {self.tokens_per_step:,} tokens{flops}"]
    hbm = f"{self.hbm / GIB:.2f} GiB HBM" if self.hbm else "HBM unknown for this generation"
    if self.compiled:
      outputs = f" + outputs {self.output_bytes / GIB:.2f} GiB" if self.output_bytes else ""
      out.append(f"  per chip: arguments {self.argument_bytes / GIB:.2f} GiB + temporaries {self.temp_bytes / GIB:.2f} "
                 f"GiB{outputs} = {self.per_chip_bytes / GIB:.2f} GiB of {hbm}: {'fits' if self.fits else 'DOES NOT FIT'}")
      ring = f" ({self.ring_kernels} ring hop kernels)" if self.ring_hop else ""
      hlo = (f"; HLO: {self.collective_permutes} collective-permute, {self.tpu_custom_calls} tpu_custom_call{ring}"
             if self.collective_permutes is not None else "")
      out.append(f"  compiled in {self.compile_seconds:.0f} s{hlo}")
    elif self.required_bytes is not None:
      out.append(f"  per chip: DOES NOT FIT: the compiler needs {self.required_bytes / GIB:.2f} GiB of temporaries, "
                 f"{self.available_bytes / GIB:.2f} GiB of HBM are available to it ({hbm})")
    else:
      out.append(f"  compile failed: {self.error}")
    return out


# The fit table of `make check-configs` (tools/check_stages.py): a header, then `table_row` per stage.
TABLE_HEADER = ("| stage | pod | mesh | attention | sequences x tokens | per chip GiB (args + temps) | fits 32 GiB | "
                "FLOPs / step | HLO permutes / tpu_custom_call | compile |",
                "|---|---|---|---|---|---|---|---|---|---|")


def table_row(r: dict[str, Any]) -> str:
  """One row of the fit table from a `CompileReport.to_json()` object (plus `wall_seconds`), or a failed stage's
  {config_file, error}."""
  name = os.path.basename(r["config_file"])
  if "stage" not in r:
    return f"| {name} | | | | | | | failed: {r['error']} | |"
  mesh = " x ".join(f"{k} {v}" for k, v in r["mesh"].items())
  attention = f"ring ({r['ring_impl']}: {r['ring_hop']} hop)" if r["ring_hop"] else r["attention"]
  if r["compiled"]:
    memory = f"{r['argument_bytes'] / GIB:.2f} + {r['temp_bytes'] / GIB:.2f} = {r['per_chip_bytes'] / GIB:.2f}"
    ring = f" ({r['ring_kernels']} ring)" if r["ring_hop"] else ""
    hlo = f"{r['collective_permutes']} / {r['tpu_custom_calls']}{ring}"
  else:
    memory = f"needs {r['required_bytes'] / GIB:.1f} (compiler: {r['available_bytes'] / GIB:.2f} available)"
    hlo = "-"
  return (f"| {name} | {r['topology']} | {mesh} | {attention} | {r['sequences_per_step']} x {r['seq_len']} | "
          f"{memory} | {'yes' if r['fits'] else '**no**'} | {r['model_flops_per_step']:.3e} | {hlo} | "
          f"{r['compile_seconds']:.0f} s |")
