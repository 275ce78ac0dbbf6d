"""`attention: ring` inside MaxText: the adapter from a MaxText attention layer to the ring kernel.

Selection: `attention: ring` (MaxText accepts any string there) with MaxText's
`context_parallel_strategy` left at its default `all_gather` (MaxText rejects its own `ring`
strategy on CPU); the ring runs over the mesh axis `context_sharding` ("context") and composes with
data/fsdp parallelism (batch axes) and tensor parallelism over heads (each device keeps its local
query heads and the kv heads they share, so num_kv_heads must divide by the head-sharding size).

Inputs: the layer's active logical rules name the batch and head mesh axes; the shard_map itself
is `lwm_plugin.ring_attention.sharded_ring_attention`'s (its one owner), which reshards q/k/v,
segment ids and positions to the ring's specs first, as MaxText's own kernels do, so
`shard_mode: explicit` works whatever sharding the inputs arrive with. It also takes what
`dot_product` takes: integer-valued float segment ids (MaxText's tests build them as float32).
MaxText methods called here without being patched are `Used` rows of the seam table.

Modes (MaxText's own inference path, `maxengine`/`decode.py`, and `integration.inference.CachedDecoder`):
* train and prefill run the ring over the prompt. Prefill returns the normalised output (MaxText's
  `AttentionOp.__call__` passes it through when there is no decode cache); MaxText's `KVCache` stores
  K/V, and with `attention: ring` the config class maps the logical axis `cache_sequence` to the
  context axis (`lwm_plugin.config.lwm_config`), so each device keeps S / N cached tokens.
* autoregressive: MaxText calls `apply_attention` twice per layer, on the prefill cache and on the
  cache of generated tokens, and merges the two partial results by their softmax statistics
  (`AttentionOp.normalize_attention`). Each call here is `sharded_decode_attention`: every device
  attends its own cache shard and the shards combine by pmax/psum of (max, sum, weighted V), so no
  K/V is gathered. Visibility is MaxText's decode rule: a cached token is seen iff its segment id is
  `DECODING_ACTIVE_SEQUENCE_INDICATOR` (prompts are one segment per row; padding 0).

Load balancing: MaxText's own. With `context_parallel_load_balance: true` (the default) MaxText
reorders each global batch once, at data loading, into its DUAL_CHUNK_SWAP layout
(`max_utils.reorder_causal_load_balanced`); the ring takes causality from `inputs_position`, so it
is exact in that layout and balanced. MaxText's reorder moves a fixed key set only; the seam's
`cp_reorder` patch moves the LWM per-token keys with the tokens.

Kernel arguments: MaxText's query is already scaled by 1/sqrt(head_dim) (folded into the query
projection), so the ring gets `scale=1.0`. Block sizes (0: the hop implementation's default), hop
implementation and scan unroll come from the `lwm_ring_*` settings; `lwm_ring_impl: auto` runs the
Pallas kernels on TPU and GPU, and the pure-JAX hop on CPU.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import jax
from maxtext.common.common_types import (BATCH_ATTN, CACHE_SEQUENCE, DECODE_BATCH, DECODING_ACTIVE_SEQUENCE_INDICATOR,
                                         HEAD, KV_HEAD, MODEL_MODE_AUTOREGRESSIVE, MODEL_MODE_PREFILL,
                                         MODEL_MODE_TRAIN, Q_LENGTH, AttentionType)

from lwm_plugin.kernels.ring.common import BlockSizes
from lwm_plugin.ring_attention import sharded_decode_attention, sharded_ring_attention

RING = "ring"


def _axes(spec_entry) -> tuple[str, ...]:
  if spec_entry is None:
    return ()
  return (spec_entry,) if isinstance(spec_entry, str) else tuple(spec_entry)


def _ring_axes(op) -> tuple[tuple[str, ...], tuple[str, ...], str]:
  """Mesh axes of the batch and of the heads, and the ring axis name, from the active logical rules.

  Query and kv heads shard over the same axes, so each device's query heads find their kv heads locally.
  """
  mesh, cfg = op.mesh, op.config
  resolve = lambda name: op._logical_to_mesh_axes((name,))[0]  # pylint: disable=protected-access
  batch = _axes(resolve(BATCH_ATTN))
  seq = [a for a in _axes(resolve(Q_LENGTH)) if mesh.shape[a] > 1]
  heads, kv_heads = _axes(resolve(HEAD)), _axes(resolve(KV_HEAD))
  ring_axis = cfg.context_sharding
  if seq and seq != [ring_axis]:
    raise ValueError(f"attention: ring shards the sequence over {ring_axis!r} only, but activation_q_length maps to "
                     f"{seq} (sizes {[mesh.shape[a] for a in seq]}); set the other axes to 1")
  if [a for a in heads if mesh.shape[a] > 1] != [a for a in kv_heads if mesh.shape[a] > 1]:
    raise ValueError(f"attention: ring needs query and kv heads sharded over the same mesh axes: "
                     f"activation_heads -> {heads}, activation_kv_heads -> {kv_heads}")
  return batch, heads, ring_axis


def _check_supported(op, args: dict[str, Any]) -> None:
  """Raises for every per-call MaxText attention feature the ring (and its decode step) does not implement."""
  unsupported = {
      "bidirectional_mask": args["bidirectional_mask"] is not None,
      "sinks": args["sinks"] is not None,
      "indexer_mask": args["indexer_mask"] is not None,
      "compressed_mask": args["compressed_mask"] is not None,
      "record_max_logits": bool(args["record_max_logits"]),
      "decoder_segment_ids_kv": args["decoder_segment_ids_kv"] is not None,
      "use_ragged_attention": bool(args["use_ragged_attention"]),
      "chunked prefill (previous_chunk)": args["previous_chunk"] is not None,
  }
  bad = [name for name, used in unsupported.items() if used]
  if bad:
    raise ValueError(f"attention: ring does not support {', '.join(bad)}; use attention: dot_product for this model")
  # The config class refuses config-level settings (attention_type, attn_logits_soft_cap, ...); a decoder
  # block may still give one layer another type (e.g. local sliding layers), seen only here.
  if op.attention_type not in (AttentionType.GLOBAL, AttentionType.FULL):
    raise ValueError(f"attention: ring supports attention_type global (causal) and full, not "
                     f"{op.attention_type.value!r}")
  query, key, value = args["query"], args["key"], args["value"]
  if not all(isinstance(x, jax.Array) for x in (query, key, value)):
    raise ValueError("attention: ring needs plain query/key/value arrays (no quantized KV tensors)")
  if query.shape[-1] != value.shape[-1]:
    raise ValueError(f"attention: ring needs equal q/k/v head dims: {query.shape=}, {value.shape=}")
  positions = args["segment_positions"]
  if args["model_mode"] == MODEL_MODE_AUTOREGRESSIVE:
    if args["decoder_segment_ids"] is None:
      raise ValueError("attention: ring decodes with MaxText's KV cache, whose segment ids say which cached tokens "
                       "are visible; got decoder_segment_ids=None")
    return
  if positions is not None and positions.ndim != 2:
    raise ValueError(f"attention: ring needs [batch, seq] positions (no M-RoPE), got {positions.shape=}")
  if positions is None and op._load_balanced_context_parallel():  # pylint: disable=protected-access
    raise ValueError("attention: ring with a load-balanced batch needs inputs_position (causality comes from it)")


def ring_attention_op(op, query, key, value, decoder_segment_ids, segment_positions):
  """The ring for one MaxText `AttentionOp` call in train mode, through the public sharded wrapper.

  `sharded_ring_attention` reshards every input to the ring's specs first (as MaxText's own kernels
  do, `AttentionOp._maybe_shard_with_pspec`), so `shard_mode: explicit` works with any batch axes,
  and casts integer-valued float segment ids/positions (what MaxText's tests feed).
  """
  cfg = op.config
  batch_axes, head_axes, axis = _ring_axes(op)
  block_sizes = BlockSizes(block_q=cfg.lwm_ring_block_q or None, block_kv=cfg.lwm_ring_block_kv or None,
                           block_q_bwd=cfg.lwm_ring_block_q_bwd or None, block_kv_bwd=cfg.lwm_ring_block_kv_bwd or None)
  return sharded_ring_attention(query, key, value, mesh=op.mesh, axis_name=axis, segment_ids=decoder_segment_ids,
                                positions=segment_positions, causal=op.attention_type == AttentionType.GLOBAL,
                                scale=1.0, block_sizes=block_sizes, impl=cfg.lwm_ring_impl,
                                scan_unroll=cfg.lwm_ring_scan_unroll, batch_axes=batch_axes, head_axes=head_axes)


def _check_cache_sharding(op, ring_axis: str) -> None:
  """The cache's sequence axis must be split over the ring axis (else the decode shard_map would reshard it)."""
  seq = [a for a in _axes(op._logical_to_mesh_axes((CACHE_SEQUENCE,))[0])  # pylint: disable=protected-access
         if op.mesh.shape[a] > 1]
  if op.mesh.shape[ring_axis] > 1 and seq != [ring_axis]:
    raise ValueError(f"attention: ring decodes from a KV cache split over {ring_axis!r}, but the logical axis "
                     f"{CACHE_SEQUENCE!r} maps to {seq}; map it to [{ring_axis!r}] in logical_axis_rules")


def ring_decode_op(op, query, key, value, decoder_segment_ids):
  """One autoregressive `apply_attention` call: (unnormalised output, max, sum) over a sequence-sharded cache."""
  _, head_axes, axis = _ring_axes(op)
  _check_cache_sharding(op, axis)
  batch_axes = _axes(op._logical_to_mesh_axes((DECODE_BATCH,))[0])  # pylint: disable=protected-access
  visible = decoder_segment_ids == DECODING_ACTIVE_SEQUENCE_INDICATOR
  return sharded_decode_attention(query, key, value, visible, mesh=op.mesh, axis_name=axis, batch_axes=batch_axes,
                                  head_axes=head_axes)


def apply_attention(original):
  """`AttentionOp.apply_attention` that handles `attention: ring` and delegates every other kernel."""
  signature = inspect.signature(original)

  @functools.wraps(original)
  def wrapper(self, *args, **kwargs):
    if self.attention_kernel != RING:
      return original(self, *args, **kwargs)
    bound = signature.bind(self, *args, **kwargs)
    bound.apply_defaults()
    a = bound.arguments
    mode = a["model_mode"]
    if mode not in (MODEL_MODE_TRAIN, MODEL_MODE_PREFILL, MODEL_MODE_AUTOREGRESSIVE):
      raise ValueError(f"attention: ring does not know model_mode {mode!r}")
    _check_supported(self, a)
    self.check_attention_inputs(a["query"], a["key"], a["value"])
    if mode == MODEL_MODE_AUTOREGRESSIVE:
      return ring_decode_op(self, a["query"], a["key"], a["value"], a["decoder_segment_ids"])
    out = ring_attention_op(self, a["query"], a["key"], a["value"], a["decoder_segment_ids"], a["segment_positions"])
    return out, None, None  # normalised: AttentionOp.__call__ passes it on when no sum comes with it

  return wrapper
