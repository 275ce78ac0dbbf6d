"""`lwm-train STAGE.yml --check`: MaxText's ahead-of-time compile of the stage's train step for its pod.

Runs MaxText's own `train_compile.main` (the program a TPU run compiles: same mesh, shardings,
optimizer, remat) with the plugin installed, so the LWM loss, the loader's batch keys and the ring
attention are in it, for `compile_topology` through libtpu; no TPU is needed, any host compiles.
`train_compile.main` only prints what it learns, so a scoped seam patch (`CHECK_ONLY_TABLE`)
captures the compiled object as `jit_and_compile` returns it; the report (`aot_report`) reads its
memory analysis and optimized HLO. When the program does not fit, the TPU compiler raises
RESOURCE_EXHAUSTED with its figures, which become the report.

The ring hop is named for the compile target, not the host: `lwm_ring_impl: auto` lowers to the
Mosaic kernels for a TPU topology even on a CPU host (`jax.lax.platform_dependent` decides at
lowering), and the report checks the compiled HLO for those kernels (`ring_hop_fwd`, `ring_hop_dq`,
`ring_hop_dkv` tpu_custom_calls), raising if it disagrees with the hop it names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import logging
import re
import time
from typing import Any, Sequence

import jax
from maxtext.utils import accelerator_to_spec_map, maxtext_utils

from lwm_plugin.kernels.ring import kernels_for
from lwm_plugin.integration.aot_report import CompileReport, parse_oom

logger = logging.getLogger("lwm_plugin.integration")


@dataclasses.dataclass
class Captured:
  """What the capture patch saw: the compiled train step, its mesh and the compile time."""

  compiled: Any = None
  mesh: Any = None
  seconds: float = 0.0


_CAPTURED: list[Captured] = []
_PERMUTE = re.compile(r"\scollective-permute(?:-start)?\(")
_TPU_CUSTOM_CALL = re.compile(r'custom_call_target="tpu_custom_call"')
_RING_KERNEL = re.compile(r"ring_hop_(?:fwd|dq|dkv)\b")


def capture_compiled(original):
  """`train_compile.jit_and_compile` that also records the compiled object (for `--check`)."""

  @functools.wraps(original)
  def jit_and_compile(func, func_input_args, func_input_kwargs, mesh, in_shardings, out_shardings, static_argnums,
                      donate_argnums, config, logical_axis_rules):
    start = time.perf_counter()
    compiled = original(func, func_input_args, func_input_kwargs, mesh, in_shardings, out_shardings, static_argnums,
                        donate_argnums, config, logical_axis_rules)
    _CAPTURED.append(Captured(compiled, mesh, time.perf_counter() - start))
    return compiled

  return jit_and_compile


def _target_platform(config: Any) -> str:
  """The platform the train step is compiled for ("tpu" for a TPU topology), not this host's."""
  return accelerator_to_spec_map.get_system_characteristics(config.compile_topology).platform


def _ring_hop(config: Any) -> str | None:
  """The ring hop kernels `lwm_ring_impl` compiles to on the compile target ("auto" on TPU: "mosaic")."""
  if config.attention != "ring":
    return None
  return kernels_for(config.lwm_ring_impl, _target_platform(config))


def _ring_kernels(hlo: str) -> int:
  """The ring hop's Mosaic kernels (forward, dq, dk/dv) among the HLO's tpu_custom_calls."""
  return sum(1 for line in hlo.splitlines() if _TPU_CUSTOM_CALL.search(line) and _RING_KERNEL.search(line))


def hlo_counts(hlo: str) -> dict[str, int]:
  """The report's HLO figures of a compiled TPU program: collective-permutes, tpu_custom_calls, ring hop kernels."""
  return dict(collective_permutes=len(_PERMUTE.findall(hlo)), tpu_custom_calls=len(_TPU_CUSTOM_CALL.findall(hlo)),
              ring_kernels=_ring_kernels(hlo))


def check_ring_kernels(hop: str | None, count: int) -> None:
  """Raises if the compiled HLO disagrees with the hop the report names (no silent fallback)."""
  if hop == "mosaic" and count == 0:
    raise RuntimeError("the ring hop should compile to the Mosaic kernels (ring_hop_fwd, ring_hop_dq, ring_hop_dkv), "
                       "but the compiled train step has none")
  if hop != "mosaic" and count:
    raise RuntimeError(f"the ring hop should compile to {hop!r}, but the train step has {count} Mosaic ring kernels")


def _mesh_of(config: Any) -> dict[str, int]:
  """Mesh axes of size != 1 as configured (-1: the rest of the chips), for a compile that did not finish."""
  return {axis: int(size) for axis, size in zip(config.mesh_axes, config.ici_parallelism) if size != 1}


def compile_train_step(argv: Sequence[str], config: Any, config_file: str, seam) -> CompileReport:
  """Compiles the train step of `argv` = [prog, CONFIG.yml, key=value, ...] (with compile_topology set).

  `config` is the resolved config of the same argv; `seam` the scoped seam holding the capture patch.
  """
  from maxtext.trainers.pre_train import train_compile  # pylint: disable=import-outside-toplevel

  chips = int(config.num_target_devices)
  flops = maxtext_utils.calculate_tflops_training_per_device(config, log=False)[0] * 1e12 * chips
  base = dict(config_file=config_file, stage=config.lwm_stage, topology=config.compile_topology, chips=chips,
              attention=str(config.attention), ring_impl=config.lwm_ring_impl if config.attention == "ring" else None,
              ring_hop=_ring_hop(config), seq_len=int(config.max_target_length),
              sequences_per_step=int(config.global_batch_size_to_train_on), model_flops_per_step=flops)
  _CAPTURED.clear()
  start = time.perf_counter()
  noise = io.StringIO()
  try:
    with seam.installed(), contextlib.redirect_stdout(noise):
      train_compile.main(list(argv))
  except jax.errors.JaxRuntimeError as e:
    message = str(e)
    oom = parse_oom(message) if "RESOURCE_EXHAUSTED" in message else None
    if oom is None:
      raise
    logger.info("the TPU compiler refused the program: %s", message.splitlines()[0])
    return CompileReport(**base, mesh=_mesh_of(config), compiled=False, required_bytes=oom[0],
                         available_bytes=oom[1], compile_seconds=time.perf_counter() - start,
                         error=message.splitlines()[0])
  finally:
    logger.debug("train_compile output:\n%s", noise.getvalue())
  if len(_CAPTURED) != 1:
    raise RuntimeError(f"expected train_compile to compile the train step once, saw {len(_CAPTURED)} compiles")
  captured = _CAPTURED.pop()
  memory = captured.compiled.memory_analysis()
  hlo = captured.compiled.as_text()
  mesh = {axis: int(size) for axis, size in captured.mesh.shape.items() if size > 1}
  counts = hlo_counts(hlo)
  check_ring_kernels(base["ring_hop"], counts["ring_kernels"])
  return CompileReport(**base, mesh=mesh, compiled=True, argument_bytes=int(memory.argument_size_in_bytes),
                       temp_bytes=int(memory.temp_size_in_bytes), **counts, compile_seconds=captured.seconds)
