"""A scripted QA generator for tests: parseable answers that name their chunk, seeded failures.

For a prompt made by `longqa.chunk_prompt` with the default template, the answer is a question
quoting the chunk's first six words and an answer quoting its last four, so a test can trace each QA
turn to its chunk; it fails (no QA in the text) on about a quarter of (prompt, seed) pairs, so
retries matter, and always on a chunk holding the word "UNANSWERABLE".
"""

from __future__ import annotations

import hashlib

from data_loaders.chat_template import chat_prompt
from data_loaders.longqa import DEFAULT_TEMPLATE, PLACEHOLDER

PREFIX = DEFAULT_TEMPLATE[:DEFAULT_TEMPLATE.index(PLACEHOLDER)]
FAILURE = "I cannot think of a question."


def scripted_answer(prompt: str, seed: int) -> str:
  assert prompt.startswith(PREFIX), prompt[:200]
  words = prompt[len(PREFIX):].split()
  if "UNANSWERABLE" in words or hashlib.sha256(f"{seed}:{prompt}".encode()).digest()[0] % 4 == 0:
    return FAILURE
  return (f"Sure.\nQuestion: Which paragraph starts with {' '.join(words[:6])}?\n"
          f"Answer: The one ending {' '.join(words[-4:])}")


def scripted_completion(chat_text: str, seed: int) -> str:
  """The same for a completions endpoint, which is sent the chat template as text."""
  head, tail = chat_prompt("\x00").split("\x00")
  assert chat_text.startswith(head) and chat_text.endswith(tail), chat_text[:200]
  return scripted_answer(chat_text[len(head):-len(tail)], seed)


class ScriptedGenerator:
  """A picklable `TextGenerator` (and its own factory) answering with `scripted_answer`."""

  def __call__(self):
    return self

  def generate(self, prompts, seed):
    return [scripted_answer(p, seed) for p in prompts]
