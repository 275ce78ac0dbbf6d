"""The tiny LWM dataset of `maxtext_configs/tiny_cpu_lwm_data.yml`: a tokenizer and its JSONL files.

    python -m data_loaders.tiny_data [OUT_DIR]      # default: ./tiny_lwm_data

writes, from the synthetic corpus (`data_loaders.synthetic_corpus`, deterministic for a seed):
  tokenizer.model        a 1024-piece LLaMA-style SentencePiece model trained on the corpus text
                         (words of the corpus are single pieces; digits are split, as LLaMA's)
  text.jsonl             plain text documents with needles
  image.jsonl            image-caption pairs, both modality orders (text-to-image and captioning)
  video.jsonl            4-frame videos with captions, both orders
  retrieval_chat.jsonl   long-context QA chats (the config packs them in their own group)
  qa_writing.jsonl       QA-writing chats: lwm-make-qa's prompt around a paragraph, one QA pair about it

With `lwm_codebook_size: 64` the vocabulary is 1024 text ids + 64 + 256 vision rows = 1344, rounded
up to 1408 rows (`vocab_size: 1408`). Everything is small enough to train on one CPU in a minute.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from data_loaders.synthetic_corpus import CorpusSpec, generate_corpus
from data_loaders.vocab import MultimodalVocab, train_sentencepiece

TEXT_VOCAB = 1024
CODEBOOK = 64
SPEC = CorpusSpec(seed=0, text_documents=60, document_sentences=(3, 40), short_documents=40, copy_drills=40,
                  retrieval_chats=60, qa_writing_chats=40, images=120, videos=40, video_frames=4,
                  codebook_size=CODEBOOK)
# The demo's toy frames: 8 x 8 codes (LWM's VQGAN: 16 x 16), so that an image-caption example is about
# 80 tokens instead of 270 and the tiny vision stages see 3x more of them per step: a reference of the
# tiny model learns both directions in about 300 steps of 8x8 frames, but not reliably in 1,200 steps of
# 16x16 ones (BENCHMARKS.md, issue 17). The demo sets every stage's lwm_tokens_per_frame to match.
DEMO_GRID = 8
# The full demo's corpus (`make demo`): word needles (one tokenizer piece per value, see
# synthetic_corpus.VALUE_WORDS), dense facts (one per 4 sentences) recalled as question + answer,
# chats that ask every fact, QA-writing chats (the chat model then writes lwm-make-qa's QA data), short
# documents and copy drills for the first stage (a tiny model learns to copy from the drills within a
# few hundred steps, then to retrieve from the short documents; BENCHMARKS.md, issue 17), and long
# documents (log-uniform to about 3.5K tokens) for 2K and 4K.
DEMO_SPEC = dataclasses.replace(SPEC, text_documents=3000, document_sentences=(3, 330), log_uniform_lengths=True,
                                short_documents=12000, short_sentences=(2, 20), sentences_per_needle=4,
                                needle_value="word", qa_recalls=True, copy_drills=12000, retrieval_chats=3000,
                                chat_needles=(1, 2, 4, 8), qa_writing_chats=3000, images=4000, videos=1000,
                                grid=DEMO_GRID)
TOKENIZER_LINES_PER_FILE = 400  # the corpus's words are few: a sample of each file trains the tokenizer
# Files the tokenizer is not trained on: the QA-writing chats are lwm-make-qa's instructions (a prompt
# template any user may replace), not the corpus's language; their words are split into smaller pieces
# (byte fallback), and the corpus's ids, hence the text stages, do not depend on the chat stage's data.
TOKENIZER_SKIPS = ("qa_writing",)


def _texts(paths: dict[str, Path]) -> list[str]:
  lines = []
  for name, path in paths.items():
    if name in TOKENIZER_SKIPS:
      continue
    for raw in path.read_text().splitlines()[:TOKENIZER_LINES_PER_FILE]:
      obj = json.loads(raw)
      lines += [obj[k] for k in ("text", "caption") if k in obj]
      lines += [m["content"] for m in obj.get("messages", [])]
  return lines


def generate(out_dir: str | Path = "tiny_lwm_data", spec: CorpusSpec = SPEC) -> dict[str, Path]:
  """Writes the tokenizer and the JSONL files under `out_dir`; returns their paths by name."""
  out = Path(out_dir)
  files = generate_corpus(out, spec)
  model = out / "tokenizer.model"
  tmp = model.with_suffix(".model.tmp")
  tmp.write_bytes(train_sentencepiece(_texts(files), TEXT_VOCAB))
  tmp.replace(model)
  return {"tokenizer": model, **files}


def vocab(out_dir: str | Path = "tiny_lwm_data") -> MultimodalVocab:
  """The tiny multimodal vocabulary (the config's lwm_tokenizer_path and lwm_codebook_size)."""
  return MultimodalVocab.from_tokenizer(Path(out_dir) / "tokenizer.model", codebook_size=CODEBOOK)


if __name__ == "__main__":
  for name, path in generate(sys.argv[1] if len(sys.argv) > 1 else "tiny_lwm_data").items():
    print(f"{name}: {path}")
