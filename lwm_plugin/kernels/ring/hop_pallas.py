"""The ring hops by name (the Pallas ones with their platform dispatch) and a differentiable single-hop attention.

Implementations (selected with `ring_attention(..., impl=NAME)`):

    pallas      Mosaic kernels on TPU, Triton kernels on GPU, the Mosaic kernels interpreted on CPU
    pallas_tpu  Mosaic kernels on TPU, interpreted on CPU
    pallas_gpu  Triton kernels on GPU (CUDA, ROCm), interpreted on CPU
    auto        Mosaic on TPU, Triton on GPU, the pure-JAX hop (`hop_xla`) on every other platform

The choice is `jax.lax.platform_dependent`, made when the program is lowered for its platform, so
nothing is decided at import and an ahead-of-time compile for a TPU topology from a CPU host gets
the Mosaic kernels (the tests check the compiled HLO for `tpu_custom_call`). Every branch is traced;
only the one for the lowering platform is lowered. `HopImpl.kernels_for(platform)` names the kernels
a platform gets ("mosaic", "triton", "xla", "mosaic (interpreted)", ...), for reports.

`HOP_IMPLS` maps every name to its `HopImpl` ("xla" is `hop_xla`); `resolve_impl(name)` is what
`ring.ring_attention` and `hop_attention` run, `kernels_for(name, platform)` what a report names.

`hop_attention` is one hop as a plain differentiable op (`jax.custom_vjp` over the hop's forward and
backward kernels): attention of queries against keys with their own segment ids and positions. It
is what the benchmarks time, and the single-device reference for the kernels' numerics.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from lwm_plugin.kernels.ring import hop_pallas_gpu, hop_pallas_tpu, hop_xla
from lwm_plugin.kernels.ring.common import BlockSizes, HopImpl

class _Kernels(NamedTuple):
  """One kernel family: its hop forward and backward, and its name in reports."""

  fwd: Callable
  bwd: Callable
  label: str


_TPU = _Kernels(hop_pallas_tpu.hop_fwd, hop_pallas_tpu.hop_bwd, "mosaic")
_GPU = _Kernels(hop_pallas_gpu.hop_fwd, hop_pallas_gpu.hop_bwd, "triton")
_XLA = _Kernels(hop_xla.hop_fwd, hop_xla.hop_bwd, "xla")


def _interpreted(kernels: _Kernels) -> _Kernels:
  return _Kernels(functools.partial(kernels.fwd, interpret=True), functools.partial(kernels.bwd, interpret=True),
                  f"{kernels.label} (interpreted)")


def _dispatch(name: str, per_platform: dict[str, _Kernels], default: _Kernels | None = None) -> HopImpl:
  """A HopImpl whose forward and backward each pick their kernels by lowering platform."""

  def pick(index: int):

    def run(*arrays, scale: float, causal: bool, block_sizes: BlockSizes):
      branch = lambda pair: lambda *a: pair[index](*a, scale=scale, causal=causal, block_sizes=block_sizes)
      made = {id(pair): branch(pair) for pair in per_platform.values()}  # one branch (one trace) per kernel pair
      branches = {platform: made[id(pair)] for platform, pair in per_platform.items()}
      return jax.lax.platform_dependent(*arrays, default=None if default is None else branch(default), **branches)

    return run

  kernels = tuple((platform, pair.label) for platform, pair in per_platform.items())
  if default is not None:  # runs everywhere
    return HopImpl(name=name, fwd=pick(0), bwd=pick(1), kernels=(*kernels, ("*", default.label)))
  return HopImpl(name=name, fwd=pick(0), bwd=pick(1), available=functools.partial(_available, name, per_platform),
                 kernels=kernels)


def _available(name: str, per_platform: dict[str, _Kernels]) -> str | None:
  backend = jax.default_backend()
  platforms = set(per_platform) | ({"gpu"} if {"cuda", "rocm"} & set(per_platform) else set())
  if backend in platforms:
    return None
  return f"{name} has kernels for {sorted(set(per_platform))}, not for this {backend!r} backend"


PALLAS = _dispatch("pallas", {"tpu": _TPU, "cuda": _GPU, "rocm": _GPU, "cpu": _interpreted(_TPU)})
PALLAS_TPU = _dispatch("pallas_tpu", {"tpu": _TPU, "cpu": _interpreted(_TPU)})
PALLAS_GPU = _dispatch("pallas_gpu", {"cuda": _GPU, "rocm": _GPU, "cpu": _interpreted(_GPU)})
AUTO = _dispatch("auto", {"tpu": _TPU, "cuda": _GPU, "rocm": _GPU}, default=_XLA)

HOPS = (PALLAS, PALLAS_TPU, PALLAS_GPU)
IMPLS = ("auto", "xla", "pallas", "pallas_tpu", "pallas_gpu")
HOP_IMPLS: dict[str, HopImpl] = {"xla": hop_xla.HOP, **{hop.name: hop for hop in HOPS}}


def resolve_impl(impl: str) -> HopImpl:
  """The hop implementation for `impl`; raises if it is unknown or cannot run on this backend."""
  if impl == "auto":
    return AUTO
  if impl not in HOP_IMPLS:
    raise ValueError(f"impl={impl!r}: expected one of {sorted(IMPLS)}")
  found = HOP_IMPLS[impl]
  why_not = found.available()
  if why_not:
    raise NotImplementedError(f"ring attention impl={impl!r} cannot run here: {why_not}")
  return found


def kernels_for(impl: str, platform: str) -> str:
  """The kernels `impl` compiles to in a program lowered for `platform` ("tpu", "gpu", "cpu", ...).

  For reports of ahead-of-time compiles, whose target is not this host: "auto" for "tpu" is "mosaic".
  """
  if impl != "auto" and impl not in HOP_IMPLS:
    raise ValueError(f"impl={impl!r}: expected one of {sorted(IMPLS)}")
  return (AUTO if impl == "auto" else HOP_IMPLS[impl]).kernels_for(platform)


# ----------------------------------------------------------------------------------------------------
# One hop as a differentiable op


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _hop(hop: HopImpl, scale: float, causal: bool, block_sizes: BlockSizes, q, k, v, q_seg, kv_seg, q_pos, kv_pos):
  o, _ = hop.fwd(q, k, v, q_seg, kv_seg, q_pos, kv_pos, scale=scale, causal=causal, block_sizes=block_sizes)
  return o.astype(q.dtype)


def _hop_fwd(hop, scale, causal, block_sizes, q, k, v, q_seg, kv_seg, q_pos, kv_pos):
  o, lse = hop.fwd(q, k, v, q_seg, kv_seg, q_pos, kv_pos, scale=scale, causal=causal, block_sizes=block_sizes)
  o = o.astype(q.dtype)
  return o, (q, k, v, q_seg, kv_seg, q_pos, kv_pos, o, lse)


def _hop_bwd(hop, scale, causal, block_sizes, residuals, do):
  q, k, v, q_seg, kv_seg, q_pos, kv_pos, o, lse = residuals
  delta = jnp.einsum("blhd,blhd->bhl", do.astype(jnp.float32), o.astype(jnp.float32))
  dq, dk, dv = hop.bwd(q, k, v, do, lse, delta, jnp.zeros(q.shape, jnp.float32), q_seg, kv_seg, q_pos, kv_pos,
                       scale=scale, causal=causal, block_sizes=block_sizes)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None, None, None


_hop.defvjp(_hop_fwd, _hop_bwd)


def hop_attention(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, *, q_segment_ids=None, kv_segment_ids=None, q_positions=None,
                  kv_positions=None, causal: bool = True, scale: float | None = None,
                  block_sizes: BlockSizes | None = None, impl: str = "pallas"):
  """Attention of q [B, Lq, H, D] against k, v [B, Lk, K, D] by one ring hop's kernels, differentiable.

  Query i sees key j iff their segment ids are equal and non-zero and (causal) kv_positions[j] <=
  q_positions[i]. Segment ids None mean one segment; positions None mean 0..L-1 on both sides.
  Returns [B, Lq, H, D] in q's dtype; rows that see no key are 0. `impl` names a hop ("pallas",
  "pallas_tpu", "pallas_gpu", "xla", "auto").
  """
  b, lq = q_BxLxHxD.shape[:2]
  lk = k_BxLxKxD.shape[1]
  ones = lambda length: jnp.ones((b, length), jnp.int32)
  arange = lambda length: jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
  meta = [ones(lq) if q_segment_ids is None else q_segment_ids, ones(lk) if kv_segment_ids is None else kv_segment_ids,
          arange(lq) if q_positions is None else q_positions, arange(lk) if kv_positions is None else kv_positions]
  scale = float(q_BxLxHxD.shape[-1]**-0.5 if scale is None else scale)
  return _hop(resolve_impl(impl), scale, bool(causal), block_sizes or BlockSizes(), q_BxLxHxD, k_BxLxKxD,
              v_BxLxKxD, *(x.astype(jnp.int32) for x in meta))
