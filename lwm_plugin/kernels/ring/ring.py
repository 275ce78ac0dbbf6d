"""The ring: K/V shards travel around a mesh axis; each hop's partial attention merges in float32.

`ring_attention` runs inside `shard_map` on the local shard of each device. Device r starts with
its own K/V; at hop t it holds the shard of device (r - t) mod N (every device sends to r + 1).
K and V travel stacked in one `ppermute`, with kv segment ids and positions stacked in a second
(int32) one. The permute that brings hop t+1's shard is issued before hop t's compute and only read
by the next hop, so the transfer overlaps the compute. The loop is peeled (first hop before the
`lax.scan`, last hop after it), so there is no wasted last transfer and no conditional permute, and
each scan iteration runs two hops so that the K/V buffers alternate without a copy (`_repeat`); the
tests check the compiled HLO for exactly one K/V permute per hop and no copy in the loop.

Forward: per hop, the hop implementation returns a float32 output normalised within the hop and
its log-sum-exp; they merge exactly in float32 (o = w_old o + w_hop o_hop with w = exp(lse - lse_new)),
so error does not grow with ring size. A hop whose whole K/V shard is masked for every local query
(summaries of segment ids and positions) is skipped.

Backward (custom VJP, recomputation per hop, no per-hop residuals): dq stays local in float32 and
each hop adds to it. The
float32 dK/dV accumulator of a shard travels behind it, one hop late: at hop t a device receives
the accumulator of the shard it is computing on (sent by its predecessor, which finished that
shard the hop before), so that transfer overlaps this hop's compute; after the last hop one more
permute brings every accumulator home, summed over all N devices. Cotangents are cast to the
input dtypes.

Hop implementations are looked up by name in `hop_pallas` (`HOP_IMPLS`, `resolve_impl`): "xla"
(`hop_xla`), and the Pallas kernels "pallas", "pallas_tpu", "pallas_gpu". "auto" takes the Mosaic
kernels on TPU, the Triton kernels on GPU and "xla" elsewhere, decided when the program is lowered
for its platform (`jax.lax.platform_dependent`), never at import.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Hashable

import jax
import jax.numpy as jnp

from lwm_plugin.kernels.ring import common
from lwm_plugin.kernels.ring.common import BlockSizes, HopImpl
from lwm_plugin.kernels.ring.hop_pallas import resolve_impl

@dataclasses.dataclass(frozen=True)
class _Ring:
  """Static arguments of one ring call (hashable: a nondiff argument of the custom VJP)."""

  axis_name: Hashable
  causal: bool
  scale: float
  block_sizes: BlockSizes
  hop: HopImpl
  unroll: int


def _perm(n: int):
  return [(i, (i + 1) % n) for i in range(n)]


def _hop_visible(cfg: _Ring, q_seg, q_pos, kv_meta):
  """Whether any local query may see any key of the visiting shard (whole-shard summaries)."""
  q_sum = common.summarize(q_seg, q_pos, q_seg.shape[1])
  kv_sum = common.summarize(kv_meta[0], kv_meta[1], kv_meta.shape[2])
  return common.visible(q_sum, kv_sum, cfg.causal)[0, 0]


def _merge(o, lse, o_hop, lse_hop):
  """Exact float32 merge of two normalised partial outputs; -inf lse (nothing seen) is safe."""
  m = jnp.maximum(lse, lse_hop)
  m_safe = jnp.where(m == -jnp.inf, 0.0, m)
  w_old, w_hop = jnp.exp(lse - m_safe), jnp.exp(lse_hop - m_safe)
  total = w_old + w_hop
  seen = total > 0
  inv = jnp.where(seen, 1.0 / jnp.where(seen, total, 1.0), 0.0)
  a_old = jnp.swapaxes(w_old * inv, 1, 2)[..., None]  # [B, H, L] -> [B, L, H, 1]
  a_hop = jnp.swapaxes(w_hop * inv, 1, 2)[..., None]
  return a_old * o + a_hop * o_hop, jnp.where(seen, m_safe + jnp.log(jnp.where(seen, total, 1.0)), -jnp.inf)


def _fwd_hop(cfg: _Ring, q, q_seg, q_pos, kv, kv_meta):
  b, length, h, _ = q.shape

  def compute(_):
    return cfg.hop.fwd(q, kv[0], kv[1], q_seg, kv_meta[0], q_pos, kv_meta[1], scale=cfg.scale, causal=cfg.causal,
                       block_sizes=cfg.block_sizes)

  def skip(_):
    # *_like(q): the same shard_map axis types (check_vma) as the computed branch.
    return jnp.zeros_like(q, jnp.float32), jnp.full_like(q, -jnp.inf, jnp.float32, (b, h, length))

  return jax.lax.cond(_hop_visible(cfg, q_seg, q_pos, kv_meta), compute, skip, None)


def _repeat(step, carry, count: int, unroll: int):
  """Applies `step` (one hop) `count` times: two hops per `lax.scan` iteration, split by a barrier.

  With one hop per iteration the received K/V buffer is the loop-carried one while the current K/V
  is still being read, so XLA copies the K/V every hop. Two hops per iteration, with an
  optimization barrier ordering the first hop's compute before the second hop's transfer, let the
  two buffers alternate: no copy (checked on the compiled HLO in the tests).
  """

  def pair(carry, _):
    return step(jax.lax.optimization_barrier(step(carry))), None

  carry, _ = jax.lax.scan(pair, carry, length=count // 2, unroll=unroll)
  return step(carry) if count % 2 else carry


def _per_call(q, seg, pos):
  """(q, seg, pos) through one optimization barrier, so that seg and pos depend on q for JAX.

  Under a `lax.scan` over layers (MaxText's scan_layers) the segment ids and positions are the same
  for every layer. Differentiating the scan, JAX hoists loop-invariant computations out of it
  (`_scan_known_hoisting` partially evaluates the body with its constants known), which splits the
  hop loops and materialises every block's mask and masked scores stacked over all (query block,
  key block) pairs: 655 GB per chip for LWM-Text-1M on v4-512. Tied to q, which differs per layer,
  nothing in the ring is loop-invariant.
  """
  return jax.lax.optimization_barrier((q, seg, pos))


def _forward(cfg: _Ring, q, k, v, seg, pos):
  q, seg, pos = _per_call(q, seg, pos)
  n = jax.lax.axis_size(cfg.axis_name)
  perm = _perm(n)
  send = lambda x: jax.lax.ppermute(x, cfg.axis_name, perm)
  kv, meta = jnp.stack([k, v]), jnp.stack([seg, pos])
  if n == 1:
    return _fwd_hop(cfg, q, seg, pos, kv, meta)

  def hop(carry):  # the transfer for the next hop is issued first and overlaps this hop's compute
    kv, meta, o, lse = carry
    return (send(kv), send(meta), *_merge(o, lse, *_fwd_hop(cfg, q, seg, pos, kv, meta)))

  init = (kv, meta, *_fwd_hop(cfg, q, seg, pos, kv, meta))
  carry = (send(kv), send(meta), *init[2:])  # hop 0 on the own shard, already merged
  kv, meta, o, lse = _repeat(hop, carry, n - 2, cfg.unroll)
  return _merge(o, lse, *_fwd_hop(cfg, q, seg, pos, kv, meta))  # last hop: nothing left to send


def _bwd_hop(cfg: _Ring, q, do, lse, delta, q_seg, q_pos, dq, kv, kv_meta):

  def compute(dq):
    dq, dk, dv = cfg.hop.bwd(q, kv[0], kv[1], do, lse, delta, dq, q_seg, kv_meta[0], q_pos, kv_meta[1], scale=cfg.scale,
                             causal=cfg.causal, block_sizes=cfg.block_sizes)
    return dq, jnp.stack([dk, dv])

  def skip(dq):
    return dq, jnp.zeros_like(kv, jnp.float32)

  return jax.lax.cond(_hop_visible(cfg, q_seg, q_pos, kv_meta), compute, skip, dq)


def _backward(cfg: _Ring, q, k, v, seg, pos, o, lse, do):
  q, seg, pos = _per_call(q, seg, pos)
  n = jax.lax.axis_size(cfg.axis_name)
  perm = _perm(n)
  send = lambda x: jax.lax.ppermute(x, cfg.axis_name, perm)
  delta = jnp.einsum("blhd,blhd->bhl", do.astype(jnp.float32), o.astype(jnp.float32))
  kv, meta = jnp.stack([k, v]), jnp.stack([seg, pos])
  grads = functools.partial(_bwd_hop, cfg, q, do, lse, delta, seg, pos)

  dq, dkv = grads(jnp.zeros_like(q, jnp.float32), kv, meta)  # hop 0: own shard; dkv: its accumulator so far
  if n == 1:
    return dq, dkv

  def hop(carry):
    kv, meta, dkv_done, dq = carry
    dkv_in = send(dkv_done)  # the accumulator of the shard held now; overlaps the compute below
    dq, dkv_hop = grads(dq, kv, meta)
    return send(kv), send(meta), dkv_in + dkv_hop, dq

  kv, meta, dkv, dq = _repeat(hop, (send(kv), send(meta), dkv, dq), n - 2, cfg.unroll)
  dkv_in = send(dkv)
  dq, dkv_hop = grads(dq, kv, meta)
  return dq, send(dkv_in + dkv_hop)  # the last permute brings every accumulator home


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ring(cfg: _Ring, q, k, v, seg, pos):
  o, _ = _forward(cfg, q, k, v, seg, pos)
  return o.astype(q.dtype)


def _ring_fwd(cfg: _Ring, q, k, v, seg, pos):
  o, lse = _forward(cfg, q, k, v, seg, pos)
  o = o.astype(q.dtype)
  return o, (q, k, v, seg, pos, o, lse)


def _ring_bwd(cfg: _Ring, residuals, do):
  q, k, v, seg, pos, o, lse = residuals
  dq, dkv = _backward(cfg, q, k, v, seg, pos, o, lse, do)
  return dq.astype(q.dtype), dkv[0].astype(k.dtype), dkv[1].astype(v.dtype), None, None


_ring.defvjp(_ring_fwd, _ring_bwd)


def _check(q, k, v, segment_ids, positions):
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(f"expected q [B, L, H, D] and k, v [B, L, K, D]: {q.shape=}, {k.shape=}, {v.shape=}")
  if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
    raise ValueError(f"q, k, v must share B, L and D, and k, v their shape: {q.shape=}, {k.shape=}, {v.shape=}")
  if q.shape[2] % k.shape[2]:
    raise ValueError(f"query heads must be a multiple of kv heads (GQA): {q.shape=}, {k.shape=}")
  if not q.dtype == k.dtype == v.dtype:
    raise ValueError(f"q, k, v must share a dtype: {q.dtype=}, {k.dtype=}, {v.dtype=}")
  for name, x in (("segment_ids", segment_ids), ("positions", positions)):
    if x is not None and (x.shape != q.shape[:2] or not jnp.issubdtype(x.dtype, jnp.integer)):
      raise ValueError(f"{name} must be integer [B, L] = {q.shape[:2]}: {x.shape=}, {x.dtype=}")


def ring_attention(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, *, axis_name, segment_ids=None, positions=None,
                   causal: bool = True, scale: float | None = None, block_sizes: BlockSizes | None = None,
                   impl: str = "auto", scan_unroll: int = 1):
  """Exact attention of local queries against the K/V of every shard on `axis_name` (call in shard_map).

  q [B, L, H, D], k and v [B, L, K, D] are this device's sequence shard (H % K == 0; K/V heads are
  never repeated). `segment_ids`/`positions` [B, L] int (local): token i sees token j iff their
  segment ids are equal and non-zero and (if causal) positions[j] <= positions[i]. None means one
  segment, and global order (axis_index * L + arange(L)). `scale` None means 1/sqrt(D).
  Returns [B, L, H, D] in q's dtype; rows that see no key are 0. `scan_unroll` unrolls the hop loop.
  """
  _check(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, segment_ids, positions)
  if not isinstance(scan_unroll, int) or scan_unroll < 1:
    raise ValueError(f"scan_unroll must be a positive int, got {scan_unroll!r}")
  b, length, _, d = q_BxLxHxD.shape
  cfg = _Ring(axis_name=axis_name, causal=bool(causal), scale=float(d**-0.5 if scale is None else scale),
              block_sizes=block_sizes or BlockSizes(), hop=resolve_impl(impl), unroll=scan_unroll)
  if segment_ids is None:
    segment_ids = jnp.ones((b, length), jnp.int32)
  if positions is None:
    start = jax.lax.axis_index(axis_name) * length
    positions = jnp.broadcast_to(start + jnp.arange(length, dtype=jnp.int32), (b, length))
  return _ring(cfg, q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, segment_ids.astype(jnp.int32), positions.astype(jnp.int32))
