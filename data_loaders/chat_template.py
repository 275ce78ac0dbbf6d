"""The chat template of LWM's chat stages: "You are a helpful assistant. USER: ... ASSISTANT: ...".

LWM's chat and needle prompts (`vision_chat.py`, `eval_needle.py`, `sample_pyt.py`) are
`"You are a helpful assistant. USER: {question} ASSISTANT:"`; the answer follows and ends with EOS.
Our token layout of a conversation (each text piece encoded on its own, without BOS, like every
LWM field; loss mask in brackets):

    BOS[0]
    "You are a helpful assistant. USER: {user 1}"[0]  <vision> codes <eov> </vision>[0]  (if the turn has vision)
    "ASSISTANT:"[0]  "{assistant 1}"[1]  <vision> ... </vision>[1]  (if it has vision)  EOS[1]
    "USER: {user 2}"[0]  ...  "ASSISTANT:"[0]  "{assistant 2}"[1]  EOS[1]  ...

Loss is only on assistant turns and the EOS that closes them. Vision in a user turn follows its
text, as in LWM's `vision_chat.py` ("USER: {question}\\n<vision>...</vision> ASSISTANT:"). A
conversation ending with a user turn is a generation prompt (it ends with "ASSISTANT:").
Because LLaMA pieces never contain an inner "▁", the text-only layout is exactly the tokenization of
the one string `HF_CHAT_TEMPLATE` renders, so an exported Hugging Face tokenizer's
`apply_chat_template` gives the same ids (tested). One deliberate difference from LWM's inference
code: it encodes " ASSISTANT:" with a leading space, which costs a lone "▁" token (id 29871);
we do not emit that token.

A JSONL line `{"messages": [{"role": "user", "content": "...", "vision": [codes]}, {"role":
"assistant", "content": "..."}]}` is read with this template by `data_loaders.lwm_format`; an
optional first `{"role": "system", "content": ...}` replaces the system prompt.
"""

from __future__ import annotations

from typing import Any, Sequence

from data_loaders.examples import Example, ExampleBuilder, LWMFormatError, vision_frames
from data_loaders.vocab import MultimodalVocab

SYSTEM_PROMPT = "You are a helpful assistant."
USER, ASSISTANT = "USER:", "ASSISTANT:"

# The same layout for `transformers` (text only; vision codes have no string form there).
HF_CHAT_TEMPLATE = (
    "{%- set system = 'You are a helpful assistant.' -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] -%}{%- set messages = messages[1:] -%}"
    "{%- endif -%}"
    "{{- bos_token -}}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'user' -%}"
    "{{- (system + ' ' if loop.first and system else '') + 'USER:' + (' ' + m['content'] if m['content'] else '')"
    " + ' ASSISTANT:' -}}"
    "{%- elif m['role'] == 'assistant' -%}"
    "{{- (' ' + m['content'] if m['content'] else '') + eos_token -}}"
    "{%- else -%}{{- raise_exception('LWM chat: roles must be user or assistant') -}}"
    "{%- endif -%}"
    "{%- endfor -%}")


def chat_prompt(question: str, system: str = SYSTEM_PROMPT) -> str:
  """The one-turn prompt string LWM's chat and needle evaluations use (no BOS)."""
  return f"{system} {USER} {question} {ASSISTANT}"


def chat_example(vocab: MultimodalVocab, messages: Sequence[Any], *, system: str = SYSTEM_PROMPT,
                 frame_limit: int | None = None) -> Example:
  """A conversation -> `{"tokens", "loss_mask", "is_vision"}` with loss on assistant turns only.

  `messages` alternate user/assistant, starting with user (an optional first system message replaces
  `system`); each has `content` (str) and optionally `vision` (codes, flat or per frame). Raises
  `LWMFormatError` for a malformed conversation.
  """
  if not isinstance(messages, list) or not messages:
    raise LWMFormatError("field", "messages must be a non-empty list")
  for k, m in enumerate(messages):
    if not isinstance(m, dict) or not isinstance(m.get("content", ""), str):
      raise LWMFormatError("type", f"message {k} must be an object with a string 'content'")
  if messages[0].get("role") == "system":
    system, messages = messages[0].get("content", ""), messages[1:]
    if not messages:
      raise LWMFormatError("empty", "a conversation needs at least one user message after the system message")
  builder = ExampleBuilder(vocab)
  builder.add([vocab.bos_id], loss=False, content=False)
  for k, m in enumerate(messages):
    role, want = m.get("role"), ("user", "assistant")[k % 2]
    if role != want:
      raise LWMFormatError("field", f"message {k} has role {role!r}, expected {want!r} (user and assistant alternate)")
    content = m.get("content", "")
    vision = None
    if "vision" in m:
      vision = vision_frames(m["vision"], vocab, frame_limit, f"message {k} vision")
    if not content and vision is None:
      raise LWMFormatError("empty", f"message {k} has neither content nor vision")
    if role == "user":
      prefix = [system] if (k == 0 and system) else []
      builder.add_text(" ".join(prefix + [USER] + ([content] if content else [])), loss=False)
      if vision is not None:
        builder.add_vision(vision, loss=False)
      builder.add_text(ASSISTANT, loss=False)
    else:
      if content:
        builder.add_text(content, loss=True)
      if vision is not None:
        builder.add_vision(vision, loss=True)
      builder.add([vocab.eos_id], loss=True)
  return builder.build()
