"""A MaxText model outside the training loop: build it, load a checkpoint, decode with its KV cache.

The model is built by MaxText (`model_creation_utils.from_pretrained`, which loads
`load_parameters_path` through the training path's params-only loader, so a missing or mis-shaped
weight is an error).

* `CachedDecoder` (the product path) runs MaxText's own inference modes, as `maxengine` does:
  `prefill` is the model in `model_mode=prefill` over a batch of right-padded prompts, which fills
  MaxText's `KVCache` (with `attention: ring`: ring attention over the context axis, the cache split
  over it, S / N tokens per device); `step` is `model_mode=autoregressive` on one new token per row,
  attending the cache in place (`integration.attention`). Each call returns the float32 logits of
  the next token, so sampling and stop rules live with the caller; per step only B ids go in and
  B x V logits come out. The loops on top (greedy, sampling, guidance) are `lwm_plugin.generation.loop`'s.
* `GreedyDecoder` recomputes the train-mode forward over the whole sequence for every new token (no
  cache): exact and simple, kept as the reference the cache path is tested against and for
  `lwm-eval` until it moves to `CachedDecoder`.

Prompts are right-padded with segment id 0, so padding never reaches a real token (causal and
segment masks; in decode, MaxText shows a cached token iff its segment id is 1).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.linen import partitioning as nn_partitioning
from maxtext.common.common_types import MODEL_MODE_AUTOREGRESSIVE, MODEL_MODE_PREFILL
from maxtext.configs import pyconfig
from maxtext.utils import model_creation_utils

from lwm_plugin import integration


def load_config(argv: Sequence[str]) -> Any:
  """MaxText's HyperParameters for `argv` = [prog, CONFIG.yml, key=value, ...] with the LWM class."""
  return pyconfig.HyperParameters(integration.resolve_config(argv))


def decode_config(prog: str, config_file: str, items: Any, overrides: Sequence[str], *, total: int,
                  prompt: int) -> Any:
  """The config of a decoding run: `config_file` with `overrides`, the weights at `items` (a checkpoint's
  .../<step>/items), no checkpointing, run name `prog` in snake case, and a KV cache of `total` tokens of
  which the first `prompt` hold the prompt (MaxText's max_target_length and max_prefill_predict_length)."""
  return load_config([prog, config_file, f"run_name={prog.replace('-', '_')}", "enable_checkpointing=false",
                      f"load_parameters_path={items}", *overrides, f"max_target_length={total}",
                      f"max_prefill_predict_length={prompt}"])


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
    self._full = jax.jit(self._forward)

  def _forward(self, state, tokens_BxS, positions_BxS, segments_BxS):
    model = nnx.merge(self._graphdef, state)
    return model(decoder_input_tokens=tokens_BxS, decoder_positions=positions_BxS, decoder_segment_ids=segments_BxS,
                 enable_dropout=False)

  def _logits_at(self, state, tokens_BxS, positions_BxS, segments_BxS, index_B, allowed_V):
    logits_BxSxV = self._forward(state, tokens_BxS, positions_BxS, segments_BxS)
    logits_BxV = jnp.take_along_axis(logits_BxSxV, index_B[:, None, None], axis=1)[:, 0].astype(jnp.float32)
    return jnp.argmax(jnp.where(allowed_V, logits_BxV, -jnp.inf), axis=-1)

  def logits(self, sequences: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The float32 logits [len, V] of one full forward over each sequence (position i: the next token after
    i + 1 tokens); the teacher-forced reference for a cached decode of the same tokens."""
    rows = -(-len(sequences) // self._batch_multiple) * self._batch_multiple
    length = -(-max(len(s) for s in sequences) // self._bucket) * self._bucket
    tokens, segments = np.zeros((rows, length), np.int32), np.zeros((rows, length), np.int32)
    for i, seq in enumerate(sequences):
      tokens[i, :len(seq)], segments[i, :len(seq)] = seq, 1
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), (rows, length))
    with jax.set_mesh(self.mesh), nn_partitioning.axis_rules(self.config.logical_axis_rules):
      out = np.asarray(self._full(self._state, tokens, positions, segments), np.float32)
    return [out[i, :len(seq)] for i, seq in enumerate(sequences)]

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


@dataclasses.dataclass(frozen=True)
class DecodeState:
  """Where a batch of generations stands. `logits_BxV`: float32 logits of each row's next token (rows past
  `num_prompts` are padding); `lengths_B`: tokens so far per row (prompt + generated); `steps`: tokens
  generated so far; `cache`: MaxText's KV cache on the devices (opaque; `step` consumes it)."""

  logits_BxV: np.ndarray
  lengths_B: np.ndarray
  steps: int
  num_prompts: int
  cache: Any = dataclasses.field(repr=False)


def check_sizes(config: Any) -> tuple[int, int]:
  """(longest prompt, most new tokens) of `config`: MaxText's two caches, each split over the context axis."""
  cp = max(1, config.ici_context_parallelism * config.dcn_context_parallelism)
  prompt, new = int(config.max_prefill_predict_length), int(config.max_target_length - config.max_prefill_predict_length)
  if new <= 0 or prompt % cp or new % cp:
    raise ValueError(f"cached decoding needs max_prefill_predict_length ({prompt}) and max_target_length - "
                     f"max_prefill_predict_length ({new}, the new tokens) positive multiples of the context "
                     f"parallelism ({cp}): each cache is split over it")
  return prompt, new


# MaxText's KVCache variables that only prefill writes (`KVCache.kv_cache_prefill`).
PROMPT_CACHE_KEYS = frozenset({"cached_prefill_key", "cached_prefill_value", "cache_prefill_segment_id",
                               "cached_prefill_key_scale", "cached_prefill_value_scale"})


def _keys(tree: dict) -> set[str]:
  return set(tree) | {k for value in tree.values() if isinstance(value, dict) for k in _keys(value)}


def _with_prompt_cache(new: dict, old: dict) -> dict:
  """`new` with the prompt-cache leaves of `old` (same tree)."""
  return {key: old[key] if key in PROMPT_CACHE_KEYS else (_with_prompt_cache(value, old[key])
                                                          if isinstance(value, dict) else value)
          for key, value in new.items()}


class DecodePrograms:
  """Prefill and one decode step as pure functions of (params, rest, cache, inputs), from a MaxText model built in
  model_mode autoregressive, real or abstract: what `CachedDecoder` runs and what `aot_decode` compiles.

  `rest` is the model's other state (RNG counters); caches cross as plain dicts (their variable
  metadata changes inside MaxText's layer scan).
  """

  def __init__(self, model):
    self.graphdef, self.params, cache, self.rest = nnx.split(model, nnx.Param, nnx.Cache, ...)
    self._cache_template = cache
    self.empty_cache = nnx.to_pure_dict(cache)
    if not {"cached_prefill_key", "cached_prefill_value"} <= _keys(self.empty_cache):
      raise ValueError("MaxText's KV cache has no cached_prefill_key/cached_prefill_value variables (expected "
                       "MaxText 0.2.5's KVCache; or the model was not built in model_mode autoregressive)")

  def _run(self, params, rest, cache, tokens_BxS, positions_BxS, segments_BxS, mode):
    cache_state = jax.tree.map(lambda x: x, self._cache_template)
    nnx.replace_by_pure_dict(cache_state, cache)
    model = nnx.merge(self.graphdef, params, cache_state, rest, copy=True)
    logits_BxSxV = model(decoder_input_tokens=tokens_BxS, decoder_positions=positions_BxS,
                         decoder_segment_ids=segments_BxS, enable_dropout=False, model_mode=mode)
    return logits_BxSxV, nnx.to_pure_dict(nnx.state(model, nnx.Cache))

  def prefill(self, params, rest, cache, tokens_BxS, segments_BxS, last_B):
    """(float32 logits [B, V] after token `last_B` of each row, the cache holding the prompts)."""
    positions_BxS = jnp.broadcast_to(jnp.arange(tokens_BxS.shape[1], dtype=jnp.int32), tokens_BxS.shape)
    logits_BxSxV, cache = self._run(params, rest, cache, tokens_BxS, positions_BxS, segments_BxS, MODEL_MODE_PREFILL)
    return jnp.take_along_axis(logits_BxSxV, last_B[:, None, None], axis=1)[:, 0].astype(jnp.float32), cache

  def step(self, params, rest, cache, ids_B, positions_B):
    """(float32 logits [B, V] of the token after `ids_B`, placed at `positions_B`; the cache with it appended).

    A decode step reads the prompt cache and writes only the generated-token cache, but MaxText's layer
    scan returns every cache it carried: a new copy of the prompt cache. The step returns the prompt
    cache it was given instead, so XLA drops that copy (its temporaries stay far below the cache size).
    """
    logits_Bx1xV, new_cache = self._run(params, rest, cache, ids_B[:, None], positions_B[:, None], None,
                                        MODEL_MODE_AUTOREGRESSIVE)
    return logits_Bx1xV[:, 0].astype(jnp.float32), _with_prompt_cache(new_cache, cache)

  def jitted(self, *, donate_prefill_cache: bool = False):
    """(prefill, step) under `jax.jit`, the caches kept in their own layout; `step` consumes its cache (and
    `prefill` too with `donate_prefill_cache`)."""
    shardings = jax.tree.map(lambda x: x.sharding, self.empty_cache)
    return (jax.jit(self.prefill, out_shardings=(None, shardings), donate_argnums=(2,) if donate_prefill_cache else ()),
            jax.jit(self.step, out_shardings=(None, shardings), donate_argnums=(2,)))


class CachedDecoder:
  """A checkpointed MaxText model decoding with its KV cache (the seam must be installed).

  Sizes come from the config: `max_prefill_predict_length` is the longest prompt, `max_target_length`
  minus it the most new tokens (MaxText's two caches), the batch is MaxText's decode batch
  (`per_device_batch_size` x devices). Prompts are padded to a multiple of `bucket` (and of the
  context parallelism), so each bucket compiles once.
  """

  def __init__(self, config: Any, *, bucket: int = 256):
    if not config.load_parameters_path:
      raise ValueError("CachedDecoder needs load_parameters_path (a checkpoint's .../<step>/items directory)")
    self.max_prompt_length, self.max_new_tokens = check_sizes(config)
    self.max_length = int(config.max_target_length)
    self.config = config
    self.vocab_size = int(config.vocab_size)
    cp = max(1, config.ici_context_parallelism * config.dcn_context_parallelism)
    self._bucket = min(math.lcm(bucket, cp), self.max_prompt_length)
    model, self.mesh = model_creation_utils.from_pretrained(config, model_mode=MODEL_MODE_AUTOREGRESSIVE)
    self._programs = DecodePrograms(model)
    self.batch_multiple = int(config.micro_batch_size_to_train_on)  # the caches' batch: every call has these rows
    self._prefill, self._step = self._programs.jitted()

  @contextlib.contextmanager
  def _context(self):
    """The mesh and logical axis rules MaxText's layers resolve shardings against."""
    with jax.set_mesh(self.mesh), nn_partitioning.axis_rules(self.config.logical_axis_rules):
      yield

  def prefill(self, prompts: Sequence[np.ndarray]) -> DecodeState:
    """Runs the prompts (1-D token arrays, up to `batch_multiple`, each 1..max_prompt_length tokens) into a
    fresh cache; the state's logits are those of each prompt's next token."""
    n = len(prompts)
    if not 0 < n <= self.batch_multiple:
      raise ValueError(f"prefill takes 1 to {self.batch_multiple} prompts (the decode batch: per_device_batch_size "
                       f"x devices), got {n}")
    lengths = np.array([len(p) for p in prompts], np.int32)
    if lengths.min() < 1 or lengths.max() > self.max_prompt_length:
      raise ValueError(f"prompt lengths must be 1..{self.max_prompt_length} (max_prefill_predict_length), got "
                       f"{lengths.min()}..{lengths.max()}")
    length = min(-(-int(lengths.max()) // self._bucket) * self._bucket, self.max_prompt_length)
    tokens = np.zeros((self.batch_multiple, length), np.int32)
    segments = np.zeros((self.batch_multiple, length), np.int32)
    for i, p in enumerate(prompts):
      tokens[i, :len(p)], segments[i, :len(p)] = p, 1
    rows_lengths = np.ones(self.batch_multiple, np.int32)  # padding rows: one (invisible) token, decoding junk
    rows_lengths[:n] = lengths
    with self._context():
      p = self._programs
      logits, cache = self._prefill(p.params, p.rest, p.empty_cache, tokens, segments, rows_lengths - 1)
    return DecodeState(np.asarray(logits), rows_lengths, 0, n, cache)

  def step(self, state: DecodeState, next_ids_B: np.ndarray) -> DecodeState:
    """Appends one token per row (`next_ids_B`: `num_prompts` or `batch_multiple` ids) and returns the next
    logits. The state passed in is consumed (its cache is donated)."""
    if state.steps >= self.max_new_tokens:
      raise ValueError(f"the cache holds {self.max_new_tokens} new tokens (max_target_length - "
                       f"max_prefill_predict_length); all are used")
    ids = np.zeros(self.batch_multiple, np.int32)
    next_ids_B = np.asarray(next_ids_B, np.int32).reshape(-1)
    if len(next_ids_B) not in (state.num_prompts, self.batch_multiple):
      raise ValueError(f"step needs one id per prompt ({state.num_prompts}) or per row ({self.batch_multiple}), "
                       f"got {len(next_ids_B)}")
    ids[:len(next_ids_B)] = next_ids_B
    with self._context():
      logits, cache = self._step(self._programs.params, self._programs.rest, state.cache, ids, state.lengths_B)
    return DecodeState(np.asarray(logits), state.lengths_B + 1, state.steps + 1, state.num_prompts, cache)
