"""Context-parallel load balancing moves the LWM per-token keys with the tokens.

With `context_parallel_load_balance: true` and context parallelism > 1, MaxText reorders each
global batch once, at data loading (`max_utils.reorder_causal_load_balanced`, DUAL_CHUNK_SWAP or
STRIPED), but only a fixed set of keys. `targets_weights` and `targets_vision_mask` must follow
the same permutation, or each token would get another token's weight. The wrapper reorders them
through MaxText's own function, under a key it knows, so the permutation is identical by
construction; a batch carrying any other per-token key MaxText would leave behind is an error.
The loss is a sum over tokens, so it is unchanged by the permutation.
"""

from __future__ import annotations

import functools

from data_loaders.batch import LWM_KEYS

# Keys MaxText 0.2.5's reorder moves itself (its local `_reorder_keys`; a test checks this set
# against the function's behaviour).
MAXTEXT_REORDERED_KEYS = frozenset({"inputs", "targets", "inputs_position", "targets_position", "inputs_segmentation",
                                    "targets_segmentation", "corruption_mask", "targets_loss_mask"})
# Per-token keys of the LWM loader: the batch schema's (a loader that adds one declares it there).
LWM_PER_TOKEN_KEYS = tuple(LWM_KEYS)


def reorder_causal_load_balanced(original):
  """MaxText's load-balancing reorder, extended to `LWM_PER_TOKEN_KEYS` (the permutation of "inputs")."""

  @functools.wraps(original)
  def reorder(batch, cp_size, reorder_strategy, hardware="tpu"):
    out = original(batch, cp_size, reorder_strategy, hardware)
    inputs = batch.get("inputs")
    if inputs is None:
      return out
    token_shape = tuple(inputs.shape[:2])
    unknown = sorted(k for k, v in batch.items() if k not in MAXTEXT_REORDERED_KEYS and k not in LWM_PER_TOKEN_KEYS
                     and tuple(getattr(v, "shape", ())[:2]) == token_shape)
    if unknown:
      raise ValueError(f"context-parallel load balancing would leave the per-token batch keys {unknown} in their "
                       "original order while the tokens move; declare them in the batch schema "
                       "(data_loaders.batch.LWM_KEYS) or set context_parallel_load_balance: false")
    for key in LWM_PER_TOKEN_KEYS:
      if key in batch:
        out[key] = original({"inputs": batch[key]}, cp_size, reorder_strategy, hardware)["inputs"]
    return out

  return reorder
