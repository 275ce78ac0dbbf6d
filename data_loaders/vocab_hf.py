"""Hugging Face tokenizer export of a `MultimodalVocab` (`export_hf_tokenizer(vocab, out_dir)`).

Writes `tokenizer.model` (the SentencePiece model, unchanged), `tokenizer.json`,
`tokenizer_config.json` and `special_tokens_map.json`, so that
`transformers.AutoTokenizer.from_pretrained(out_dir)` gives the ids of `MultimodalVocab` and
`len(tokenizer) == vocab.size`: every row of the model has a name.

Why a hand-built `tokenizer.json`: transformers 5 converts a LLaMA `tokenizer.model` into a BPE
whose merges are ranked by piece id, and whose `Metaspace` pre-tokenizer adds no dummy-prefix space
before leading whitespace. Both differ from SentencePiece (whitespace-only pieces score -1e9, so they
merge last; the dummy prefix is always added): on Python's own help texts about a third of the
lines tokenize differently. We rank merges by SentencePiece score (then by id) and prepend/replace
whitespace with a normalizer, as SentencePiece does; the tests compare against `sentencepiece` on
real and random text, in `transformers`. Supported: BPE models with identity normalisation and no
whitespace removal (LLaMA-2, and models from `data_loaders.vocab.train_sentencepiece`); anything else
raises instead of exporting a tokenizer that would silently disagree.

Names of the non-text rows (special tokens, skipped by `decode(..., skip_special_tokens=True)`):
`<|vq_{c}|>` for code c, `<|eof|>`, `<|eov|>`, `<|vq_reserved_{k}|>`, with dedicated markers
`<vision>` and `</vision>`, then `<|unused_{k}|>` for padding rows. As for "<s>", `transformers`
matches these names in input text (so with dedicated markers the text "<vision>" becomes the marker
id), whereas `MultimodalVocab.encode_text` never produces a non-text id: the two agree on all text
that does not spell a special token's name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from sentencepiece import sentencepiece_model_pb2

from data_loaders.atomic_file import atomic_path
from data_loaders.chat_template import HF_CHAT_TEMPLATE
from data_loaders.vocab import MultimodalVocab

if TYPE_CHECKING:
  import tokenizers

_Piece = sentencepiece_model_pb2.ModelProto.SentencePiece


def row_names(vocab: MultimodalVocab) -> list[str]:
  """Names of ids `text_size .. size-1`, in id order."""
  names = [f"<|vq_{c}|>" for c in range(vocab.codebook_size)] + ["<|eof|>", "<|eov|>"]
  names += [f"<|vq_reserved_{k}|>" for k in range(vocab.vision_rows - vocab.codebook_size - 2)]
  if vocab.layout.marker_ids:
    names += ["<vision>", "</vision>"]
  names += [f"<|unused_{k}|>" for k in range(vocab.size - vocab.text_size - len(names))]
  return names


def _check_exportable(vocab: MultimodalVocab, proto: sentencepiece_model_pb2.ModelProto) -> None:
  where = f"HF export of tokenizer {vocab.source}"
  model_type = proto.trainer_spec.model_type
  if model_type != sentencepiece_model_pb2.TrainerSpec.BPE:
    name = sentencepiece_model_pb2.TrainerSpec.ModelType.Name(model_type)
    raise ValueError(f"{where}: only SentencePiece BPE models export exactly; this model is {name}")
  norm = proto.normalizer_spec
  if norm.precompiled_charsmap or norm.name not in ("identity", ""):
    raise ValueError(f"{where}: only identity normalisation exports exactly; this model uses {norm.name!r}")
  if norm.remove_extra_whitespaces:
    raise ValueError(f"{where}: the model removes extra whitespace, which the export cannot reproduce exactly")
  if proto.trainer_spec.treat_whitespace_as_suffix:
    raise ValueError(f"{where}: treat_whitespace_as_suffix models are not supported")
  user = [p.piece for p in proto.pieces if p.type == _Piece.USER_DEFINED]
  if user:
    raise ValueError(f"{where}: user-defined symbols are not supported ({user[:5]})")


def build_hf_tokenizer(vocab: MultimodalVocab) -> tokenizers.Tokenizer:
  """A `tokenizers.Tokenizer` equal to SentencePiece on text, with every non-text row named."""
  from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

  proto = sentencepiece_model_pb2.ModelProto()
  proto.ParseFromString(vocab.model_proto)
  _check_exportable(vocab, proto)
  pieces = [(p.piece, p.score, p.type) for p in proto.pieces]
  ids = {piece: i for i, (piece, _, _) in enumerate(pieces)}
  merges = []
  for i, (piece, score, kind) in enumerate(pieces):
    if kind != _Piece.NORMAL:
      continue
    for k in range(1, len(piece)):
      left, right = piece[:k], piece[k:]
      if left in ids and right in ids:
        merges.append((-score, i, ids[left], left, right))
  merges.sort(key=lambda m: m[:3])  # SentencePiece merges the highest-scoring piece first
  unk = pieces[vocab.unk_id][0] if vocab.unk_id >= 0 else None
  tok = Tokenizer(models.BPE(vocab=ids, merges=[(m[3], m[4]) for m in merges], unk_token=unk,
                             byte_fallback=proto.trainer_spec.byte_fallback, fuse_unk=True))
  dummy_prefix = proto.normalizer_spec.add_dummy_prefix
  steps = [normalizers.Prepend("▁")] if dummy_prefix else []
  tok.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", "▁")])
  tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
                                  + ([decoders.Strip(" ", 1, 0)] if dummy_prefix else []))
  specials = [piece for piece, _, kind in pieces if kind in (_Piece.CONTROL, _Piece.UNKNOWN)]
  tok.add_special_tokens([AddedToken(p, special=True, normalized=False) for p in specials])
  names = row_names(vocab)
  tok.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in names])
  for offset in (0, len(names) - 1):  # the added ids must follow the text ids without a gap
    got = tok.token_to_id(names[offset])
    if got != vocab.text_size + offset:
      raise RuntimeError(f"HF export: {names[offset]!r} got id {got}, expected {vocab.text_size + offset}")
  bos = pieces[vocab.bos_id][0]
  tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                     special_tokens=[(bos, vocab.bos_id)])
  return tok


def export_hf_tokenizer(vocab: MultimodalVocab, out_dir: str | os.PathLike, *,
                        model_max_length: int | None = None) -> list[Path]:
  """Writes a Hugging Face tokenizer (tokenizer.model, tokenizer.json, configs) giving `vocab`'s ids.

  `transformers.AutoTokenizer.from_pretrained(out_dir)` then encodes text exactly as
  `vocab.encode_text` (plus BOS with `add_special_tokens=True`) and names every other row
  (`<|vq_{c}|>`, `<|eof|>`, `<|eov|>`, ...). `out_dir` is created if needed; other files are left
  alone. Returns the files written.
  """

  tok = build_hf_tokenizer(vocab)  # raises before anything is written
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  bos, eos = vocab.sp.id_to_piece(vocab.bos_id), vocab.sp.id_to_piece(vocab.eos_id)
  special = {"bos_token": bos, "eos_token": eos}
  if vocab.unk_id >= 0:
    special["unk_token"] = vocab.sp.id_to_piece(vocab.unk_id)
  config = dict(
      tokenizer_class="PreTrainedTokenizerFast", **special, add_bos_token=True, add_eos_token=False,
      clean_up_tokenization_spaces=False, chat_template=HF_CHAT_TEMPLATE,
      lwm_vocab=dict(text_size=vocab.text_size, codebook_size=vocab.codebook_size, eof_id=vocab.eof_id,
                     eov_id=vocab.eov_id, vision_start=vocab.vision_start, vision_end=vocab.vision_end,
                     tokens_per_frame=vocab.tokens_per_frame, vision_markers=vocab.vision_markers, size=vocab.size))
  if model_max_length is not None:
    config["model_max_length"] = int(model_max_length)
  files = {
      "tokenizer.model": vocab.model_proto,
      "tokenizer.json": tok.to_str().encode(),
      "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False).encode(),
      "special_tokens_map.json": json.dumps(special, indent=2).encode(),
  }
  for name, data in files.items():
    with atomic_path(out / name) as tmp:
      Path(tmp).write_bytes(data)
  return [out / name for name in files]
