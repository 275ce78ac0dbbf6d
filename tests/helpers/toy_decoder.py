"""A numpy stand-in for `inference.CachedDecoder` whose logits are known by hand.

The logits of a row are `bigram[last id] + prompt_bias[prompt[1]]`: a bigram table plus a bias chosen
by the prompt's second id (its first after `<s>`), so a conditional and an unconditional prompt that
end in the same token still have different logits, as a real model's do. It records every prefill and
every fed id, and checks what the real decoder checks (at most `batch_multiple` prompts, that many rows
out, `max_length`).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class ToyState:
  logits_BxV: np.ndarray
  last_B: np.ndarray
  bias_BxV: np.ndarray
  length_B: np.ndarray


class ToyDecoder:
  """Implements the `lwm_plugin.generation.loop.Decoder` protocol in numpy."""

  def __init__(self, bigram_VxV: np.ndarray, prompt_bias_VxV: np.ndarray | None = None, *, max_length: int = 64,
               batch_multiple: int = 4):
    self.bigram = np.asarray(bigram_VxV, np.float32)
    self.vocab_size = self.bigram.shape[0]
    self.prompt_bias = (np.zeros_like(self.bigram) if prompt_bias_VxV is None
                        else np.asarray(prompt_bias_VxV, np.float32))
    self.max_length = max_length
    self.batch_multiple = batch_multiple
    self.prefills: list[list[np.ndarray]] = []
    self.fed: list[np.ndarray] = []

  def prefill(self, prompts):
    prompts = [np.asarray(p) for p in prompts]
    assert 0 < len(prompts) <= self.batch_multiple, "a prefill takes 1 to batch_multiple prompts"
    self.prefills.append(prompts)
    rows = self.batch_multiple
    last = np.zeros(rows, np.int64)
    bias = np.zeros((rows, self.vocab_size), np.float32)
    length = np.zeros(rows, np.int64)
    for i, p in enumerate(prompts):
      assert 0 < len(p) <= self.max_length
      last[i], length[i] = p[-1], len(p)
      bias[i] = self.prompt_bias[p[1]] if len(p) > 1 else 0.0
    return ToyState(self.bigram[last] + bias, last, bias, length)

  def step(self, state: ToyState, next_ids_B):
    next_ids_B = np.asarray(next_ids_B)
    assert next_ids_B.shape == state.last_B.shape, (next_ids_B.shape, state.last_B.shape)
    assert np.all(state.length_B < self.max_length), "stepped past max_length"
    self.fed.append(next_ids_B.copy())
    return ToyState(self.bigram[next_ids_B] + state.bias_BxV, next_ids_B, state.bias_BxV, state.length_B + 1)
