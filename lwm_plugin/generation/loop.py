"""The decoding loop over a KV-cache decoder: text answers and image/video generation with guidance.

A decoder (`Decoder`: `lwm_plugin.integration.inference.CachedDecoder`, or a stand-in in tests)
prefills a batch of prompts once and then takes one token per row and step; this module decides
which token (`lwm_plugin.generation.sampling`) and when a row is done:

  `generate_text`    one row per prompt; a row stops after a stop id (kept in its `new_ids`) or after
                     `max_new_tokens`; every step may be restricted to allowed ids (text ids for an
                     answer). Stopped rows are fed their stop id until the whole batch is done.
  `generate_vision`  LWM's classifier-free guidance (`vision_generation.py`): each prompt has a
                     conditional row (its prompt) and an unconditional row (`<s><vision>`), both in one
                     batch; the next token is drawn from uncond + scale * (cond - uncond) and the same
                     id is fed to both rows. A `frame_schedule` (`data_loaders.vision_prompts`) says,
                     position by position, whether a VQGAN code is drawn or `<eof>`/`<eov>` is forced,
                     so the output is always F whole frames.

Prompts are decoded in batches of the decoder's `batch_multiple` rows (its decode batch; with
guidance, half as many prompts), each batch prefilled once; rows a batch does not fill are padding,
fed id 0 and ignored. Timing per prompt: `prefill_s` is its batch's prefill, `decode_s` the time from
the end of that prefill to the row's last token, `new_tokens` the tokens it produced.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from data_loaders.vision_prompts import CODE
from lwm_plugin.generation import sampling as sampling_lib
from lwm_plugin.generation.sampling import Sampling


class DecodeState(Protocol):
  """What the loop reads of a decoder's state: the next-token logits of every (padded) row."""
  logits_BxV: Any


class Decoder(Protocol):
  """A prefill-once, one-token-per-step decoder (`inference.CachedDecoder`)."""
  max_length: int       # prompt + generated tokens of a row, at most
  batch_multiple: int   # the decode batch: a prefill takes at most this many prompts and returns this many rows
  vocab_size: int

  def prefill(self, prompts: Sequence[np.ndarray]) -> DecodeState: ...

  def step(self, state: DecodeState, next_ids_B: np.ndarray) -> DecodeState: ...


@dataclasses.dataclass
class Generation:
  """One prompt's result."""
  prompt_ids: np.ndarray
  new_ids: np.ndarray
  prefill_s: float
  decode_s: float

  @property
  def new_tokens(self) -> int:
    return len(self.new_ids)

  def timing(self) -> dict[str, float | int]:
    return {"prefill_s": self.prefill_s, "decode_s": self.decode_s, "new_tokens": self.new_tokens}


def _check_prompts(decoder: Decoder, prompts: Sequence[np.ndarray], steps: int) -> list[np.ndarray]:
  prompts = [np.asarray(p, np.int32).reshape(-1) for p in prompts]
  if not prompts:
    raise ValueError("no prompt to generate from")
  if steps < 1:
    raise ValueError(f"max_new_tokens {steps}: expected at least 1")
  for k, p in enumerate(prompts):
    if len(p) == 0:
      raise ValueError(f"prompt {k} is empty")
    if p.min() < 0 or p.max() >= decoder.vocab_size:
      raise ValueError(f"prompt {k} has an id outside the model's vocabulary [0, {decoder.vocab_size})")
  longest = max(len(p) for p in prompts)
  if longest + steps > decoder.max_length:
    raise ValueError(f"a {longest}-token prompt plus {steps} new tokens exceeds the decoder's max_length "
                     f"{decoder.max_length}")
  return prompts


def _batches(prompts: list[np.ndarray], size: int) -> list[list[np.ndarray]]:
  return [prompts[i:i + size] for i in range(0, len(prompts), size)]


def _run(decoder: Decoder, rows: list[np.ndarray], n: int, steps: int, *, sampling: Sampling,
         allowed_at: Callable[[int], np.ndarray], cfg_scale: float | None,
         stop_ids: Sequence[int]) -> list[tuple[list[int], float, float]]:
  """Prefill `rows`, then up to `steps` tokens for the first `n` outputs. With `cfg_scale`, rows n..2n-1
  are the unconditional rows of rows 0..n-1, fed the same ids. Returns (new ids, prefill_s, decode_s) per output."""
  start = time.perf_counter()
  state = decoder.prefill(rows)
  jax.block_until_ready(state.logits_BxV)
  prefill_s = time.perf_counter() - start
  padded = state.logits_BxV.shape[0]
  if padded != decoder.batch_multiple:
    raise ValueError(f"the decoder returned {padded} logit rows, not its batch_multiple {decoder.batch_multiple}")
  stops = np.asarray(sorted(set(int(s) for s in stop_ids)), np.int32)
  out: list[list[int]] = [[] for _ in range(n)]
  done = np.zeros(n, bool)
  finished = np.zeros(n)
  decode_start = time.perf_counter()
  for t in range(steps):
    allowed_nxV = np.broadcast_to(allowed_at(t), (n, decoder.vocab_size))
    sampling_lib.check_allowed(allowed_nxV)
    logits_RxV = jnp.asarray(state.logits_BxV)[:len(rows)]
    logits_nxV = logits_RxV if cfg_scale is None else sampling_lib.guided_logits(logits_RxV[:n], logits_RxV[n:],
                                                                                 cfg_scale)
    ids_n = np.asarray(sampling_lib.sample(logits_nxV, allowed_nxV, sampling_lib.step_key(sampling.seed, t), sampling))
    now = time.perf_counter()
    for i in np.flatnonzero(~done):
      out[i].append(int(ids_n[i]))
      finished[i] = now - decode_start
      done[i] = np.isin(ids_n[i], stops)
    if done.all() or t == steps - 1:
      break
    fed_n = np.where(done, np.asarray([o[-1] for o in out], np.int32), ids_n)
    next_ids_B = np.zeros(padded, np.int32)
    next_ids_B[:len(rows)] = np.tile(fed_n, len(rows) // n)
    state = decoder.step(state, next_ids_B)
  return [(o, prefill_s, float(f)) for o, f in zip(out, finished)]


def generate_text(decoder: Decoder, prompts: Sequence[np.ndarray], *, max_new_tokens: int,
                  sampling: Sampling = Sampling(), stop_ids: Sequence[int] = (),
                  allowed_V: np.ndarray | None = None) -> list[Generation]:
  """New ids for each prompt (one batch). `allowed_V`: bool [vocab_size], the ids a token may be (None: all)."""
  prompts = _check_prompts(decoder, prompts, max_new_tokens)
  allowed_V = np.ones(decoder.vocab_size, bool) if allowed_V is None else np.asarray(allowed_V, bool)
  if allowed_V.shape != (decoder.vocab_size,):
    raise ValueError(f"allowed_V has shape {allowed_V.shape}, expected ({decoder.vocab_size},)")
  runs = []
  for batch in _batches(prompts, decoder.batch_multiple):
    runs += _run(decoder, batch, len(batch), max_new_tokens, sampling=sampling, allowed_at=lambda t: allowed_V,
                 cfg_scale=None, stop_ids=stop_ids)
  return [Generation(p, np.asarray(ids, np.int32), pre, dec) for p, (ids, pre, dec) in zip(prompts, runs)]


def generate_vision(decoder: Decoder, prompts: Sequence[np.ndarray], unconditional: np.ndarray, *,
                    schedule: np.ndarray, code_mask_V: np.ndarray, cfg_scale: float,
                    sampling: Sampling = Sampling()) -> list[Generation]:
  """Frames for each conditional prompt, guided against `unconditional` (`<s><vision>`) with `cfg_scale`.

  `schedule` [steps]: `CODE` where a code (an id of `code_mask_V`) is drawn, else the id forced there.
  """
  schedule = np.asarray(schedule, np.int32).reshape(-1)
  prompts = _check_prompts(decoder, [*prompts, unconditional], len(schedule))[:-1]
  code_mask_V = np.asarray(code_mask_V, bool)
  if code_mask_V.shape != (decoder.vocab_size,) or not code_mask_V.any():
    raise ValueError(f"code_mask_V must be a non-empty bool mask of shape ({decoder.vocab_size},)")
  if decoder.batch_multiple < 2:
    raise ValueError(f"guidance needs a decode batch of at least 2 rows (a conditional and an unconditional one); "
                     f"the decoder has {decoder.batch_multiple} (per_device_batch_size x devices)")

  def allowed_at(t: int) -> np.ndarray:
    if schedule[t] == CODE:
      return code_mask_V
    forced_V = np.zeros(decoder.vocab_size, bool)
    forced_V[schedule[t]] = True
    return forced_V

  runs = []
  for batch in _batches(prompts, decoder.batch_multiple // 2):
    rows = [*batch, *([np.asarray(unconditional, np.int32)] * len(batch))]
    runs += _run(decoder, rows, len(batch), len(schedule), sampling=sampling, allowed_at=allowed_at,
                 cfg_scale=cfg_scale, stop_ids=())
  return [Generation(p, np.asarray(ids, np.int32), pre, dec) for p, (ids, pre, dec) in zip(prompts, runs)]
