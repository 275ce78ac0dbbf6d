"""The multimodal vocabulary: the one owner of every token id (text, VQGAN codes, `<eof>`, `<eov>`).

LWM keeps two embedding tables and two output heads: text (the LLaMA-2 SentencePiece vocabulary,
32000 rows) and vision (8448 rows: 8192 VQGAN codes, `<eof>` = 8192, `<eov>` = 8193, 254 unused).
MaxText has one embedding and one head, so we merge them into one table whose rows are exactly
LWM's two tables stacked (a converted LWM checkpoint is a concatenation, nothing is permuted):

    text id t                 -> t                         (0 .. text_size-1)
    vision code c             -> text_size + c             (`vision_id(c)`)
    <eof> (end of frame)      -> text_size + codebook_size
    <eov> (end of vision)     -> text_size + codebook_size + 1
    reserved vision rows      -> up to text_size + vision_rows - 1   (vision_rows = codebook + 256)
    dedicated <vision> </vision> (only with vision_markers="dedicated") -> the next two ids
    padding rows              -> up to `size` - 1           (size: a multiple of 128)

For LLaMA-2: 32000 + 8448 = 40448 = 316 * 128, so the default vocabulary has no padding rows.

A frame is `tokens_per_frame` codes (16x16 = 256 for LWM's 256x256 VQGAN). An image or a video of F
frames is laid out as LWM does (`lwm/data.py`, `VisionTextProcessor`):

    <vision> [frame 1 codes] <eof> [frame 2 codes] <eof> ... [frame F codes] <eov> </vision>

`<vision>` and `</vision>` are, by default, the ordinary text pieces LWM used (`'▁<', 'vision', '>'`
and `'▁</', 'vision', '>'`), encoded without a BOS (LWM's HEAD code prepends a stray BOS there; the
models were trained without it). `vision_markers="dedicated"` gives them two ids of their own
instead: one token each instead of three, unambiguous in decoded text and impossible to produce
by accident in text, but the rows are new (not in LWM checkpoints, they must be trained) and the
vocabulary grows by one block of 128 rows for LLaMA-2 (40448 -> 40576).

`is_vision(ids)` is True on the vision block (codes, `<eof>`, `<eov>` and the reserved rows), which
is LWM's `vision_mask`; the wrappers, BOS, EOS and text are False. The per-modality softmax that
makes one merged head equal to LWM's two heads lives in `lwm_plugin.losses.modality_softmax`; it reads
the partition from `MultimodalVocab.layout`.

This module never imports MaxText or JAX: the Grain loader and the converters use it directly.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import os
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import numpy as np
import sentencepiece as spm

LWM_CODEBOOK_SIZE = 8192          # LWM's VQGAN codebook
LWM_TOKENS_PER_FRAME = 256        # 16x16 codes per 256x256 frame
VISION_EXTRA_ROWS = 256           # LWM's vision table: codebook + 256 rows (eof, eov, 254 unused)
SIZE_MULTIPLE = 128               # total rows rounded up to this (sharding-friendly)
LLAMA2_ASSET = "assets/tokenizers/tokenizer.llama2"   # inside the installed maxtext package
VISION_OPEN, VISION_CLOSE = "<vision>", "</vision>"

VisionMarkers = Literal["text", "dedicated"]


@dataclasses.dataclass(frozen=True)
class VocabLayout:
  """The id partition, as plain ints (hashable: a static argument to jitted functions).

  Text modality: `[0, text_size)` plus `marker_ids`. Vision modality: `[vision_start, vision_end)`.
  Ids in neither (padding rows) are never targets and get no probability under the per-modality
  softmax.
  """
  text_size: int
  vision_start: int
  vision_end: int
  marker_ids: tuple[int, ...]
  size: int


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def llama2_tokenizer_path() -> Path:
  """The LLaMA-2 SentencePiece model shipped in the maxtext wheel (found without importing maxtext)."""
  spec = importlib.util.find_spec("maxtext")
  roots = list(spec.submodule_search_locations or []) if spec else []
  for root in roots:
    path = Path(root) / LLAMA2_ASSET
    if path.is_file():
      return path
  where = ", ".join(roots) if roots else "no maxtext package is installed"
  raise FileNotFoundError(
      f"the LLaMA-2 SentencePiece model {LLAMA2_ASSET!r} was not found in the maxtext package ({where}); "
      "install maxtext==0.2.5 or pass a tokenizer path (MultimodalVocab.from_tokenizer / lwm_tokenizer_path)")


def train_sentencepiece(lines: Iterable[str], vocab_size: int) -> bytes:
  """Trains a small LLaMA-style SentencePiece model in-process; returns the serialized model.

  LLaMA-2's settings where they matter for ids and for an exact Hugging Face export: BPE, unk 0,
  bos 1, eos 2, no pad, byte fallback, digits split, identity normalisation, whitespace kept as is. For
  demos and tests (e.g. 1000 pieces on a few hundred KB of text, well under a second).
  """
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines), model_writer=buf, vocab_size=vocab_size, model_type="bpe",
      byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True, character_coverage=0.9995,
      normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
      unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)
  return buf.getvalue()


class MultimodalVocab:
  """Text (any SentencePiece model) + a VQGAN codebook + `<eof>`/`<eov>`, in one id space.

  Build it with `MultimodalVocab.default()` (LLaMA-2, LWM-compatible), `from_tokenizer(path)`,
  `from_model_proto(bytes)` or `from_settings(config)`. Options (keyword-only, all constructors):
    codebook_size     VQGAN codebook entries (default 8192, LWM). The vision block has
                      codebook_size + 256 rows, as LWM's 8448; smaller codebooks are for tiny demos.
    tokens_per_frame  codes per frame (default 256 = 16x16, LWM).
    vision_markers    "text" (default, LWM-compatible) or "dedicated" (see the module docstring).
  """

  def __init__(self, model_proto: bytes, *, source: str = "<serialized model>",
               codebook_size: int = LWM_CODEBOOK_SIZE, tokens_per_frame: int = LWM_TOKENS_PER_FRAME,
               vision_markers: VisionMarkers = "text"):
    if codebook_size < 1:
      raise ValueError(f"codebook_size must be >= 1, got {codebook_size}")
    if tokens_per_frame < 1:
      raise ValueError(f"tokens_per_frame must be >= 1, got {tokens_per_frame}")
    if vision_markers not in ("text", "dedicated"):
      raise ValueError(f"vision_markers must be 'text' or 'dedicated', got {vision_markers!r}")
    self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.model_proto = model_proto
    self.source = source
    self.bos_id, self.eos_id, self.unk_id = self.sp.bos_id(), self.sp.eos_id(), self.sp.unk_id()
    if self.bos_id < 0 or self.eos_id < 0:
      raise ValueError(f"tokenizer {source}: the SentencePiece model must define BOS and EOS "
                       f"(bos_id={self.bos_id}, eos_id={self.eos_id})")
    self.text_size = self.sp.get_piece_size()
    self.codebook_size = codebook_size
    self.tokens_per_frame = tokens_per_frame
    self.vision_markers = vision_markers
    self.vision_rows = codebook_size + VISION_EXTRA_ROWS
    self.vision_start = self.text_size
    self.vision_end = self.text_size + self.vision_rows
    self.eof_id = self.vision_start + codebook_size
    self.eov_id = self.eof_id + 1
    if vision_markers == "dedicated":
      self.vision_open_ids = (self.vision_end,)
      self.vision_close_ids = (self.vision_end + 1,)
      marker_ids = (self.vision_end, self.vision_end + 1)
    else:
      self.vision_open_ids = tuple(self.sp.encode(VISION_OPEN))
      self.vision_close_ids = tuple(self.sp.encode(VISION_CLOSE))
      marker_ids = ()
    self.size = _round_up(self.vision_end + len(marker_ids), SIZE_MULTIPLE)
    self.layout = VocabLayout(self.text_size, self.vision_start, self.vision_end, marker_ids, self.size)

  # ------------------------------------------------------------------ constructors
  @classmethod
  def from_tokenizer(cls, path: str | os.PathLike, **options: Any) -> MultimodalVocab:
    """From a SentencePiece model file (`tokenizer.model`), e.g. a LLaMA-2 or a tiny demo model."""
    path = Path(path)
    if not path.is_file():
      raise FileNotFoundError(f"tokenizer {str(path)!r}: no such file (expected a SentencePiece .model file)")
    data = path.read_bytes()
    try:
      return cls(data, source=str(path), **options)
    except RuntimeError as e:  # sentencepiece's parse error
      raise ValueError(f"tokenizer {str(path)!r} is not a SentencePiece model: {e}") from e

  @classmethod
  def from_model_proto(cls, model_proto: bytes, **options: Any) -> MultimodalVocab:
    """From a serialized SentencePiece model (e.g. `train_sentencepiece(...)`)."""
    return cls(model_proto, **options)

  @classmethod
  def default(cls, **options: Any) -> MultimodalVocab:
    """LLaMA-2 text + LWM's 8192-code vision block: 40448 ids, exactly LWM's two tables stacked."""
    return cls.from_tokenizer(llama2_tokenizer_path(), **options)

  @classmethod
  def from_settings(cls, settings: Any) -> MultimodalVocab:
    """From the `lwm_*` vocabulary keys of a config (`LWMSettings` or `LWMConfig`)."""
    options = dict(codebook_size=settings.lwm_codebook_size, tokens_per_frame=settings.lwm_tokens_per_frame,
                   vision_markers=settings.lwm_vision_markers)
    if settings.lwm_tokenizer_path:
      return cls.from_tokenizer(settings.lwm_tokenizer_path, **options)
    return cls.default(**options)

  def __repr__(self) -> str:
    return (f"MultimodalVocab(source={self.source!r}, text_size={self.text_size}, codebook_size={self.codebook_size}, "
            f"vision_markers={self.vision_markers!r}, size={self.size})")

  def __getstate__(self) -> dict[str, Any]:  # for Grain worker processes
    return dict(model_proto=self.model_proto, source=self.source, codebook_size=self.codebook_size,
                tokens_per_frame=self.tokens_per_frame, vision_markers=self.vision_markers)

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__init__(state.pop("model_proto"), **state)

  def check_vocab_size(self, vocab_size: int, where: str = "config key vocab_size") -> None:
    """Raises ValueError unless a model's embedding/head size equals this vocabulary's `size`."""
    if vocab_size != self.size:
      raise ValueError(
          f"{where}={vocab_size}, but the multimodal vocabulary ({self.source}: text {self.text_size} + vision "
          f"{self.vision_rows} + markers {len(self.layout.marker_ids)}, rounded up to {SIZE_MULTIPLE}) has "
          f"{self.size} rows; set vocab_size: {self.size}")

  def is_text_model(self, vocab_size: int, where: str = "config key vocab_size") -> bool:
    """True for a text model (vocab_size = the tokenizer's `text_size`, as LWM's text stages), False for
    a multimodal one (vocab_size = `size`); any other size raises ValueError (see `check_vocab_size`)."""
    if vocab_size == self.text_size:
      return True
    self.check_vocab_size(vocab_size, where)
    return False

  # ------------------------------------------------------------------ ids
  def vision_id(self, code: int) -> int:
    """The merged id of VQGAN code `code`."""
    code = int(code)
    if not 0 <= code < self.codebook_size:
      raise ValueError(f"vision code {code} out of range [0, {self.codebook_size})")
    return self.vision_start + code

  def vision_ids(self, codes: Any) -> np.ndarray:
    """Vectorised `vision_id` (int32), with the same range check."""
    codes = self._codes_array(codes, "codes")
    return (codes + self.vision_start).astype(np.int32)

  def is_vision(self, ids: Any) -> np.ndarray:
    """True on the vision block (codes, `<eof>`, `<eov>`, reserved rows): LWM's vision mask."""
    ids = np.asarray(ids)
    return (ids >= self.vision_start) & (ids < self.vision_end)

  # ------------------------------------------------------------------ text
  def encode_text(self, text: str) -> list[int]:
    """SentencePiece ids of `text`: never a BOS or EOS (LWM's BOS pitfall), a dummy-prefix space as LLaMA."""
    if not isinstance(text, str):
      raise TypeError(f"encode_text expects a str, got {type(text).__name__}")
    return self.sp.encode(text)

  def decode_text(self, ids: Sequence[int]) -> str:
    """Text of text ids (BOS/EOS decode to nothing); any other id raises ValueError."""
    ids = [int(i) for i in ids]
    for pos, i in enumerate(ids):
      if not 0 <= i < self.text_size:
        raise ValueError(f"decode_text: id {i} at position {pos} is not a text id "
                         f"(text ids are 0..{self.text_size - 1})")
    return self.sp.decode(ids)

  # ------------------------------------------------------------------ vision
  def _codes_array(self, codes: Any, what: str) -> np.ndarray:
    arr = np.asarray(codes)
    if arr.dtype.kind not in "iu":
      raise ValueError(f"{what}: VQGAN codes must be integers, got dtype {arr.dtype}")
    if arr.size:
      lo, hi = int(arr.min()), int(arr.max())
      if lo < 0 or hi >= self.codebook_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{what}: vision code {bad} out of range [0, {self.codebook_size})")
    return arr.astype(np.int64)

  def encode_image(self, codes: Any) -> np.ndarray:
    """`<vision> codes <eov> </vision>` for one frame of `tokens_per_frame` codes (int32 ids)."""
    arr = self._codes_array(codes, "encode_image")
    if arr.shape != (self.tokens_per_frame,):
      raise ValueError(f"encode_image: expected {self.tokens_per_frame} codes of one frame, got shape {arr.shape}")
    return self.encode_video(arr[None])

  def encode_video(self, frames: Any) -> np.ndarray:
    """`<vision> f1 <eof> f2 <eof> ... fF <eov> </vision>` for frames of shape [F, tokens_per_frame]."""
    arr = self._codes_array(frames, "encode_video")
    if arr.ndim != 2 or arr.shape[1] != self.tokens_per_frame or arr.shape[0] < 1:
      raise ValueError(f"encode_video: expected frames of shape [F >= 1, {self.tokens_per_frame}], got {arr.shape}")
    ids_FxT = np.empty((arr.shape[0], self.tokens_per_frame + 1), np.int64)
    ids_FxT[:, :-1] = arr + self.vision_start
    ids_FxT[:, -1] = self.eof_id
    ids_FxT[-1, -1] = self.eov_id
    return np.concatenate([np.asarray(self.vision_open_ids, np.int64), ids_FxT.reshape(-1),
                           np.asarray(self.vision_close_ids, np.int64)]).astype(np.int32)

  def vision_span(self, n_frames: int) -> tuple[int, int, int]:
    """(wrapper tokens before, vision-mask tokens, wrapper tokens after) of an F-frame block."""
    return len(self.vision_open_ids), n_frames * (self.tokens_per_frame + 1), len(self.vision_close_ids)

  # ------------------------------------------------------------------ decode
  def decode(self, ids: Any) -> list[str | np.ndarray]:
    """Splits ids into text (str) and vision blocks (int arrays [F, tokens_per_frame] of codes).

    The `<vision>` / `</vision>` wrapper ids around a vision block are removed; BOS/EOS decode to
    nothing. A malformed block (a frame of the wrong length, a block not ending in `<eov>`, a
    reserved or padding id) raises ValueError naming the position.
    """
    ids = np.asarray(ids, np.int64).reshape(-1)
    vis = self.is_vision(ids)
    out: list[str | np.ndarray] = []
    pos, n = 0, len(ids)
    while pos < n:
      end = pos
      while end < n and vis[end] == vis[pos]:
        end += 1
      if vis[pos]:
        out.append(self._decode_vision_run(ids[pos:end], pos))
      else:
        run = ids[pos:end].tolist()
        if pos > 0 and _starts_with(run, self.vision_close_ids):
          run = run[len(self.vision_close_ids):]
        if end < n and _ends_with(run, self.vision_open_ids):
          run = run[:len(run) - len(self.vision_open_ids)]
        text = self._decode_text_run(run, pos)
        if text:
          out.append(text)
      pos = end
    return out

  def _decode_text_run(self, run: list[int], start: int) -> str:
    """Text ids to a string; a dedicated marker id outside its place decodes to its name."""
    names = dict(zip(self.layout.marker_ids, (VISION_OPEN, VISION_CLOSE)))
    parts, chunk = [], []
    for k, i in enumerate(run):
      if 0 <= i < self.text_size:
        chunk.append(i)
      elif i in names:
        parts += [self.sp.decode(chunk), names[i]]
        chunk = []
      else:
        raise ValueError(f"decode: id {i} at position {start + k} is neither text nor vision (a padding row)")
    return "".join(parts) + self.sp.decode(chunk)

  def _decode_vision_run(self, run: np.ndarray, start: int) -> np.ndarray:
    ends = np.flatnonzero((run == self.eof_id) | (run == self.eov_id))
    if len(ends) == 0 or run[ends[-1]] != self.eov_id or ends[-1] != len(run) - 1:
      raise ValueError(f"decode: the vision block at position {start} does not end with <eov> "
                       f"(id {self.eov_id})")
    if np.any(run[ends[:-1]] == self.eov_id):
      k = int(ends[np.flatnonzero(run[ends[:-1]] == self.eov_id)[0]])
      raise ValueError(f"decode: <eov> at position {start + k} inside a vision block (expected <eof>)")
    frame_len = self.tokens_per_frame + 1
    if len(run) % frame_len or not np.array_equal(ends, np.arange(frame_len - 1, len(run), frame_len)):
      raise ValueError(f"decode: the vision block at position {start} has frames that are not "
                       f"{self.tokens_per_frame} codes + <eof>/<eov> each")
    codes_FxT = run.reshape(-1, frame_len)[:, :-1] - self.vision_start
    if np.any(codes_FxT >= self.codebook_size):
      raise ValueError(f"decode: a reserved vision row in the vision block at position {start}")
    return codes_FxT


def _starts_with(run: list[int], prefix: tuple[int, ...]) -> bool:
  return len(run) >= len(prefix) and tuple(run[:len(prefix)]) == prefix


def _ends_with(run: list[int], suffix: tuple[int, ...]) -> bool:
  return len(run) >= len(suffix) and tuple(run[len(run) - len(suffix):]) == suffix
