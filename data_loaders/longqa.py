"""Long-context QA data in token space (paper Sec. 3.3): chunk books, prompt and parse QA, assemble examples.

The text-chat stages mix UltraChat with QA built from Books3: each book is cut into pieces of about
1000 tokens, a chat model writes one question-answer pair per piece, and for a target length adjacent
pieces of one book are joined into one document followed by the QA pairs of those pieces as chat
turns. This module is the model-free core of that: chunking, the generation prompt, the parse rule
for a generation, and the assembly into the chat JSONL the loader reads. The generator, the Beam
pipeline and the command line sit above it.

Chunking (`chunk_book`). A book is split into units at sentence ends (`.`, `!`, `?`, optionally
closed by quotes or brackets, then whitespace) and at line breaks; a unit longer than a chunk is
split at whitespace, and a word longer than a chunk at the longest character prefix that fits.
Units are added greedily while the sum of their token counts fits `chunk_tokens`; the chunk's own
count (`len(vocab.encode_text(text))`, the training tokenizer) is then checked and units are handed
back until it fits, so every chunk has at most `chunk_tokens` tokens. Chunks tile the book: each
keeps the whitespace after it, so joining their texts gives the book back (less leading and
trailing whitespace).

Prompt and parse rule. The prompt is `template` with its one `{paragraph}` replaced by the chunk's
text (`DEFAULT_TEMPLATE`, or a file read by `load_template`); it is the user content of a one-turn
chat, which the generator wraps in the chat template. A generation parses (`parse_qa`) when, after
any preamble, it holds exactly one line starting `Question:` followed later by exactly one line
starting `Answer:` (case-insensitive); the question is the text between them, the answer the
rest, both stripped. Anything else is a `ParseFailure` with one of `FAILURE_REASONS`.
`should_retry` tells the caller whether to sample again with another seed.

Assembly (`assemble_book`). For one book and one target length, groups of adjacent chunks are taken
in order; each group is the longest run from its first chunk whose example fits the target, and an
example shorter than `min_fraction` (0.9) of the target is dropped (and reported). So a book becomes
one example when all of it fits, and is split only when it is longer than the target. The lengths
are counted by the loader's own chat template (`chat_template.chat_example`), never estimated: the
estimates from chunk token counts only choose where to start looking. The seed (with the book id,
target and first chunk) fixes the order of the QA turns.

The record, one JSON line the loader's chat sources read (`lwm_format.example_from_line`):

    {"messages": [{"role": "user", "content": "{document}\\n\\n{question 1}"},
                  {"role": "assistant", "content": "{answer 1}"},
                  {"role": "user", "content": "{question 2}"}, {"role": "assistant", "content": "{answer 2}"}, ...],
     "longqa": {"book_id": ..., "chunks": [first, end), "qa_chunks": [chunk index per turn], "tokens": N}}

The document is the first user turn, with the first question after a blank line, as the corpus's
retrieval chats and LWM's long-context prompts put a question after the context; the chat template
then puts the loss only on the answers (and their EOS). `longqa` is provenance the loader ignores.
`tokens` is the example's length as the loader counts it (BOS to the last EOS): at most the target,
so it fits a row of `max_target_length` = target.
"""

from __future__ import annotations

import dataclasses
import random
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from data_loaders.chat_template import chat_example
from data_loaders.vocab import MultimodalVocab

DEFAULT_CHUNK_TOKENS = 1000
MIN_FRACTION = 0.9
PLACEHOLDER = "{paragraph}"
DEFAULT_TEMPLATE = (
    "Read the paragraph below. Write one question about it that the paragraph answers, and the answer.\n"
    "Reply in exactly this form and nothing else:\n"
    "Question: <the question>\n"
    "Answer: <the answer>\n\n"
    "Paragraph:\n" + PLACEHOLDER)
FAILURE_REASONS = ("empty", "missing_question", "missing_answer", "answer_before_question", "several_pairs",
                   "empty_question", "empty_answer", "too_long", "answer_in_question")
_UNIT_END = re.compile(r"[.!?][\"'\u201d\u2019)\]]*\s+|\n\s*")
_WORD_END = re.compile(r"\s+")
_QUESTION = re.compile(r"^[ \t]*question[ \t]*:", re.IGNORECASE | re.MULTILINE)
_ANSWER = re.compile(r"^[ \t]*answer[ \t]*:", re.IGNORECASE | re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class Chunk:
  """A piece of one book: `text` is `book[start:end]` (with the whitespace after it), `n_tokens` its length."""
  book_id: str
  index: int
  start: int
  end: int
  text: str
  n_tokens: int


@dataclasses.dataclass(frozen=True)
class QAPair:
  question: str
  answer: str


@dataclasses.dataclass(frozen=True)
class ParseFailure:
  """A generation that is not one QA pair: `reason` is one of FAILURE_REASONS, `detail` says more."""
  reason: str
  detail: str


@dataclasses.dataclass(frozen=True)
class Dropped:
  """Chunks [start, end) of a book that went into no example for a target, and why."""
  book_id: str
  start: int
  end: int
  reason: str  # "short": under min_fraction of the target; "over": one chunk is over it; "no_qa": no QA pair


# ---------------------------------------------------------------------------------------------- chunking


def _split_at(text: str, pattern: re.Pattern) -> list[str]:
  cuts = [0] + [m.end() for m in pattern.finditer(text) if m.end() < len(text)] + [len(text)]
  return [text[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]


def _fitting_pieces(vocab: MultimodalVocab, unit: str, chunk_tokens: int) -> list[str]:
  """`unit` cut into pieces of at most `chunk_tokens` tokens: at whitespace, else inside an overlong word."""
  if len(vocab.encode_text(unit)) <= chunk_tokens:
    return [unit]
  words = _split_at(unit, _WORD_END)
  if len(words) > 1:
    return [p for w in words for p in _fitting_pieces(vocab, w, chunk_tokens)]
  lo, hi = 1, len(unit)  # the longest prefix that fits (one character always fits for chunk_tokens >= 8)
  while lo < hi:
    mid = (lo + hi + 1) // 2
    lo, hi = (mid, hi) if len(vocab.encode_text(unit[:mid])) <= chunk_tokens else (lo, mid - 1)
  return [unit[:lo]] + _fitting_pieces(vocab, unit[lo:], chunk_tokens)


def chunk_book(vocab: MultimodalVocab, book_id: str, text: str,
               chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> list[Chunk]:
  """The book's chunks in order, each at most `chunk_tokens` tokens, cut at sentence ends where possible."""
  if chunk_tokens < 8:  # one character may be a space piece and 4 byte-fallback tokens
    raise ValueError(f"chunk_tokens must be >= 8, got {chunk_tokens}")
  offset = len(text) - len(text.lstrip())
  body = text.strip()
  units = [p for u in _split_at(body, _UNIT_END) for p in _fitting_pieces(vocab, u, chunk_tokens)]
  # A unit's trailing space joins the next word's piece in context, so it is not counted on its own.
  sizes = [len(vocab.encode_text(u.rstrip(" "))) for u in units]
  chunks: list[Chunk] = []
  i = 0
  while i < len(units):
    j, total = i + 1, sizes[i]
    while j < len(units) and total + sizes[j] <= chunk_tokens:
      total += sizes[j]
      j += 1
    while True:  # the chunk's own count can differ from the sum of its units' counts
      piece = "".join(units[i:j])
      n_tokens = len(vocab.encode_text(piece))
      if n_tokens <= chunk_tokens or j == i + 1:
        break
      j -= 1
    chunks.append(Chunk(book_id, len(chunks), offset, offset + len(piece), piece, n_tokens))
    offset += len(piece)
    i = j
  return chunks


# ---------------------------------------------------------------------------------------------- prompt and parse


def check_template(template: str, where: str = "prompt template") -> str:
  """`template` itself if it holds exactly one `{paragraph}`; ValueError naming `where` otherwise."""
  count = template.count(PLACEHOLDER)
  if count != 1:
    raise ValueError(f"{where}: must contain {PLACEHOLDER} exactly once (where the chunk's text goes), found {count}")
  return template


def load_template(path: str | Path) -> str:
  """A prompt template file (UTF-8 text with one `{paragraph}`), validated."""
  path = Path(path)
  try:
    text = path.read_text(encoding="utf-8")
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f"prompt template {str(path)!r}: cannot read it as UTF-8 text ({e})") from None
  return check_template(text, f"prompt template {str(path)!r}")


def paragraph_prompt(paragraph: str, template: str = DEFAULT_TEMPLATE) -> str:
  """The user content that asks the generator for one QA pair about `paragraph`."""
  return check_template(template).replace(PLACEHOLDER, paragraph.strip())


def chunk_prompt(chunk: Chunk, template: str = DEFAULT_TEMPLATE) -> str:
  """The user content that asks the generator for one QA pair about `chunk`."""
  return paragraph_prompt(chunk.text, template)


def _words(text: str) -> str:
  return " ".join(text.casefold().split())


def parse_qa(generation: str, *, max_question_chars: int = 1000, max_answer_chars: int = 2000) -> QAPair | ParseFailure:
  """The QA pair in a generation, or why there is none (see the module docstring for the rule)."""
  text = generation.strip()
  if not text:
    return ParseFailure("empty", "the generation is empty")
  questions, answers = list(_QUESTION.finditer(text)), list(_ANSWER.finditer(text))
  if not questions:
    return ParseFailure("missing_question", "no line starts with 'Question:'")
  if not answers:
    return ParseFailure("missing_answer", "no line starts with 'Answer:'")
  if len(questions) > 1 or len(answers) > 1:
    return ParseFailure("several_pairs", f"{len(questions)} 'Question:' and {len(answers)} 'Answer:' lines, "
                                         "expected one of each")
  q, a = questions[0], answers[0]
  if a.start() < q.start():
    return ParseFailure("answer_before_question", "the 'Answer:' line comes before the 'Question:' line")
  question, answer = text[q.end():a.start()].strip(), text[a.end():].strip()
  if not question:
    return ParseFailure("empty_question", "nothing after 'Question:'")
  if not answer:
    return ParseFailure("empty_answer", "nothing after 'Answer:'")
  if len(question) > max_question_chars or len(answer) > max_answer_chars:
    return ParseFailure("too_long", f"question {len(question)} chars (max {max_question_chars}), "
                                    f"answer {len(answer)} chars (max {max_answer_chars})")
  if _words(answer) in _words(question):
    return ParseFailure("answer_in_question", "the answer is copied from the question")
  return QAPair(question, answer)


def should_retry(result: QAPair | ParseFailure, attempts: int, retries: int) -> bool:
  """True when `result` (of the `attempts`-th generation, 1-based) failed and fewer than 1 + `retries` were made.

  Every failure reason is retryable: they are all properties of one sample, which another seed changes.
  """
  if attempts < 1 or retries < 0:
    raise ValueError(f"attempts must be >= 1 and retries >= 0, got attempts={attempts}, retries={retries}")
  return isinstance(result, ParseFailure) and attempts <= retries


# ---------------------------------------------------------------------------------------------- assembly


def _messages(chunks: Sequence[Chunk], qa: Mapping[int, QAPair], order: Sequence[int]) -> list[dict[str, str]]:
  document = "".join(c.text for c in chunks).strip()
  messages = []
  for k, index in enumerate(order):
    pair = qa[index]
    content = f"{document}\n\n{pair.question}" if k == 0 else pair.question
    messages += [{"role": "user", "content": content}, {"role": "assistant", "content": pair.answer}]
  return messages


def _group(vocab: MultimodalVocab, chunks: Sequence[Chunk], qa: Mapping[int, QAPair], start: int, end: int,
           seed: int, target: int) -> tuple[list[dict[str, str]], list[int], int]:
  """The messages of chunks [start, end), the QA turn order (chunk indices) and the loader's token count.

  Without any QA pair the count is that of the document alone as a prompt (the range is then dropped).
  """
  used = chunks[start:end]
  order = [c.index for c in used if c.index in qa]
  random.Random(f"{seed}:{used[0].book_id}:{target}:{start}").shuffle(order)
  if order:
    messages = _messages(used, qa, order)
    return messages, order, len(chat_example(vocab, messages)["tokens"])
  document = [{"role": "user", "content": "".join(c.text for c in used).strip()}]
  return [], order, len(chat_example(vocab, document)["tokens"])


def assemble_book(vocab: MultimodalVocab, chunks: Sequence[Chunk], qa: Mapping[int, QAPair], target: int, *,
                  seed: int = 0, min_fraction: float = MIN_FRACTION) -> tuple[list[dict[str, Any]], list[Dropped]]:
  """The chat records of one book for one target length, and the chunk ranges that went into none.

  `chunks` are one book's chunks in order (`chunk_book`); `qa` maps a chunk index to its pair
  (chunks without one, e.g. rejected generations, are still part of the document). A range with
  no QA pair at all is dropped ("no_qa").
  """
  if target < 1 or not 0.0 <= min_fraction <= 1.0:
    raise ValueError(f"assemble_book: target must be >= 1 and min_fraction in [0, 1], got {target}, {min_fraction}")
  if not chunks:
    return [], []
  book_id = chunks[0].book_id
  for k, c in enumerate(chunks):
    if c.book_id != book_id or c.index != k:
      raise ValueError(f"assemble_book: chunk {k} is ({c.book_id!r}, index {c.index}); expected the chunks of "
                       f"book {book_id!r} in order, indices 0..{len(chunks) - 1}")
  unknown = sorted(set(qa) - set(range(len(chunks))))
  if unknown:
    raise ValueError(f"assemble_book: book {book_id!r} has QA pairs for chunks {unknown[:10]} it does not have")
  # Estimates, only to choose where the exact search starts: a later QA turn's exact cost by the template.
  base = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
  base_len = len(chat_example(vocab, base)["tokens"])
  fixed = base_len - len(vocab.encode_text("x")) - len(vocab.encode_text("y"))

  def turn_cost(pair: QAPair) -> int:
    turn = [{"role": "user", "content": pair.question}, {"role": "assistant", "content": pair.answer}]
    return len(chat_example(vocab, base + turn)["tokens"]) - base_len

  step = [c.n_tokens + (turn_cost(qa[c.index]) if c.index in qa else 0) for c in chunks]
  records, dropped = [], []
  start = 0
  while start < len(chunks):
    end, estimate = start + 1, fixed + step[start]
    while end < len(chunks) and estimate + step[end] <= target:
      estimate += step[end]
      end += 1
    group = _group(vocab, chunks, qa, start, end, seed, target)
    while group[2] > target and end > start + 1:  # too long: hand chunks back
      end -= 1
      group = _group(vocab, chunks, qa, start, end, seed, target)
    while group[2] <= target and end < len(chunks):  # room left: take more
      longer = _group(vocab, chunks, qa, start, end + 1, seed, target)
      if longer[2] > target:
        break
      end, group = end + 1, longer
    messages, order, n_tokens = group
    if not order:
      dropped.append(Dropped(book_id, start, end, "no_qa"))
    elif n_tokens > target:
      dropped.append(Dropped(book_id, start, end, "over"))
    elif n_tokens < min_fraction * target:
      dropped.append(Dropped(book_id, start, end, "short"))
    else:
      records.append({"messages": messages,
                      "longqa": {"book_id": book_id, "chunks": [start, end], "qa_chunks": order, "tokens": n_tokens}})
    start = end
  return records, dropped
