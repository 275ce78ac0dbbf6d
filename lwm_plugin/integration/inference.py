"""A MaxText model outside the training loop: build it, load a checkpoint, decode greedily.

Used by `lwm-eval`. The model is built by MaxText (`model_creation_utils.from_pretrained`, which
loads `load_parameters_path` through the training path's params-only loader, so a missing or
mis-shaped weight is an error). Prefill is the model's train-mode forward over the whole prompt:
with `attention: ring` and `ici_context_parallelism > 1` the prompt is sharded over the context
axis and attended by ring attention, as in training. Decoding recomputes that forward for every
new token (no KV cache): exact, simple, and cheap enough for short answers such as needle numbers.
Prompts are right-padded to one bucket length with segment id 0, so a batch compiles once and
padding never reaches a real token (causal and segment masks).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.linen import partitioning as nn_partitioning
from maxtext.configs import pyconfig
from maxtext.utils import model_creation_utils

from lwm_plugin import integration


def load_config(argv: Sequence[str]) -> Any:
  """MaxText's HyperParameters for `argv` = [prog, CONFIG.yml, key=value, ...] with the LWM class."""
  return pyconfig.HyperParameters(integration.resolve_config(argv))


class GreedyDecoder:
  """Greedy decoding with a checkpointed MaxText model (the seam must be installed)."""

  def __init__(self, config: Any, *, bucket: int = 256):
    if not config.load_parameters_path:
      raise ValueError("GreedyDecoder needs load_parameters_path (a checkpoint's .../<step>/items directory)")
    self.config = config
    self.model, self.mesh = model_creation_utils.from_pretrained(config)
    self._graphdef, self._state = nnx.split(self.model)
    self._bucket = math.lcm(bucket, 2 * max(1, config.ici_context_parallelism))
    batch_axes = ("data", "fsdp", "fsdp_transpose", "expert")
    self._batch_multiple = int(np.prod([self.mesh.shape.get(a, 1) for a in batch_axes]))
    self._step = jax.jit(self._logits_at)

  def _logits_at(self, state, tokens_BxS, positions_BxS, segments_BxS, index_B, allowed_V):
    model = nnx.merge(self._graphdef, state)
    logits_BxSxV = model(decoder_input_tokens=tokens_BxS, decoder_positions=positions_BxS,
                         decoder_segment_ids=segments_BxS, enable_dropout=False)
    logits_BxV = jnp.take_along_axis(logits_BxSxV, index_B[:, None, None], axis=1)[:, 0].astype(jnp.float32)
    return jnp.argmax(jnp.where(allowed_V, logits_BxV, -jnp.inf), axis=-1)

  def generate(self, prompts: Sequence[np.ndarray], max_new_tokens: int, *, stop_ids: Sequence[int] = (),
               allowed_ids: np.ndarray | None = None) -> list[np.ndarray]:
    """New tokens for each prompt (stopping after a stop id). `allowed_ids`: restrict the argmax
    (e.g. to text ids when the answer is text)."""
    n = len(prompts)
    rows = -(-n // self._batch_multiple) * self._batch_multiple
    longest = max(len(p) for p in prompts) + max_new_tokens
    if longest > self.config.max_target_length:
      raise ValueError(f"prompt + answer needs {longest} tokens; the config's max_target_length is "
                       f"{self.config.max_target_length}")
    length = -(-longest // self._bucket) * self._bucket
    tokens = np.zeros((rows, length), np.int32)
    segments = np.zeros((rows, length), np.int32)
    ends = np.zeros(rows, np.int32)
    for i, p in enumerate(prompts):
      tokens[i, :len(p)], segments[i, :len(p)], ends[i] = p, 1, len(p)
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), (rows, length))
    allowed = np.ones(self.config.vocab_size, bool) if allowed_ids is None else np.isin(
        np.arange(self.config.vocab_size), allowed_ids)
    out: list[list[int]] = [[] for _ in range(n)]
    done = np.zeros(rows, bool)
    done[n:] = True
    with jax.set_mesh(self.mesh), nn_partitioning.axis_rules(self.config.logical_axis_rules):
      for _ in range(max_new_tokens):
        nxt = np.asarray(self._step(self._state, tokens, positions, segments, np.maximum(ends - 1, 0), allowed))
        for i in np.flatnonzero(~done):
          out[i].append(int(nxt[i]))
          tokens[i, ends[i]], segments[i, ends[i]] = nxt[i], 1
          ends[i] += 1
          done[i] = nxt[i] in stop_ids
        if done.all():
          break
    return [np.asarray(o, np.int32) for o in out]
