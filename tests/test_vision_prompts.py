"""Inference prompt layouts (data_loaders/vision_prompts.py) against hand-written LLaMA-2 id lists.

Ids from docs/vocabulary.md: BOS 1, EOS 2, `<vision>` = 529 4924 29958, `</vision>` = 1533 4924 29958,
code c = 32000 + c, `<eof>` 40192, `<eov>` 40193; the text pieces are LLaMA-2's (written out below).
"""

from __future__ import annotations

import numpy as np
import pytest

from data_loaders import vision_prompts as vp
from data_loaders.chat_template import chat_example
from data_loaders.vocab import MultimodalVocab

SYSTEM_USER = [887, 526, 263, 8444, 20255, 29889, 3148, 1001, 29901]  # ▁You ▁are ▁a ▁helpful ▁assistant . ▁US ER :
WHAT_IS_THIS = [1724, 338, 445, 29973]                                 # ▁What ▁is ▁this ?
ASSISTANT = [319, 1799, 9047, 13566, 29901]                            # ▁A SS IST ANT :
OPEN, CLOSE = [529, 4924, 29958], [1533, 4924, 29958]


@pytest.fixture(name="vocab", scope="module")
def fixture_vocab() -> MultimodalVocab:
  return MultimodalVocab.default()


def test_chat_prompt(vocab):
  assert vp.chat_prompt_ids(vocab, "What is this?").tolist() == [1, *SYSTEM_USER, *WHAT_IS_THIS, *ASSISTANT]


def test_vision_chat_prompt_puts_the_frames_after_the_question(vocab):
  frames = np.array([[0] * 255 + [7], [8191] * 256])
  want = [1, *SYSTEM_USER, *WHAT_IS_THIS, *OPEN, *([32000] * 255), 32007, 40192, *([40191] * 256), 40193, *CLOSE,
          *ASSISTANT]
  assert vp.chat_prompt_ids(vocab, "What is this?", vision_FxT=frames).tolist() == want


def test_next_turn_continues_the_conversation_token_exactly(vocab):
  first = vp.chat_prompt_ids(vocab, "What is this?")
  answer = vocab.encode_text("A dog.")
  second = vp.next_turn_ids(vocab, first, answer, "And now?")
  assert second.tolist() == [*first.tolist(), *answer, 2, 3148, 1001, 29901, 1126, 1286, 29973, *ASSISTANT]
  assert np.array_equal(vp.next_turn_ids(vocab, first, [*answer, 2], "And now?"), second)  # EOS not doubled
  conversation = [{"role": "user", "content": "What is this?"}, {"role": "assistant", "content": "A dog."},
                  {"role": "user", "content": "And now?"}]
  assert second.tolist() == chat_example(vocab, conversation)["tokens"].tolist()  # the training layout


def test_generation_prompts(vocab):
  generate = [3251, 403]  # ▁Gener ate
  assert vp.generation_prompt_ids(vocab, "a dog", "image").tolist() == [
      1, *SYSTEM_USER, *generate, 385, 1967, 310, 263, 11203, *ASSISTANT, *OPEN]  # ▁an ▁image ▁of ▁a ▁dog
  assert vp.generation_prompt_ids(vocab, "a dog", "video").tolist() == [
      1, *SYSTEM_USER, *generate, 263, 4863, 310, 263, 11203, *ASSISTANT, *OPEN]  # ▁a ▁video ▁of ▁a ▁dog
  assert vp.generation_prompt_ids(vocab, "a dog", "image", raw=True).tolist() == [1, 263, 11203, *OPEN]
  assert vp.unconditional_ids(vocab).tolist() == [1, *OPEN]
  assert vp.raw_prompt_ids(vocab, "a dog").tolist() == [1, 263, 11203]
  with pytest.raises(ValueError, match="'gif'"):
    vp.generation_prompt_ids(vocab, "a dog", "gif")


def test_frame_schedule_and_masks(vocab):
  schedule = vp.frame_schedule(vocab, 3)
  assert len(schedule) == 3 * 257
  assert schedule[256] == 40192 and schedule[513] == 40192 and schedule[770] == 40193
  assert set(np.delete(schedule, [256, 513, 770]).tolist()) == {vp.CODE}
  codes = vp.code_mask(vocab, 40448)
  assert np.flatnonzero(codes).tolist() == list(range(32000, 40192))
  assert np.flatnonzero(vp.text_mask(vocab, 40448)).tolist() == list(range(32000))
  with pytest.raises(ValueError, match="vocab_size 32000 has no vision block"):
    vp.code_mask(vocab, 32000)
  with pytest.raises(ValueError, match="at least 1 frame"):
    vp.frame_schedule(vocab, 0)
