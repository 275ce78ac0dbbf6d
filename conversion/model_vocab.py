"""Where the converters meet the multimodal vocabulary (`data_loaders.vocab.MultimodalVocab`).

The vocabulary comes from the config's `lwm_*` keys (`MultimodalVocab.from_settings`: the
tokenizer, codebook size, vision markers), so the converters and training agree on every id.
A model is multimodal when its `vocab_size` is the vocabulary's `size`, text-only when it is the
tokenizer's `text_size`. LWM's separate vision table (`vision_rows` = codebook + 256 rows) maps to
merged ids `text_size + v`, i.e. "text rows, then vision rows" in one table; rows after those
(dedicated `<vision>`/`</vision>` markers, padding to a multiple of 128) are new.

Tokenizer export: a multimodal model gets the vocabulary's own Hugging Face export (every row
named). A text-only model gets the same export with the names of the non-text rows removed, so
`len(tokenizer) == vocab_size` (a 40448-entry tokenizer on a 32000-row model misleads users).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from data_loaders.vocab import MultimodalVocab
from data_loaders.vocab_hf import export_hf_tokenizer

from conversion.spec import ConversionError


def load(config: Any) -> MultimodalVocab:
  """The vocabulary the config trains with."""
  try:
    return MultimodalVocab.from_settings(config)
  except (OSError, ValueError) as e:
    raise ConversionError(f"vocabulary from the config's lwm_* keys: {e}") from e


def describe(vocab: MultimodalVocab) -> str:
  return f"tokenizer {vocab.source}: {vocab.text_size} text ids, {vocab.size} multimodal ids"


def is_multimodal(vocab: MultimodalVocab, model_vocab: int, where: str) -> bool:
  """True for a multimodal model, False for a text-only one (the vocabulary's own rule,
  `MultimodalVocab.is_text_model`), else a ConversionError naming `where`."""
  try:
    return not vocab.is_text_model(model_vocab, f"{where}: vocab_size")
  except ValueError as e:
    raise ConversionError(f"{e} (or the text vocabulary's {vocab.text_size} for a text model; {describe(vocab)})") from e


def check_lwm_tables(vocab: MultimodalVocab, text_rows: int, vision_rows: int, where: str) -> None:
  """LWM's text and vision tables must be this vocabulary's text ids and vision block."""
  if text_rows != vocab.text_size:
    raise ConversionError(f"{where}: the text table has {text_rows} rows, the {describe(vocab)}")
  if vision_rows != vocab.vision_rows or vocab.vision_start != vocab.text_size:
    raise ConversionError(f"{where}: the vision table has {vision_rows} rows; the vocabulary's vision block has "
                          f"{vocab.vision_rows} (codebook {vocab.codebook_size} + 256) starting at {vocab.vision_start}")


def export_tokenizer(vocab: MultimodalVocab, out_dir: str | os.PathLike, *, multimodal: bool,
                     model_max_length: int) -> None:
  """Writes the tokenizer files of a multimodal or text-only model into `out_dir`."""
  export_hf_tokenizer(vocab, out_dir, model_max_length=model_max_length)
  if multimodal:
    return
  # tokenizer.json (the `tokenizers` format) lists added tokens with their ids; drop the non-text rows.
  path = Path(out_dir) / "tokenizer.json"
  data = json.loads(path.read_text(encoding="utf-8"))
  data["added_tokens"] = [t for t in data["added_tokens"] if t["id"] < vocab.text_size]
  path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
  config_path = Path(out_dir) / "tokenizer_config.json"
  config = json.loads(config_path.read_text(encoding="utf-8"))
  config.pop("lwm_vocab", None)   # describes the multimodal id layout, which this model does not have
  config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
