"""Load-balanced token layouts for causal ring attention: reorder a global batch and restore it.

With contiguous sharding the last device of a causal ring sees N shards of visible keys and the
first sees one. Two layouts even this out (the ring stays exact because causality comes from the
positions, which travel with the tokens):

* "dual_chunk_swap" (zigzag): the sequence is cut into 2N chunks; device r holds chunks r and
  2N-1-r. The same permutation as MaxText's `max_utils.reorder_sequence` and Transformer Engine's
  DualChunkSwap (S must be a multiple of 2N).
* "striped": token t goes to device t mod N (stripes of `stripe` tokens: (t // stripe) mod N),
  as in Striped Attention and Transformer Engine's Striped (S must be a multiple of N * stripe).
* "contiguous": the identity.

Every per-token array must move with the tokens: inputs, targets, segment ids, positions, loss
weights, vision masks. `reorder_batch` reorders a dict of them; give a batch positions before
reordering it (`global_positions`) unless it carries its own.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import jax.numpy as jnp
import numpy as np

LAYOUTS = ("contiguous", "dual_chunk_swap", "striped")


def permutation(seq_len: int, num_shards: int, layout: str, stripe: int = 1) -> np.ndarray:
  """perm [S] int: position k of the reordered sequence holds original token perm[k]."""
  if layout not in LAYOUTS:
    raise ValueError(f"layout={layout!r}: expected one of {LAYOUTS}")
  if num_shards < 1:
    raise ValueError(f"num_shards must be >= 1, got {num_shards}")
  tokens = np.arange(seq_len)
  if layout == "contiguous":
    if seq_len % num_shards:
      raise ValueError(f"contiguous layout: {seq_len=} is not a multiple of {num_shards=}")
    return tokens
  if layout == "dual_chunk_swap":
    if seq_len % (2 * num_shards):
      raise ValueError(f"dual_chunk_swap layout: {seq_len=} is not a multiple of 2 * {num_shards=}")
    chunks = tokens.reshape(2 * num_shards, -1)
    order = np.stack([np.arange(num_shards), np.arange(2 * num_shards - 1, num_shards - 1, -1)], axis=1).reshape(-1)
    return chunks[order].reshape(-1)
  if stripe < 1 or seq_len % (num_shards * stripe):
    raise ValueError(f"striped layout: {seq_len=} is not a multiple of {num_shards=} * {stripe=}")
  # [rounds, N, stripe] -> [N, rounds, stripe]: shard r gets stripes r, r + N, r + 2N, ...
  return tokens.reshape(-1, num_shards, stripe).transpose(1, 0, 2).reshape(-1)


def inverse(perm: np.ndarray) -> np.ndarray:
  inv = np.empty_like(perm)
  inv[perm] = np.arange(perm.size)
  return inv


def reorder(x, *, num_shards: int, layout: str, axis: int = 1, stripe: int = 1):
  """`x` with its sequence `axis` in the load-balanced order (numpy or jax array)."""
  perm = permutation(x.shape[axis], num_shards, layout, stripe)
  return jnp.take(x, perm, axis=axis) if not isinstance(x, np.ndarray) else np.take(x, perm, axis=axis)


def restore(x, *, num_shards: int, layout: str, axis: int = 1, stripe: int = 1):
  """Undoes `reorder` (e.g. for logits or per-token losses computed in the balanced order)."""
  inv = inverse(permutation(x.shape[axis], num_shards, layout, stripe))
  return jnp.take(x, inv, axis=axis) if not isinstance(x, np.ndarray) else np.take(x, inv, axis=axis)


def global_positions(batch_size: int, seq_len: int) -> np.ndarray:
  """[B, S] int32 positions 0..S-1, to reorder with the tokens when a batch has none."""
  return np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch_size, seq_len)).copy()


def reorder_batch(batch: Mapping[str, object], keys: Iterable[str], *, num_shards: int, layout: str,
                  stripe: int = 1) -> dict[str, object]:
  """Reorders the per-token arrays `keys` of `batch` ([B, S, ...] each) and keeps the others.

  Raises if a key is missing or its sequence length differs from the others'.
  """
  keys = list(keys)
  missing = [key for key in keys if key not in batch]
  if missing:
    raise KeyError(f"reorder_batch: keys {missing} not in the batch (has {sorted(batch)})")
  lengths = {key: batch[key].shape[1] for key in keys}  # type: ignore[attr-defined]
  if len(set(lengths.values())) > 1:
    raise ValueError(f"reorder_batch: per-token arrays disagree on the sequence length: {lengths}")
  return {key: reorder(value, num_shards=num_shards, layout=layout, stripe=stripe) if key in keys else value
          for key, value in batch.items()}
