"""Ring attention for JAX: exact, packed (segment ids), load-balanced, differentiable.

    from lwm_plugin.ring_attention import ring_attention, sharded_ring_attention, reference_attention

* `ring_attention(q, k, v, *, axis_name, ...)` inside your own `shard_map`, on local sequence shards.
* `sharded_ring_attention(q, k, v, *, mesh, axis_name, ...)` on global arrays: it does the
  `shard_map` (sequence sharded over `axis_name`, other mesh axes replicated).
* `reference_attention(q, k, v, ...)`: dense float32, same semantics, for tests and debugging.
* `layouts`: reorder a global batch into a load-balanced layout (dual-chunk swap, striped) and back.

Semantics: query token i sees key token j iff `segment_ids[i] == segment_ids[j] != 0` and (not
causal or `positions[j] <= positions[i]`). Rows that see nothing are 0. Shapes: q [B, S, H, D],
k and v [B, S, K, D] with H % K == 0; segment ids and positions [B, S] int.
"""

from __future__ import annotations

import functools
from typing import Hashable

import jax
from jax.sharding import Mesh, PartitionSpec as P

from lwm_plugin.kernels.ring import layouts
from lwm_plugin.kernels.ring.common import BlockSizes
from lwm_plugin.kernels.ring.reference import reference_attention
from lwm_plugin.kernels.ring.ring import IMPLS, ring_attention


def sharded_ring_attention(q_BxSxHxD, k_BxSxKxD, v_BxSxKxD, *, mesh: Mesh, axis_name: Hashable, segment_ids=None,
                           positions=None, causal: bool = True, scale: float | None = None,
                           block_sizes: BlockSizes | None = None, impl: str = "auto", scan_unroll: int = 1):
  """`ring_attention` on global arrays whose sequence axis is split over `axis_name` of `mesh`.

  `positions=None` means the order of the global arrays (0..S-1); pass positions if you reordered
  the tokens (see `layouts`). S must be a multiple of the axis size.
  """
  if axis_name not in mesh.shape:
    raise ValueError(f"{axis_name=} is not an axis of the mesh {dict(mesh.shape)}")
  n = mesh.shape[axis_name]
  if q_BxSxHxD.ndim != 4 or q_BxSxHxD.shape[1] % n:
    raise ValueError(f"sequence length must be a multiple of the {axis_name!r} axis size {n}: {q_BxSxHxD.shape=}")
  seq, tok = P(None, axis_name, None, None), P(None, axis_name)
  kernel = functools.partial(ring_attention, axis_name=axis_name, causal=causal, scale=scale,
                             block_sizes=block_sizes, impl=impl, scan_unroll=scan_unroll)
  args, specs = [q_BxSxHxD, k_BxSxKxD, v_BxSxKxD], [seq, seq, seq]
  names = []
  for name, value in (("segment_ids", segment_ids), ("positions", positions)):
    if value is not None:
      args.append(value)
      specs.append(tok)
      names.append(name)

  def local(q, k, v, *token_arrays):
    return kernel(q, k, v, **dict(zip(names, token_arrays)))

  return jax.shard_map(local, mesh=mesh, in_specs=tuple(specs), out_specs=seq, check_vma=False)(*args)


__all__ = ["BlockSizes", "IMPLS", "layouts", "reference_attention", "ring_attention", "sharded_ring_attention"]
