"""`lwm-generate STAGE.yml --check`: do prefill and one decode step at the stage's full context fit its TPU pod?

Compiles ahead of time, for `compile_topology` (through libtpu, on any host, as `lwm-train --check`
does), the two programs `CachedDecoder` runs (`inference.DecodePrograms`): the prefill of
`max_prefill_predict_length` tokens into MaxText's KV cache and one decode step over the full cache,
on an abstract model (no weights are read). Each gives an `aot_report.CompileReport`: per-chip
arguments (the sharded weights and the caches) plus temporaries, against the chip's HBM, and the HLO
counts (the prefill must hold the ring's Mosaic hop kernels on TPU; the decode step has no ring hop);
a program the TPU compiler refuses is reported with the compiler's own figures.

The prefill's cache argument is donated, as the decode step's is; outputs not aliased to a donated
argument (the prefill's new prompt cache: it reads none) count too, so a cache is counted once.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax.linen import partitioning as nn_partitioning
from jax.sharding import NamedSharding, PartitionSpec as P
from maxtext.common.common_types import MODEL_MODE_AUTOREGRESSIVE
from maxtext.trainers.pre_train import train_compile
from maxtext.utils import model_creation_utils

from lwm_plugin import integration
from lwm_plugin.integration.aot import check_ring_kernels, hlo_counts
from lwm_plugin.integration.aot_report import CompileReport, parse_oom
from lwm_plugin.integration.inference import DecodePrograms, check_sizes, load_config
from lwm_plugin.kernels.ring import kernels_for



def _report(base: dict[str, Any], stage: str, compile_fn, *, ring_hop: str | None) -> CompileReport:
  """The report of one program; `ring_hop`: the hop kernels it must contain (the prefill's ring), else none."""
  start = time.perf_counter()
  try:
    compiled = compile_fn()
  except jax.errors.JaxRuntimeError as e:
    message = str(e)
    oom = parse_oom(message) if "RESOURCE_EXHAUSTED" in message else None
    if oom is None:
      raise
    return CompileReport(**base, stage=stage, compiled=False, required_bytes=oom[0], available_bytes=oom[1],
                         compile_seconds=time.perf_counter() - start, error=message.splitlines()[0])
  memory = compiled.memory_analysis()
  counts = hlo_counts(compiled.as_text())
  check_ring_kernels(ring_hop, counts["ring_kernels"])
  return CompileReport(**base, stage=stage, compiled=True, argument_bytes=int(memory.argument_size_in_bytes),
                       temp_bytes=int(memory.temp_size_in_bytes),
                       output_bytes=int(memory.output_size_in_bytes - memory.alias_size_in_bytes), **counts,
                       compile_seconds=time.perf_counter() - start)


def compile_decode(config: Any, config_file: str) -> tuple[CompileReport, CompileReport]:
  """(prefill, decode step) reports for `config` (compile_topology set); the seam must be installed."""
  if not config.compile_topology:
    raise ValueError("--check needs compile_topology=... (a TPU topology such as v4-256)")
  prompt, _ = check_sizes(config)
  mesh = train_compile.get_topology_mesh(config)
  with nn_partitioning.axis_rules(config.logical_axis_rules):
    _, abstract = model_creation_utils.create_nnx_abstract_model(config, mesh, model_mode=MODEL_MODE_AUTOREGRESSIVE)
  programs = DecodePrograms(abstract)
  prefill, step = programs.jitted(donate_prefill_cache=True)
  batch = int(config.micro_batch_size_to_train_on)
  replicated = NamedSharding(mesh, P())
  tokens = jax.ShapeDtypeStruct((batch, prompt), jnp.int32, sharding=replicated)
  rows = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=replicated)
  platform = mesh.devices.flat[0].platform
  base = dict(config_file=config_file, topology=config.compile_topology, chips=int(mesh.devices.size),
              mesh={axis: int(size) for axis, size in mesh.shape.items() if size > 1}, attention=str(config.attention),
              ring_impl=config.lwm_ring_impl if config.attention == "ring" else None,
              ring_hop=kernels_for(config.lwm_ring_impl, platform) if config.attention == "ring" else None,
              seq_len=prompt, sequences_per_step=batch)
  args = (programs.params, programs.rest, programs.empty_cache)
  with jax.set_mesh(mesh), nn_partitioning.axis_rules(config.logical_axis_rules):
    return (_report(base, f"{config.lwm_stage} prefill", lambda: prefill.lower(*args, tokens, tokens, rows).compile(),
                    ring_hop=base["ring_hop"]),
            _report(base, f"{config.lwm_stage} decode step", lambda: step.lower(*args, rows, rows).compile(),
                    ring_hop=None))


def check_decode(argv: Sequence[str], config_file: str) -> tuple[CompileReport, CompileReport]:
  """`lwm-generate STAGE.yml --check [key=value ...]`: the (prefill, decode step) reports of `argv` =
  [prog, STAGE.yml, key=value, ...]; compile_topology must be among the keys (or in the YAML)."""
  config = load_config(argv)
  with integration.installed():
    return compile_decode(config, config_file)
