"""Ahead-of-time compiles for TPU topologies on a CPU host (libtpu): the ring's Mosaic kernels and a
MaxText train step with `attention: ring`, reported as JSON for `test_ring_attention_tpu_aot.py`.

Run in a fresh process with JAX_PLATFORMS=cpu and ALLOW_MULTIPLE_LIBTPU_LOAD=1 (libtpu otherwise takes
a machine-wide lock another process may hold). Topologies come from MaxText's accelerator table, as
`train_compile` does, so "v4-8" here is the v4-8 of `compile_topology=v4-8`.

The train step goes through MaxText's own `train_compile.main` with the seam installed (the config
class, the loss, the ring adapter); `jit_and_compile` is wrapped here to keep the compiled object.
`lwm-train STAGE.yml --check` (the configs issue) does the same for stage YAMLs; once it is on main
this helper's `train_step` can call `integration.check_train_step` instead.
"""

from __future__ import annotations

import contextlib
import functools
import io
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

_PERMUTE = re.compile(r"\scollective-permute(?:-start)?\(")
_KERNEL = re.compile(r'custom_call_target="tpu_custom_call".*?kernel_name="?([\w.]+)')


def topology_devices(name: str):
  """The devices of a MaxText accelerator name ("v4-8", "v5p-8") via libtpu, without a TPU."""
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  from maxtext.utils import accelerator_to_spec_map  # pylint: disable=import-outside-toplevel

  spec = accelerator_to_spec_map.get_system_characteristics(name)
  return topologies.get_topology_desc(platform=spec.platform, topology_name=spec.topology_name,
                                      chip_config_name=spec.chip_config_name,
                                      chips_per_host_bounds=spec.chips_per_host_bounds, num_slices=1,
                                      wrap=spec.wrap).devices


def summarize(compiled) -> dict:
  """What the tests read from a compiled program: kernels, permutes, loop bodies, per-device memory."""
  from lwm_plugin.kernels.ring import hlo  # pylint: disable=import-outside-toplevel

  text = compiled.as_text()
  memory = compiled.memory_analysis()
  kernels = [line for line in text.splitlines() if 'custom_call_target="tpu_custom_call"' in line]
  return {
      "tpu_custom_calls": len(kernels),
      "kernel_names": sorted({name for name in ("ring_hop_fwd", "ring_hop_dq", "ring_hop_dkv")
                              if any(name in line for line in kernels)}),
      "collective_permutes": len(_PERMUTE.findall(text)),
      "ring_loops": hlo.ring_loops(text),
      "memory_mib": {kind: round(getattr(memory, f"{kind}_size_in_bytes") / 2**20, 2)
                     for kind in ("argument", "output", "temp", "generated_code")},
  }


def ring_fwd_bwd(devices, *, local_length: int, impl: str = "pallas", heads=(8, 2), head_dim: int = 128,
                 check_vma: bool = False) -> dict:
  """fwd+bwd of the ring (bf16, causal, packed documents crossing shards) compiled for `devices`."""
  from lwm_plugin.ring_attention import ring_attention  # pylint: disable=import-outside-toplevel

  n = len(devices)
  mesh = Mesh(np.array(devices), ("sp",))
  s = n * local_length
  h, kh = heads
  seq = NamedSharding(mesh, P(None, "sp", None, None))
  tok = NamedSharding(mesh, P(None, "sp"))
  shapes = [((1, s, h, head_dim), seq, jnp.bfloat16), ((1, s, kh, head_dim), seq, jnp.bfloat16),
            ((1, s, kh, head_dim), seq, jnp.bfloat16), ((1, s, h, head_dim), seq, jnp.bfloat16),
            ((1, s), tok, jnp.int32), ((1, s), tok, jnp.int32)]
  args = [jax.ShapeDtypeStruct(shape, dtype, sharding=sharding) for shape, sharding, dtype in shapes]
  spec, tok_spec = P(None, "sp"), P(None, "sp")
  kernel = functools.partial(ring_attention, axis_name="sp", impl=impl)
  ring = jax.shard_map(lambda q, k, v, sg, ps: kernel(q, k, v, segment_ids=sg, positions=ps), mesh=mesh,
                       in_specs=(spec, spec, spec, tok_spec, tok_spec), out_specs=spec, check_vma=check_vma)

  def fwd_bwd(q, k, v, do, seg, pos):
    out, vjp = jax.vjp(lambda q, k, v: ring(q, k, v, seg, pos), q, k, v)
    return (out, *vjp(do))

  compiled = jax.jit(fwd_bwd).trace(*args).lower().compile()
  return {"devices": n, "device_kind": devices[0].device_kind, "local_length": local_length, **summarize(compiled)}


def train_step(argv: list[str]) -> dict:
  """MaxText's `train_compile.main(argv)` with the seam installed; the compiled train step summarized."""
  from maxtext.trainers.pre_train import train_compile  # pylint: disable=import-outside-toplevel

  from lwm_plugin import integration  # pylint: disable=import-outside-toplevel

  captured = []
  original = train_compile.jit_and_compile

  @functools.wraps(original)
  def keep(*args, **kwargs):
    captured.append(original(*args, **kwargs))
    return captured[-1]

  train_compile.jit_and_compile = keep
  try:
    with integration.installed(), contextlib.redirect_stdout(io.StringIO()):
      train_compile.main(argv)
  finally:
    train_compile.jit_and_compile = original
  if len(captured) != 1:
    raise RuntimeError(f"expected one compiled train step, got {len(captured)}")
  return summarize(captured[0])
