"""The LWM chat template: exact tokens, loss only on assistant turns, JSONL `messages` lines, errors."""

import json

import numpy as np
import pytest

from data_loaders.chat_template import chat_example, chat_prompt
from data_loaders.lwm_format import LWMFormatError, example_from_line
from data_loaders.vocab import MultimodalVocab

CODES = list(range(256))


@pytest.fixture(scope="module")
def vocab():
  return MultimodalVocab.default()


def test_vision_question_exact_tokens_and_masks(vocab):
  ex = chat_example(vocab, [{"role": "user", "content": "What is this?", "vision": CODES},
                            {"role": "assistant", "content": "A dog."}])
  prompt = vocab.encode_text("You are a helpful assistant. USER: What is this?")
  image = vocab.encode_image(CODES).tolist()
  assistant, answer = vocab.encode_text("ASSISTANT:"), vocab.encode_text("A dog.")
  assert assistant == [319, 1799, 9047, 13566, 29901]  # '▁A' 'SS' 'IST' 'ANT' ':' -- no lone '▁'
  assert ex["tokens"].tolist() == [1] + prompt + image + assistant + answer + [2]
  n_prompt = 1 + len(prompt) + len(image) + len(assistant)
  assert ex["loss_mask"].tolist() == [0] * n_prompt + [1] * (len(answer) + 1)
  assert ex["is_vision"].sum() == 257 and ex["is_vision"][1 + len(prompt) + 3]


def test_multi_turn_loss_only_on_assistant_turns(vocab):
  messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
              {"role": "user", "content": "Draw a cat."}, {"role": "assistant", "content": "", "vision": CODES}]
  ex = chat_example(vocab, messages)
  trained = ex["tokens"][ex["loss_mask"] == 1].tolist()
  assert trained == vocab.encode_text("Hello!") + [2] + vocab.encode_image(CODES).tolist() + [2]
  prompt = ex["tokens"][ex["loss_mask"] == 0].tolist()
  assert prompt == ([1] + vocab.encode_text("You are a helpful assistant. USER: Hi") + vocab.encode_text("ASSISTANT:")
                    + vocab.encode_text("USER: Draw a cat.") + vocab.encode_text("ASSISTANT:"))


def test_generation_prompt_is_lwms_prompt_string(vocab):
  assert chat_prompt("Why?") == "You are a helpful assistant. USER: Why? ASSISTANT:"
  ex = chat_example(vocab, [{"role": "user", "content": "Why?"}])
  assert ex["tokens"].tolist() == [1] + vocab.encode_text(chat_prompt("Why?"))
  assert not ex["loss_mask"].any()


def test_messages_lines_and_system_prompt(vocab):
  line = json.dumps({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                  {"role": "assistant", "content": "Yo"}]})
  ex = example_from_line(line, vocab)
  assert ex["tokens"].tolist() == ([1] + vocab.encode_text("Be brief. USER: Hi") + vocab.encode_text("ASSISTANT:")
                                   + vocab.encode_text("Yo") + [2])
  assert vocab.decode(ex["tokens"]) == ["Be brief. USER: Hi ASSISTANT: Yo"]


@pytest.mark.parametrize("messages, message", [
    ([], "non-empty list"),
    ([{"role": "assistant", "content": "x"}], "role 'assistant', expected 'user'"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "role 'user', expected 'assistant'"),
    ([{"role": "user", "content": 3}], "string 'content'"),
    ([{"role": "user", "content": ""}], "neither content nor vision"),
    ([{"role": "user", "content": "x", "vision": [9000] * 256}], "vision code 9000 out of range"),
    ([{"role": "system", "content": "x"}], "at least one user message"),
])
def test_bad_conversations(vocab, messages, message):
  with pytest.raises(LWMFormatError, match=message):
    example_from_line(json.dumps({"messages": messages}), vocab, source="chat.jsonl", line_number=3)


def test_vision_budget_applies_to_chat(vocab):
  from data_loaders.lwm_format import FormatOptions
  video = [[f] * 256 for f in range(6)]
  line = json.dumps({"messages": [{"role": "user", "content": "Describe.", "vision": video},
                                  {"role": "assistant", "content": "Frames."}]})
  ex = example_from_line(line, vocab, options=FormatOptions(max_frames=3))
  firsts = ex["tokens"][ex["is_vision"]].reshape(-1, 257)[:, 0] - vocab.vision_start
  np.testing.assert_array_equal(firsts, [0, 2, 5])
