"""The demo's QA-data phase (lwm_plugin/demo/qa_data.py): its read-back checks and its grounding score, on
examples assembled by `longqa.assemble_book` from pairs written by hand (one of them about another chunk)."""

import copy
import json
import re

import numpy as np
import pytest

from data_loaders import longqa
from data_loaders import synthetic_corpus as sc
from lwm_plugin.demo import qa_data

FACT = re.compile(r"The special magic (\w+) word is: (\w+)\.")


def _write(path, records):
  path.mkdir(parents=True, exist_ok=True)
  (path / "part-00000-of-00001.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture(name="book")
def fixture_book(corpus_vocab):
  text = sc.needle_book(np.random.default_rng(1), "b0", 160, 10, kind="word")["text"]
  chunks = longqa.chunk_book(corpus_vocab, "b0", text, 100)
  facts = {c.index: FACT.findall(c.text) for c in chunks}
  qa = {i: longqa.QAPair(f"What is the special magic {f[0][0]} word?", f"The special magic {f[0][0]} word is: "
                                                                        f"{f[0][1]}.") for i, f in facts.items() if f}
  wrong = next(i for i in sorted(qa) if facts[i][0][0] != facts[min(qa)][0][0] and i != min(qa))
  qa[wrong] = qa[min(qa)]  # a pair about another chunk's fact: not grounded
  records, _ = longqa.assemble_book(corpus_vocab, chunks, qa, 512)
  return chunks, qa, wrong, records


def test_read_and_check_counts_examples_and_grounded_pairs(tmp_path, corpus_vocab, book):
  chunks, qa, wrong, records = book
  _write(tmp_path / "longqa-512", records)
  examples, grounded, sample = qa_data.read_and_check(tmp_path, [512], corpus_vocab, {"b0": chunks})
  used = [c for r in records for c in r["longqa"]["qa_chunks"]]
  assert examples == {512: len(records)} and len(records) >= 2 and sorted(grounded) == sorted(("b0", c) for c in used)
  assert all(fact for fact, _ in grounded.values())  # every pair written here is about a chunk with a fact
  assert [c for (_, c), (_, ok) in grounded.items() if not ok] == ([wrong] if wrong in used else [])
  assert sample["question"] in {p.question for p in qa.values()} and sample["chunk_facts"].startswith("The special")


@pytest.mark.parametrize("damage, message", [
    (lambda r: r["longqa"].update(qa_chunks=[r["longqa"]["chunks"][1]] + r["longqa"]["qa_chunks"][1:]),
     "outside the example's chunks"),
    (lambda r: r["messages"][1].update(role="user"), "message 1 has role 'user'"),  # the loader's own check
    (lambda r: r["messages"].append({"role": "user", "content": "And?"}), "expected user/assistant pairs"),
])
def test_read_and_check_names_the_file_and_line_of_a_broken_example(tmp_path, corpus_vocab, book, damage, message):
  chunks, _, _, records = book
  broken = copy.deepcopy(records)
  damage(broken[1])
  _write(tmp_path / "longqa-512", broken)
  with pytest.raises(ValueError, match=re.escape("longqa-512/part-00000-of-00001.jsonl:2: ")) as e:
    qa_data.read_and_check(tmp_path, [512], corpus_vocab, {"b0": chunks})
  assert message in str(e.value)


def test_read_and_check_refuses_examples_short_of_their_target(tmp_path, corpus_vocab, book):
  chunks, _, _, records = book
  _write(tmp_path / "longqa-1k", records)  # 512-token examples where 1024-token ones belong
  with pytest.raises(qa_data.QACheckFailed, match=r"jsonl:1: \d+ tokens, expected 90%-100 % of 1024"):
    qa_data.read_and_check(tmp_path, [1024], corpus_vocab, {"b0": chunks})
