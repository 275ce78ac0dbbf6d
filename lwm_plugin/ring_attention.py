"""Ring attention for JAX: exact, packed (segment ids), load-balanced, differentiable.

    from lwm_plugin.ring_attention import ring_attention, sharded_ring_attention, reference_attention

* `ring_attention(q, k, v, *, axis_name, ...)` inside your own `shard_map`, on local sequence shards.
* `sharded_ring_attention(q, k, v, *, mesh, axis_name, ...)` on global arrays: it reshards the
  inputs and does the `shard_map` (sequence sharded over `axis_name`, batch and heads over the mesh
  axes you name, other mesh axes replicated). It is the one owner of that wrapper: MaxText's
  `attention: ring` (`lwm_plugin.integration.attention`) calls it too.
* `sharded_decode_attention(q, k_cache, v_cache, kv_mask, *, mesh, axis_name, ...)`: a decode step's
  new tokens against a KV cache whose sequence axis is split over `axis_name` (each device attends
  its own shard; the shards combine through softmax statistics, no K/V moves). MaxText's
  `attention: ring` calls it in autoregressive mode.
* `reference_attention(q, k, v, ...)`: dense float32, same semantics, for tests and debugging.
* `layouts`: reorder a global batch into a load-balanced layout (dual-chunk swap, striped) and back.

Semantics: query token i sees key token j iff `segment_ids[i] == segment_ids[j] != 0` and (not
causal or `positions[j] <= positions[i]`). Rows that see nothing are 0. Shapes: q [B, S, H, D],
k and v [B, S, K, D] with H % K == 0; segment ids and positions [B, S].

Segment ids and positions are integers. Float arrays holding integer values are accepted and cast
to int32, because MaxText's own pipelines and tests build them that way (`jnp.zeros(...) +
DECODING_ACTIVE_SEQUENCE_INDICATOR` is float32) and its dot-product attention compares them as
floats. A non-integer value is an error naming the array: raised here when the array is concrete
and on this host, else (under `jit`, or spread over other hosts) raised when the program runs (a
host callback compiled in only for float inputs, so integer ids cost nothing).
"""

from __future__ import annotations

import functools
from typing import Hashable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from lwm_plugin.kernels.ring import IMPLS, layouts
from lwm_plugin.kernels.ring.common import BlockSizes
from lwm_plugin.kernels.ring.decode import decode_attention, decode_attention_reference
from lwm_plugin.kernels.ring.reference import reference_attention
from lwm_plugin.kernels.ring.ring import ring_attention

MeshAxes = Hashable | Sequence[Hashable] | None


def _names(axes: MeshAxes) -> tuple[Hashable, ...]:
  if axes is None:
    return ()
  return tuple(axes) if isinstance(axes, (tuple, list)) else (axes,)


def _first_non_integer(name: str, values) -> None:
  """Raises ValueError naming `name` and its first non-integer value, if it has one (host side)."""
  values = np.asarray(values)
  bad = values[~(np.isfinite(values) & (values == np.round(values)))]
  if bad.size:
    raise ValueError(f"{name} must hold integer values (segment ids and positions are token indices), found "
                     f"{bad.flat[0].item()!r} in a {values.dtype} array")


def as_token_ints(name: str, x):
  """`x` (segment ids or positions) as int32; integer-valued floats are cast, anything else is an error."""
  if x is None:
    return None
  dtype = jnp.dtype(x.dtype)
  if jnp.issubdtype(dtype, jnp.integer):
    return x.astype(jnp.int32)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"{name} must be integer (or integer-valued float), got dtype {dtype}")
  try:
    concrete = np.asarray(x)
  except (jax.errors.TracerArrayConversionError, RuntimeError):  # traced, or spanning other hosts' devices:
    jax.debug.callback(functools.partial(_first_non_integer, name), x)  # checked when the program runs
  else:
    _first_non_integer(name, concrete)
  return x.astype(jnp.int32)


def _reshard(x, mesh: Mesh, spec: P):
  """`x` laid out as `spec` on `mesh`: `jax.sharding.reshard` on an explicit-axes mesh (where shard_map
  requires the input's type to match its in_specs), a sharding constraint otherwise."""
  sharding = NamedSharding(mesh, spec)
  if any(t == AxisType.Explicit for t in mesh.axis_types):
    return jax.sharding.reshard(x, sharding)
  return jax.lax.with_sharding_constraint(x, sharding)


def _check_divisible(mesh: Mesh, what: str, size: int, axes: tuple[Hashable, ...], shape) -> None:
  ways = int(np.prod([mesh.shape[a] for a in axes], dtype=int))
  if size % ways:
    raise ValueError(f"{what} ({size}) must be a multiple of {ways}, the size of mesh axes {axes}: {shape=}")


def _check_axes(mesh: Mesh, axis_name: Hashable, batch: tuple[Hashable, ...], heads: tuple[Hashable, ...]) -> None:
  if axis_name not in mesh.shape:
    raise ValueError(f"{axis_name=} is not an axis of the mesh {dict(mesh.shape)}")
  unknown = [a for a in (*batch, *heads) if a not in mesh.shape]
  if unknown or axis_name in (*batch, *heads):
    raise ValueError(f"batch_axes {batch} and head_axes {heads} must be mesh axes {tuple(mesh.shape)} other than "
                     f"the ring axis {axis_name!r}")


def sharded_ring_attention(q_BxSxHxD, k_BxSxKxD, v_BxSxKxD, *, mesh: Mesh, axis_name: Hashable, segment_ids=None,
                           positions=None, causal: bool = True, scale: float | None = None,
                           block_sizes: BlockSizes | None = None, impl: str = "auto", scan_unroll: int = 1,
                           batch_axes: MeshAxes = None, head_axes: MeshAxes = None):
  """`ring_attention` on global arrays whose sequence axis is split over `axis_name` of `mesh`.

  `batch_axes` / `head_axes`: mesh axes the batch and the heads are split over (None: replicated);
  query and kv heads split alike, so K must be a multiple of their size. Every input is resharded
  to these specs first, so arrays may arrive with any sharding (also on explicit-axes meshes).
  `positions=None` means the order of the global arrays (0..S-1); pass positions if you reordered
  the tokens (see `layouts`). S must be a multiple of the axis size. Returns [B, S, H, D] laid out
  as q's spec.
  """
  batch, heads = _names(batch_axes), _names(head_axes)
  _check_axes(mesh, axis_name, batch, heads)
  if q_BxSxHxD.ndim != 4 or k_BxSxKxD.ndim != 4:
    raise ValueError(f"expected q [B, S, H, D] and k, v [B, S, K, D]: {q_BxSxHxD.shape=}, {k_BxSxKxD.shape=}")
  _check_divisible(mesh, "sequence length", q_BxSxHxD.shape[1], (axis_name,), q_BxSxHxD.shape)
  _check_divisible(mesh, "batch", q_BxSxHxD.shape[0], batch, q_BxSxHxD.shape)
  _check_divisible(mesh, "kv heads", k_BxSxKxD.shape[2], heads, k_BxSxKxD.shape)
  qkv_spec = P(batch or None, axis_name, heads or None, None)
  token_spec = P(batch or None, axis_name)
  kernel = functools.partial(ring_attention, axis_name=axis_name, causal=causal, scale=scale,
                             block_sizes=block_sizes, impl=impl, scan_unroll=scan_unroll)
  args = [_reshard(x, mesh, qkv_spec) for x in (q_BxSxHxD, k_BxSxKxD, v_BxSxKxD)]
  specs, names = [qkv_spec] * 3, []
  for name, value in (("segment_ids", segment_ids), ("positions", positions)):
    if value is not None:
      args.append(_reshard(as_token_ints(name, value), mesh, token_spec))
      specs.append(token_spec)
      names.append(name)

  def local(q, k, v, *token_arrays):
    return kernel(q, k, v, **dict(zip(names, token_arrays)))

  return jax.shard_map(local, mesh=mesh, in_specs=tuple(specs), out_specs=qkv_spec, check_vma=False)(*args)


def sharded_decode_attention(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, kv_mask_BxS, *, mesh: Mesh, axis_name: Hashable,
                             batch_axes: MeshAxes = None, head_axes: MeshAxes = None):
  """`decode_attention` of a few new query tokens over a cache whose sequence axis S is split over `axis_name`.

  The cache (k, v [B, S, K, D], kv_mask [B, S] bool: which cached tokens are visible) stays where it
  is: each device attends its S / N tokens and the shards combine by pmax/psum of the softmax
  statistics. q [B, T, H, D] is replicated over `axis_name`. Returns (o [B, T, H, D] unnormalised,
  m [B, T, H, 1], s [B, T, H, 1]) in float32 (the output is o / s), replicated over `axis_name`.
  """
  batch, heads = _names(batch_axes), _names(head_axes)
  _check_axes(mesh, axis_name, batch, heads)
  if k_BxSxKxD.ndim != 4:
    raise ValueError(f"expected k, v [B, S, K, D]: {k_BxSxKxD.shape=}")
  _check_divisible(mesh, "cache length", k_BxSxKxD.shape[1], (axis_name,), k_BxSxKxD.shape)
  _check_divisible(mesh, "batch", k_BxSxKxD.shape[0], batch, k_BxSxKxD.shape)
  _check_divisible(mesh, "kv heads", k_BxSxKxD.shape[2], heads, k_BxSxKxD.shape)
  q_spec = P(batch or None, None, heads or None, None)
  kv_spec = P(batch or None, axis_name, heads or None, None)
  mask_spec = P(batch or None, axis_name)
  args = (_reshard(q_BxTxHxD, mesh, q_spec), _reshard(k_BxSxKxD, mesh, kv_spec), _reshard(v_BxSxKxD, mesh, kv_spec),
          _reshard(kv_mask_BxS.astype(bool), mesh, mask_spec))
  local = functools.partial(decode_attention, axis_name=axis_name)
  return jax.shard_map(local, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, mask_spec),
                       out_specs=(q_spec, q_spec, q_spec), check_vma=False)(*args)


__all__ = ["BlockSizes", "IMPLS", "as_token_ints", "decode_attention", "decode_attention_reference", "layouts",
           "reference_attention", "ring_attention", "sharded_decode_attention", "sharded_ring_attention"]
