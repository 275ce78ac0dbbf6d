"""The decoding loop (lwm_plugin/generation/loop.py) over a numpy bigram decoder with hand-computed outputs."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.toy_decoder import ToyDecoder

from data_loaders.vision_prompts import CODE
from lwm_plugin.generation import loop
from lwm_plugin.generation.sampling import Sampling

V = 8


def _chain_bigram() -> np.ndarray:
  """Greedy walks 1 -> 2 -> 3 -> 4 -> 5 -> 6 -> 7 -> 0 -> 1 (each id's best successor is id + 1 mod 8);
  each id's second best is id + 2."""
  bigram = np.zeros((V, V), np.float32)
  for i in range(V):
    bigram[i, (i + 1) % V] = 2.0
    bigram[i, (i + 2) % V] = 1.0
  return bigram


def test_greedy_batch_stops_at_stop_ids_and_max_new_tokens():
  decoder = ToyDecoder(_chain_bigram(), max_length=16, batch_multiple=4)
  out = loop.generate_text(decoder, [[1, 1], [1, 4], [1, 6, 6]], max_new_tokens=5, stop_ids=[5])
  # row 0: 2 3 4 5 (stop, kept); row 1: 5 (stop at once); row 2: 7 0 1 2 3 (max_new_tokens)
  assert [g.new_ids.tolist() for g in out] == [[2, 3, 4, 5], [5], [7, 0, 1, 2, 3]]
  assert [g.new_tokens for g in out] == [4, 1, 5]
  assert [g.prompt_ids.tolist() for g in out] == [[1, 1], [1, 4], [1, 6, 6]]
  # padded to 4 rows; a stopped row is fed its stop id, padding rows id 0; no step after the last token
  assert [f.tolist() for f in decoder.fed] == [[2, 5, 7, 0], [3, 5, 0, 0], [4, 5, 1, 0], [5, 5, 2, 0]]
  for g in out:
    assert g.timing()["new_tokens"] == g.new_tokens and g.prefill_s >= 0 and g.decode_s >= 0


def test_allowed_ids_restrict_every_step():
  allowed = np.ones(V, bool)
  allowed[[3, 0]] = False  # from 2 the best (3) is forbidden: the second best (4); from 7: 1
  out = loop.generate_text(ToyDecoder(_chain_bigram()), [[1, 2], [1, 7]], max_new_tokens=3, allowed_V=allowed)
  assert [g.new_ids.tolist() for g in out] == [[4, 5, 6], [1, 2, 4]]


def test_seeded_sampling_is_reproducible_and_only_draws_allowed_ids():
  allowed = np.zeros(V, bool)
  allowed[[2, 5, 6]] = True
  s = Sampling(temperature=5.0, seed=11)
  a = loop.generate_text(ToyDecoder(_chain_bigram(), max_length=64), [[1, 1]] * 3, max_new_tokens=40, sampling=s,
                         allowed_V=allowed)
  b = loop.generate_text(ToyDecoder(_chain_bigram(), max_length=64), [[1, 1]] * 3, max_new_tokens=40, sampling=s,
                         allowed_V=allowed)
  assert all(np.array_equal(x.new_ids, y.new_ids) for x, y in zip(a, b))
  drawn = np.concatenate([g.new_ids for g in a])
  assert set(drawn.tolist()) == {2, 5, 6}
  assert len({tuple(g.new_ids) for g in a}) == 3  # the rows draw independently


def test_length_and_prompt_checks():
  decoder = ToyDecoder(_chain_bigram(), max_length=10)
  with pytest.raises(ValueError, match="a 8-token prompt plus 3 new tokens exceeds the decoder's max_length 10"):
    loop.generate_text(decoder, [[1] * 8], max_new_tokens=3)
  with pytest.raises(ValueError, match="prompt 1 is empty"):
    loop.generate_text(decoder, [[1], []], max_new_tokens=1)
  with pytest.raises(ValueError, match="outside the model's vocabulary"):
    loop.generate_text(decoder, [[1, V]], max_new_tokens=1)
  with pytest.raises(ValueError, match="allow no token id"):
    loop.generate_text(decoder, [[1]], max_new_tokens=1, allowed_V=np.zeros(V, bool))
  loop.generate_text(decoder, [[1] * 7], max_new_tokens=3)  # exactly fits


def test_classifier_free_guidance_by_hand():
  """Codes are ids 2..5, <eof> 6, <eov> 7; frames of 2 codes; cond prompt [1, 0, 1], uncond [1, 1].

  Logits = bigram[last] + bias[prompt[1]] (toy decoder). Step 0, over codes 2..5:
    cond   = bigram[1] + bias[0] = [1.0, 2.0, 0.0, 0.6]
    uncond = bigram[1] + bias[1] = [1.0, 1.9, 0.0, 0.0]
    scale 1  (cond alone)  -> 3
    scale 3:  uncond + 3 (cond - uncond)  = [1.0, 2.2, 0.0, 1.8] -> 3
    scale 30: uncond + 30 (cond - uncond) = [1.0, 4.9, 0.0, 18.0] -> 5
  Later steps are checked against a step-by-step recomputation.
  """
  bigram = np.zeros((V, V), np.float32)
  bigram[1, 2:6] = [1.0, 1.5, 0.0, 0.0]
  for k in range(2, 6):
    bigram[k, 2 + (k - 1) % 4] = 1.0  # each code's successor code
  bias = np.zeros((V, V), np.float32)
  bias[0, 2:6] = [0.0, 0.5, 0.0, 0.6]   # cond
  bias[1, 2:6] = [0.0, 0.4, 0.0, 0.0]   # uncond
  schedule = np.array([CODE, CODE, 6, CODE, CODE, 7])
  codes = np.zeros(V, bool)
  codes[2:6] = True
  cond, uncond = np.array([1, 0, 1]), np.array([1, 1])
  for scale, first in ((1.0, 3), (3.0, 3), (30.0, 5)):
    decoder = ToyDecoder(bigram, bias, max_length=16, batch_multiple=4)
    out = loop.generate_vision(decoder, [cond], uncond, schedule=schedule, code_mask_V=codes, cfg_scale=scale)
    ids = out[0].new_ids.tolist()
    want, last = [], 1
    for forced in schedule:  # independent recomputation, step by step
      c, u = bigram[last] + bias[0], bigram[last] + bias[1]
      last = int(forced) if forced != CODE else int(np.argmax(np.where(codes, u + scale * (c - u), -np.inf)))
      want.append(last)
    assert ids == want, (scale, ids, want)
    assert ids[0] == first and ids[2] == 6 and ids[5] == 7  # step 0 by hand; frame ends forced
    assert all(2 <= i <= 5 for i in (ids[0], ids[1], ids[3], ids[4]))
    assert [p.tolist() for p in decoder.prefills[0]] == [cond.tolist(), uncond.tolist()]
    for fed in decoder.fed:  # the same id fed to the conditional and the unconditional row; padding 0
      assert fed[0] == fed[1] and fed[2:].tolist() == [0, 0]
    assert [f[0] for f in decoder.fed] == ids[:-1]
    assert out[0].new_tokens == 6


def test_batch_of_guided_prompts_pairs_rows():
  """Two prompts: rows [cond 0, cond 1, uncond, uncond]; each pair fed its own prompt's id."""
  bias = np.zeros((V, V), np.float32)
  bias[0, 2], bias[3, 4] = 5.0, 5.0
  codes = np.zeros(V, bool)
  codes[2:6] = True
  decoder = ToyDecoder(np.zeros((V, V), np.float32), bias)
  out = loop.generate_vision(decoder, [[1, 0], [1, 3]], np.array([1, 1]), schedule=np.array([CODE, CODE, 7]),
                             code_mask_V=codes, cfg_scale=2.0)
  assert [g.new_ids.tolist() for g in out] == [[2, 2, 7], [4, 4, 7]]
  assert [f.tolist() for f in decoder.fed] == [[2, 4, 2, 4], [2, 4, 2, 4]]


def test_vision_generation_needs_codes():
  with pytest.raises(ValueError, match="code_mask_V"):
    loop.generate_vision(ToyDecoder(_chain_bigram()), [[1, 2]], np.array([1, 1]), schedule=np.array([CODE]),
                         code_mask_V=np.zeros(V, bool), cfg_scale=1.0)


def test_prompts_are_decoded_in_batches_of_the_decode_batch():
  decoder = ToyDecoder(_chain_bigram(), batch_multiple=2)
  out = loop.generate_text(decoder, [[1, k] for k in range(5)], max_new_tokens=2)
  assert [g.new_ids.tolist() for g in out] == [[(k + 1) % V, (k + 2) % V] for k in range(5)]
  assert [len(p) for p in decoder.prefills] == [2, 2, 1]
  codes = np.zeros(V, bool)
  codes[2:6] = True
  decoder = ToyDecoder(np.zeros((V, V), np.float32), batch_multiple=4)
  loop.generate_vision(decoder, [[1, 0]] * 3, np.array([1, 1]), schedule=np.array([CODE]), code_mask_V=codes,
                       cfg_scale=2.0)
  assert [len(p) for p in decoder.prefills] == [4, 2]  # two prompts and their two unconditional rows, then one
  with pytest.raises(ValueError, match="guidance needs a decode batch of at least 2 rows"):
    loop.generate_vision(ToyDecoder(np.zeros((V, V)), batch_multiple=1), [[1, 0]], np.array([1, 1]),
                         schedule=np.array([CODE]), code_mask_V=codes, cfg_scale=2.0)
