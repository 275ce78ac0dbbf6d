"""The one place where the converters meet the multimodal vocabulary.

The vocabulary itself is `lwm_plugin.vocab.MultimodalVocab` (text ids first, then the vision
table: VQ codes, `<eof>`, `<eov>`, reserved rows, padded to a multiple of 128). The converters only
need the protocol below, so they take a vocabulary object as an argument; `load` builds the real
one for the command line. LWM's separate vision table (8448 rows) maps to merged ids
`text_size + v`, which is exactly "text rows, then vision rows" in one table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from conversion.spec import ConversionError


class Vocabulary(Protocol):
  """What the converters use of `lwm_plugin.vocab.MultimodalVocab`."""

  text_size: int
  codebook_size: int
  size: int
  eof_id: int
  eov_id: int

  def vision_id(self, code: int) -> int:
    ...

  def export_hf_tokenizer(self, out_dir: str | Path) -> None:
    ...


def load(tokenizer: str | None) -> Vocabulary:
  """The multimodal vocabulary over `tokenizer` (default: LLaMA-2's SentencePiece model)."""
  try:
    from lwm_plugin.vocab import MultimodalVocab  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ConversionError(f"the multimodal vocabulary (lwm_plugin.vocab) is not available: {e}") from e
  return MultimodalVocab.from_tokenizer(tokenizer) if tokenizer else MultimodalVocab.default()


def describe(vocab: Vocabulary) -> str:
  return f"text vocabulary {vocab.text_size} ids, multimodal vocabulary {vocab.size} ids"


def check_model_vocab(vocab: Vocabulary, model_vocab: int, where: str) -> bool:
  """True for a multimodal model, False for a text-only one; else a ConversionError."""
  if model_vocab == vocab.size:
    return True
  if model_vocab == vocab.text_size:
    return False
  raise ConversionError(f"{where}: vocab_size={model_vocab} matches neither the {describe(vocab)} "
                        "(choose the tokenizer with --tokenizer, or set vocab_size in the config)")


def check_vision_layout(vocab: Vocabulary, text_rows: int, vision_rows: int, where: str) -> None:
  """LWM's tables (`text_rows` text ids, `vision_rows` vision ids) must map onto `vocab` as text + v."""
  if text_rows != vocab.text_size:
    raise ConversionError(f"{where}: the text table has {text_rows} rows but the tokenizer has {vocab.text_size} ids")
  if vocab.vision_id(0) != vocab.text_size or vocab.eof_id != vocab.vision_id(vocab.codebook_size):
    raise ConversionError(f"{where}: the vocabulary does not place vision ids right after the text ids")
  if text_rows + vision_rows > vocab.size:
    raise ConversionError(f"{where}: {text_rows} text + {vision_rows} vision rows exceed the {describe(vocab)}")
  if vision_rows < vocab.codebook_size + 2:
    raise ConversionError(f"{where}: the vision table has {vision_rows} rows, fewer than the "
                          f"{vocab.codebook_size} codes + <eof> + <eov> of the vocabulary")
