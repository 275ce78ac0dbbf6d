"""Prompt ids for inference: text chat, vision understanding, image/video generation (LWM's layouts).

Pure token logic over `MultimodalVocab` (no model): `lwm-generate` builds its prompts here and the
decoding loop (`lwm_plugin.generation.loop`) reads the masks and the frame schedule. The layouts are
the training layouts of `data_loaders.chat_template`, so a model sees at inference what it saw in
training, and they are LWM's (`vision_chat.py`, `vision_generation.py`):

  chat / vision understanding  <s> "You are a helpful assistant. USER: {question}" [<vision> f1 <eof> ...
                               fF <eov> </vision>] "ASSISTANT:"    (the vision follows the question, as LWM)
  next chat turn               previous prompt + answer + </s> "USER: {question}" "ASSISTANT:"
  generation, conditional      <s> "You are a helpful assistant. USER: Generate an image of {caption}"
                               "ASSISTANT:" <vision>              ("a video of" for videos)
  generation, unconditional    <s> <vision>                       (LWM's classifier-free-guidance branch)
  raw                          <s> "{text}"  (+ <vision> when generating): no chat template

Generated vision is LWM's frame layout: F frames of `tokens_per_frame` codes, each followed by
`<eof>`, the last by `<eov>` (`frame_schedule`: which positions are forced). The `</vision>` that
closes the block in training data is not generated: the caller knows where the block ends.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np

from data_loaders.chat_template import ASSISTANT, SYSTEM_PROMPT, USER, chat_example
from data_loaders.vocab import MultimodalVocab

GenerateKind = Literal["image", "video"]
CODE = -1  # `frame_schedule` marker: a position where any VQGAN code may be drawn


def chat_prompt_ids(vocab: MultimodalVocab, question: str, *, vision_FxT: np.ndarray | None = None,
                    system: str = SYSTEM_PROMPT) -> np.ndarray:
  """int32 ids of a one-turn chat prompt ending in "ASSISTANT:", with the vision block after the question."""
  message = {"role": "user", "content": question}
  if vision_FxT is not None:
    message["vision"] = np.asarray(vision_FxT).tolist()
  return np.asarray(chat_example(vocab, [message], system=system)["tokens"], np.int32)


def next_turn_ids(vocab: MultimodalVocab, history_ids: Sequence[int], answer_ids: Sequence[int],
                  question: str) -> np.ndarray:
  """The prompt of the next chat turn: the previous prompt, its answer closed by `</s>`, the new question.

  Token-exact continuation of the conversation (the answer's own ids, not a re-encoding of its text),
  equal to `chat_example` of the whole conversation when the answer ids are the encoding of its text.
  """
  answer = [int(i) for i in answer_ids]
  if not answer or answer[-1] != vocab.eos_id:
    answer.append(vocab.eos_id)
  turn = vocab.encode_text(f"{USER} {question}") + vocab.encode_text(ASSISTANT)
  return np.asarray([*map(int, history_ids), *answer, *turn], np.int32)


def raw_prompt_ids(vocab: MultimodalVocab, text: str) -> np.ndarray:
  """`<s>` and the text's ids, no template (`lwm-generate --raw`)."""
  return np.asarray([vocab.bos_id, *vocab.encode_text(text)], np.int32)


def generation_prompt_ids(vocab: MultimodalVocab, caption: str, kind: GenerateKind, *, raw: bool = False) -> np.ndarray:
  """The conditional prompt of image or video generation; it ends with `<vision>`, the model continues with codes."""
  if kind not in ("image", "video"):
    raise ValueError(f"generation kind {kind!r}: expected 'image' or 'video'")
  if raw:
    head = raw_prompt_ids(vocab, caption)
  else:
    head = chat_prompt_ids(vocab, f"Generate {'an image' if kind == 'image' else 'a video'} of {caption}")
  return np.concatenate([head, np.asarray(vocab.vision_open_ids, np.int32)])


def unconditional_ids(vocab: MultimodalVocab) -> np.ndarray:
  """`<s><vision>`: the unconditional branch of classifier-free guidance (LWM)."""
  return np.asarray([vocab.bos_id, *vocab.vision_open_ids], np.int32)


def frame_schedule(vocab: MultimodalVocab, n_frames: int) -> np.ndarray:
  """int32 [n_frames * (tokens_per_frame + 1)]: `CODE` where a code is drawn, else the forced id
  (`<eof>` after every frame but the last, `<eov>` after the last)."""
  if n_frames < 1:
    raise ValueError(f"n_frames {n_frames}: expected at least 1 frame")
  schedule_FxT = np.full((n_frames, vocab.tokens_per_frame + 1), CODE, np.int32)
  schedule_FxT[:, -1] = vocab.eof_id
  schedule_FxT[-1, -1] = vocab.eov_id
  return schedule_FxT.reshape(-1)


def text_mask(vocab: MultimodalVocab, vocab_size: int) -> np.ndarray:
  """bool [vocab_size]: the text ids (answers of chat and vision understanding are text)."""
  return np.arange(vocab_size) < vocab.text_size


def code_mask(vocab: MultimodalVocab, vocab_size: int) -> np.ndarray:
  """bool [vocab_size]: the VQGAN codes (inside a generated frame). A text model has none: ValueError."""
  if vocab_size < vocab.vision_end:
    raise ValueError(f"a model of vocab_size {vocab_size} has no vision block (the vocabulary needs {vocab.size}): "
                     "image and video generation need a multimodal model")
  ids = np.arange(vocab_size)
  return (ids >= vocab.vision_start) & (ids < vocab.vision_start + vocab.codebook_size)
