"""A reference decoder for tests: the next-token logits by recomputing the whole forward pass, no KV cache.

Implements the `lwm_plugin.generation.loop.Decoder` protocol over MaxText's train-mode forward (the
model built by `model_creation_utils.from_pretrained`, which loads `load_parameters_path`): prefill
and every step run the full forward over each row's tokens so far and read the logits at its last
position. Exact and slow (a step costs a whole prefill); the product decodes with
`inference.CachedDecoder`, and tests compare the two. Rows are right-padded to a fixed length
with segment id 0, so padding never reaches a real token and the forward compiles once.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.linen import partitioning as nn_partitioning
from maxtext.utils import model_creation_utils


@dataclasses.dataclass
class FullState:
  logits_BxV: np.ndarray
  tokens_BxS: np.ndarray
  lengths_B: np.ndarray


class FullForwardDecoder:
  """Recomputes the forward for every token; `batch_multiple` rows per call (the config's batch)."""

  def __init__(self, config, *, batch_multiple: int | None = None):
    self.config = config
    self.model, self.mesh = model_creation_utils.from_pretrained(config)
    self._graphdef, self._state = nnx.split(self.model)
    self.max_length = int(config.max_target_length)
    self.vocab_size = int(config.vocab_size)
    self.batch_multiple = batch_multiple or int(config.micro_batch_size_to_train_on)
    self._forward = jax.jit(self._logits_at)

  def _logits_at(self, state, tokens_BxS, segments_BxS, index_B):
    model = nnx.merge(self._graphdef, state)
    positions_BxS = jnp.broadcast_to(jnp.arange(tokens_BxS.shape[1], dtype=jnp.int32), tokens_BxS.shape)
    logits_BxSxV = model(decoder_input_tokens=tokens_BxS, decoder_positions=positions_BxS,
                         decoder_segment_ids=segments_BxS, enable_dropout=False)
    return jnp.take_along_axis(logits_BxSxV, index_B[:, None, None], axis=1)[:, 0].astype(jnp.float32)

  def _logits(self, tokens_BxS, lengths_B) -> np.ndarray:
    segments_BxS = (np.arange(tokens_BxS.shape[1])[None] < lengths_B[:, None]).astype(np.int32)
    with jax.set_mesh(self.mesh), nn_partitioning.axis_rules(self.config.logical_axis_rules):
      return np.asarray(self._forward(self._state, tokens_BxS, segments_BxS, np.maximum(lengths_B - 1, 0)))

  def prefill(self, prompts) -> FullState:
    assert 0 < len(prompts) <= self.batch_multiple
    tokens = np.zeros((self.batch_multiple, self.max_length), np.int32)
    lengths = np.ones(self.batch_multiple, np.int32)
    for i, p in enumerate(prompts):
      assert 0 < len(p) <= self.max_length
      tokens[i, :len(p)], lengths[i] = p, len(p)
    return FullState(self._logits(tokens, lengths), tokens, lengths)

  def step(self, state: FullState, next_ids_B) -> FullState:
    assert len(next_ids_B) == self.batch_multiple and state.lengths_B.max() < self.max_length
    tokens = state.tokens_BxS.copy()
    tokens[np.arange(self.batch_multiple), state.lengths_B] = next_ids_B
    lengths = state.lengths_B + 1
    return FullState(self._logits(tokens, lengths), tokens, lengths)
