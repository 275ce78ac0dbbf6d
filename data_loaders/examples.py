"""The pieces every LWM example is built from: the example type, its builder, vision fields, the error.

Shared by the JSONL format (`data_loaders.lwm_format`) and the chat template
(`data_loaders.chat_template`), which sit above this module. An example is
`{"tokens": int32[N], "loss_mask": int32[N], "is_vision": bool[N]}`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from data_loaders.vocab import MultimodalVocab

Example = dict[str, np.ndarray]


class LWMFormatError(ValueError):
  """A bad line. `kind` is one of: json, spec, field, type, code, frames, empty, vision (in a text-only model)."""

  def __init__(self, kind: str, reason: str, source: str = "<line>", line_number: int = 0):
    self.kind, self.reason, self.source, self.line_number = kind, reason, source, line_number
    super().__init__(f"{source}:{line_number}: {reason}")

  def __reduce__(self):
    # Grain worker processes send exceptions back pickled; the default (`args` = the message)
    # would call __init__ with one argument.
    return type(self), (self.kind, self.reason, self.source, self.line_number)


class ExampleBuilder:
  """Accumulates (ids, loss, vision) pieces and emits the example arrays."""

  def __init__(self, vocab: MultimodalVocab):
    self.vocab = vocab
    self.tokens: list[np.ndarray] = []
    self.loss: list[np.ndarray] = []
    self.vision: list[np.ndarray] = []
    self.content = 0  # tokens other than the automatic BOS/EOS

  def add(self, ids: Any, loss: bool, content: bool = True) -> None:
    ids = np.asarray(ids, np.int32).reshape(-1)
    self.tokens.append(ids)
    self.loss.append(np.full(ids.shape, int(loss), np.int32))
    self.vision.append(self.vocab.is_vision(ids))
    self.content += len(ids) if content else 0

  def add_text(self, text: str, loss: bool) -> None:
    self.add(self.vocab.encode_text(text), loss)

  def add_vision(self, codes_FxT: np.ndarray, loss: bool) -> None:
    self.add(self.vocab.encode_video(codes_FxT), loss)

  def build(self) -> Example:
    return {"tokens": np.concatenate(self.tokens), "loss_mask": np.concatenate(self.loss),
            "is_vision": np.concatenate(self.vision)}


def vision_frames(value: Any, vocab: MultimodalVocab, frame_limit: int | None, what: str) -> np.ndarray:
  """A vision field (flat codes or a list of frames) -> int64 [F, tokens_per_frame], subsampled to the limit.

  Raises LWMFormatError (kind type/frames/code) without source; the caller adds file and line.
  """
  tpf = vocab.tokens_per_frame
  if isinstance(value, list) and not value:
    raise LWMFormatError("frames", f"{what} is empty, not a whole number (>= 1) of {tpf}-code frames")
  try:
    arr = np.asarray(value) if isinstance(value, list) else None
  except (ValueError, OverflowError):  # ragged frames
    arr = None
  if arr is None or arr.dtype.kind not in "iu" or arr.ndim not in (1, 2):
    raise LWMFormatError("type", f"{what} must be a list of integer VQGAN codes (flat, or one list per frame)")
  if arr.size == 0 or (arr.ndim == 1 and arr.size % tpf) or (arr.ndim == 2 and arr.shape[1] != tpf):
    raise LWMFormatError("frames", f"{what} has {arr.size} codes in shape {arr.shape}, "
                                   f"not a whole number (>= 1) of {tpf}-code frames")
  lo, hi = int(arr.min()), int(arr.max())
  if lo < 0 or hi >= vocab.codebook_size:
    raise LWMFormatError("code", f"{what}: vision code {lo if lo < 0 else hi} out of range [0, {vocab.codebook_size})")
  frames = arr.reshape(-1, tpf).astype(np.int64)
  if frame_limit is not None and len(frames) > frame_limit:
    frames = frames[np.linspace(0, len(frames) - 1, frame_limit).astype(int)]
  return frames
