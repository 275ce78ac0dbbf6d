"""Tests of data_loaders.longqa: chunking, the prompt, the parse rule and the assembly read back by the loader."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from data_loaders import longqa, lwm_format
from data_loaders import synthetic_corpus as sc
from data_loaders.longqa import Chunk, Dropped, ParseFailure, QAPair


class WordVocab:
  """A stand-in tokenizer with one token per whitespace-separated word, so chunk sizes can be checked by hand."""

  def encode_text(self, text: str) -> list[int]:
    return list(range(len(text.split())))


def _book(seed: int, sentences: int) -> str:
  return " ".join(sc.filler_sentences(np.random.default_rng(seed), sentences))


def _pairs(chunks: list[Chunk], skip: tuple[int, ...] = ()) -> dict[int, QAPair]:
  """One pair per chunk that names its book and chunk, so a test can tell where a turn came from."""
  return {c.index: QAPair(f"What does part {c.book_id} {c.index} say?", f"Part {c.book_id} {c.index} says the market.")
          for c in chunks if c.index not in skip}


# ---------------------------------------------------------------------------------------------- chunking


def test_chunks_by_hand_cut_at_sentence_ends():
  book = "  a b c. d e f g h. i j k l m n. o.\n"
  chunks = longqa.chunk_book(WordVocab(), "b", book, chunk_tokens=8)
  assert [(c.index, c.text, c.n_tokens) for c in chunks] == [(0, "a b c. d e f g h. ", 8), (1, "i j k l m n. o.", 7)]
  assert [(c.start, c.end) for c in chunks] == [(2, 20), (20, 35)]
  assert all(book[c.start:c.end] == c.text and c.book_id == "b" for c in chunks)


def test_chunks_by_hand_overlong_sentence_cut_at_whitespace():
  chunks = longqa.chunk_book(WordVocab(), "b", "a b c d. e f g h. i j k l m n o p q. r.", chunk_tokens=8)
  assert [c.text for c in chunks] == ["a b c d. e f g h. ", "i j k l m n o p ", "q. r."]
  assert [c.n_tokens for c in chunks] == [8, 8, 2]


def test_chunks_real_tokenizer(corpus_vocab):
  book = _book(1, 120) + "\n\nThe harbour " + "x" * 300 + "\u20ac\U0001F600" * 20 + " waited."
  chunks = longqa.chunk_book(corpus_vocab, "b", book, chunk_tokens=60)
  assert "".join(c.text for c in chunks) == book
  assert [c.index for c in chunks] == list(range(len(chunks)))
  for c in chunks:
    assert c.n_tokens == len(corpus_vocab.sp.encode(c.text)) <= 60
  ends = [c.text.rstrip()[-1] for c in chunks]
  assert ends.count(".") >= len(chunks) - 12  # the long word is cut inside (300 x's, 20 x 9 byte tokens)
  assert sum(c.n_tokens for c in chunks) >= len(corpus_vocab.sp.encode(book))  # nothing lost
  assert longqa.chunk_book(corpus_vocab, "b", book, chunk_tokens=60) == chunks  # deterministic


def test_chunk_tokens_too_small():
  with pytest.raises(ValueError, match="chunk_tokens must be >= 8"):
    longqa.chunk_book(WordVocab(), "b", "a.", chunk_tokens=7)


# ---------------------------------------------------------------------------------------------- prompt and parse


def test_prompt_template(tmp_path):
  chunk = Chunk("b", 0, 0, 20, " The {x} harbour.\n\n", 5)
  prompt = longqa.chunk_prompt(chunk)
  assert prompt.endswith("Paragraph:\nThe {x} harbour.") and "Question: <the question>\nAnswer:" in prompt
  path = tmp_path / "t.txt"
  path.write_text("Ask about: {paragraph} now")
  assert longqa.chunk_prompt(chunk, longqa.load_template(path)) == "Ask about: The {x} harbour. now"
  for bad in ("no placeholder", "{paragraph} {paragraph}"):
    path.write_text(bad)
    with pytest.raises(ValueError, match=r"t\.txt.*exactly once"):
      longqa.load_template(path)
  with pytest.raises(ValueError, match="cannot read"):
    longqa.load_template(tmp_path / "missing.txt")


@pytest.mark.parametrize("text, expected", [
    ("Question: Who sailed?\nAnswer: The captain.", QAPair("Who sailed?", "The captain.")),
    ("Sure, here it is.\n\nquestion: Who sailed?\n  ANSWER :  The captain\nof the ship.\n",
     QAPair("Who sailed?", "The captain\nof the ship.")),
    ("Question: Who\nsailed?\nAnswer: The captain.", QAPair("Who\nsailed?", "The captain.")),
    (" \n ", "empty"),
    ("Answer: The captain.", "missing_question"),
    ("Question: Who sailed?", "missing_answer"),
    ("Question: Who sailed? Answer: The captain.", "missing_answer"),  # Answer: must start a line
    ("Question: a?\nAnswer: b.\nQuestion: c?\nAnswer: d.", "several_pairs"),
    ("Question: a?\nAnswer: b.\nAnswer: d.", "several_pairs"),
    ("Answer: b.\nQuestion: a?", "answer_before_question"),
    ("Question:\nAnswer: b.", "empty_question"),
    ("Question: a?\nAnswer:   ", "empty_answer"),
    ("Question: a?\nAnswer: " + "b" * 2001, "too_long"),
    ("Question: " + "a" * 1001 + "\nAnswer: b", "too_long"),
    ("Question: Is the sky blue today?\nAnswer: the sky  BLUE", "answer_in_question"),
])
def test_parse_rule(text, expected):
  result = longqa.parse_qa(text)
  if isinstance(expected, QAPair):
    assert result == expected
  else:
    assert isinstance(result, ParseFailure) and result.reason == expected and result.detail
    assert result.reason in longqa.FAILURE_REASONS


def test_should_retry():
  ok, bad = QAPair("q", "a"), ParseFailure("empty", "x")
  assert not longqa.should_retry(ok, attempts=1, retries=3)
  assert [longqa.should_retry(bad, attempts=k, retries=3) for k in (1, 2, 3, 4)] == [True, True, True, False]
  assert not longqa.should_retry(bad, attempts=1, retries=0)
  with pytest.raises(ValueError):
    longqa.should_retry(bad, attempts=0, retries=1)


# ---------------------------------------------------------------------------------------------- assembly


def _read_back(record, vocab):
  """The record as the loader reads its JSONL line."""
  return lwm_format.example_from_line(json.dumps(record), vocab)


def _check_record(record, chunks, vocab, target):
  """Everything one record must satisfy, checked against the loader and the tokenizer directly."""
  meta = record["longqa"]
  first, end = meta["chunks"]
  example = _read_back(record, vocab)
  tokens, loss = example["tokens"], example["loss_mask"]
  assert len(tokens) == meta["tokens"] and 0.9 * target <= len(tokens) <= target
  messages = record["messages"]
  assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2)
  document = "".join(c.text for c in chunks[first:end]).strip()
  assert messages[0]["content"].startswith(document + "\n\n")
  questions = [messages[0]["content"][len(document) + 2:]] + [m["content"] for m in messages[2::2]]
  answers = [m["content"] for m in messages[1::2]]
  # every turn is the pair of a chunk inside the example, each such chunk's pair exactly once
  book = chunks[0].book_id
  named = [int(q.removeprefix(f"What does part {book} ").removesuffix(" say?")) for q in questions]
  assert sorted(named) == sorted(meta["qa_chunks"]) == [c.index for c in chunks[first:end] if c.index in meta["qa_chunks"]]
  assert named == meta["qa_chunks"] and all(first <= k < end for k in named)
  assert answers == [f"Part {book} {k} says the market." for k in named]
  # loss exactly on the answers and the EOS after each
  expected = [t for a in answers for t in vocab.sp.encode(a) + [vocab.eos_id]]
  assert tokens[loss == 1].tolist() == expected
  assert tokens[0] == vocab.bos_id and loss[0] == 0 and tokens[-1] == vocab.eos_id and loss[-1] == 1


def test_long_book_split_into_examples_within_target(corpus_vocab):
  chunks = longqa.chunk_book(corpus_vocab, "A", _book(2, 150), chunk_tokens=40)
  qa = _pairs(chunks, skip=(3,))  # chunk 3's generations were rejected: it stays in the text, without a turn
  target = 700
  records, dropped = longqa.assemble_book(corpus_vocab, chunks, qa, target, seed=5)
  assert len(records) >= 3
  for record in records:
    _check_record(record, chunks, corpus_vocab, target)
  assert 3 not in records[0]["longqa"]["qa_chunks"] and records[0]["longqa"]["chunks"][0] == 0
  spans = sorted([tuple(r["longqa"]["chunks"]) for r in records] + [(d.start, d.end) for d in dropped])
  assert spans[0][0] == 0 and spans[-1][1] == len(chunks)
  assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # adjacent, in order, each chunk at most once
  assert all(d.reason == "short" and d.book_id == "A" for d in dropped)
  again = longqa.assemble_book(corpus_vocab, chunks, qa, target, seed=5)
  assert again == (records, dropped)
  other = longqa.assemble_book(corpus_vocab, chunks, qa, target, seed=6)[0]
  assert [r["longqa"]["chunks"] for r in other] == [r["longqa"]["chunks"] for r in records]
  assert [r["longqa"]["qa_chunks"] for r in other] != [r["longqa"]["qa_chunks"] for r in records]


def test_short_book_is_one_example(corpus_vocab):
  chunks = longqa.chunk_book(corpus_vocab, "B", _book(3, 25), chunk_tokens=40)
  qa = _pairs(chunks)
  whole = longqa.assemble_book(corpus_vocab, chunks, qa, 10**6, min_fraction=0.0)[0]
  assert len(whole) == 1 and whole[0]["longqa"]["chunks"] == [0, len(chunks)]
  n = len(_read_back(whole[0], corpus_vocab)["tokens"])
  records, dropped = longqa.assemble_book(corpus_vocab, chunks, qa, n + 3)
  assert dropped == [] and len(records) == 1 and records[0]["longqa"]["chunks"] == [0, len(chunks)]
  _check_record(records[0], chunks, corpus_vocab, n + 3)
  # one token shorter than the whole book: it is split (here the pieces are too short and dropped)
  records, dropped = longqa.assemble_book(corpus_vocab, chunks, qa, n - 1)
  assert all(r["longqa"]["chunks"] != [0, len(chunks)] for r in records)
  # far too short for the target: nothing, reported
  assert longqa.assemble_book(corpus_vocab, chunks, qa, 2 * n) == ([], [Dropped("B", 0, len(chunks), "short")])


def test_books_are_never_mixed(corpus_vocab):
  a = longqa.chunk_book(corpus_vocab, "A", _book(4, 40), chunk_tokens=40)
  b = longqa.chunk_book(corpus_vocab, "B", _book(5, 40), chunk_tokens=40)
  with pytest.raises(ValueError, match="expected the chunks of book 'A' in order"):
    longqa.assemble_book(corpus_vocab, a + b, _pairs(a), 500)
  with pytest.raises(ValueError, match="QA pairs for chunks"):
    longqa.assemble_book(corpus_vocab, a, {len(a): QAPair("q", "a")}, 500)


def test_dropped_reasons(corpus_vocab):
  chunks = longqa.chunk_book(corpus_vocab, "C", _book(6, 30), chunk_tokens=40)
  records, dropped = longqa.assemble_book(corpus_vocab, chunks, {}, 300)  # the book is about 4 x 300 tokens
  assert records == [] and len(dropped) >= 3 and {d.reason for d in dropped} == {"no_qa"}
  assert [d.start for d in dropped[1:]] == [d.end for d in dropped[:-1]] and dropped[-1].end == len(chunks)
  records, dropped = longqa.assemble_book(corpus_vocab, chunks, _pairs(chunks), 30)
  assert records == [] and {d.reason for d in dropped} == {"over"} and len(dropped) == len(chunks)


@pytest.mark.parametrize("scale", [0, 3])
def test_lengths_are_counted_not_estimated(corpus_vocab, scale):
  """Chunk token counts only say where the search starts: wrong ones (0 or 3x) give the same examples."""
  chunks = longqa.chunk_book(corpus_vocab, "D", _book(7, 90), chunk_tokens=40)
  qa = _pairs(chunks)
  expected = longqa.assemble_book(corpus_vocab, chunks, qa, 600, seed=1)
  wrong = [dataclasses.replace(c, n_tokens=c.n_tokens * scale) for c in chunks]
  assert longqa.assemble_book(corpus_vocab, wrong, qa, 600, seed=1) == expected
  assert len(expected[0]) >= 2
