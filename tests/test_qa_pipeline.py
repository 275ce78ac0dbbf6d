"""lwm_plugin/longqa_gen/qa_pipeline.py on Beam's in-memory DirectRunner with a scripted generator.

The scripted generator (tests/helpers/scripted_qa.py) answers each chunk's prompt with a question
quoting the chunk's first words and an answer quoting its last words, so every QA turn can be traced
to its chunk by hand; it fails on a quarter of (prompt, seed) pairs, so retries matter, and always on
a chunk holding "UNANSWERABLE". The examples are read back with the loader (`data_loaders.pipeline.source_stream`),
and the tokens carrying loss are compared with SentencePiece's own encoding of the answers.
"""

import json

import numpy as np
import pytest
from helpers.scripted_qa import FAILURE, ScriptedGenerator

from data_loaders.pipeline import LoaderConfig
from data_loaders import synthetic_corpus as sc
from data_loaders.batch import WEIGHTS
from data_loaders.pipeline import source_stream
from lwm_plugin.longqa_gen import qa_pipeline as qp

IN_MEMORY = ["--direct_running_mode=in_memory"]
LENGTHS = (1024, 2048)


def _book(seed, sentences):
  return " ".join(sc.filler_sentences(np.random.default_rng(seed), sentences))


@pytest.fixture(name="books", scope="module")
def fixture_books(tmp_path_factory, corpus_vocab):
  d = tmp_path_factory.mktemp("books")
  (d / "tok.model").write_bytes(corpus_vocab.model_proto)
  texts = {"long": _book(1, 90), "mid": _book(2, 30) + " UNANSWERABLE is written here.", "tiny": _book(3, 2),
           "short": _book(4, 12)}
  lines = [json.dumps({"id": "long", "text": texts["long"]}), json.dumps({"id": "mid", "text": texts["mid"]}),
           "{not json", json.dumps({"id": "tiny", "text": texts["tiny"]}), json.dumps({"text": texts["short"]})]
  (d / "books.jsonl").write_text("\n".join(lines) + "\n")
  texts["line-4"] = texts.pop("short")
  return d, texts


def _options(books_dir, out, **kw):
  settings = dict(output=str(out), generator_factory=ScriptedGenerator(), generator="scripted",
                  tokenizer_proto=(books_dir / "tok.model").read_bytes(), lengths=LENGTHS, chunk_tokens=40, retries=5,
                  seed=1, batch_size=3, books_per_shard=2)
  return qp.MakeQAOptions(**(settings | kw))


def _run(books_dir, out, **kw):
  lines = []
  result = qp.make_qa(str(books_dir / "books.jsonl"), _options(books_dir, out, **kw), IN_MEMORY, log=lines.append)
  return result, lines


@pytest.fixture(name="made", scope="module")
def fixture_made(books, tmp_path_factory):
  out = tmp_path_factory.mktemp("qa") / "out"
  result, lines = _run(books[0], out)
  return out, result, lines


def _records(out, target):
  return [json.loads(x) for p in sorted((out / f"longqa-{qp.length_name(target)}").glob("part-*.jsonl"))
          for x in p.read_text().splitlines()]


def test_shards_rejects_and_counts(made):
  out, result, lines = made
  assert lines[0].startswith("5 books to do in 3 shards (0 shards already complete)")
  assert lines[-1].startswith("5/5 books done, ") and not list((out / "_progress").iterdir())
  assert sorted(p.name for p in (out / "_shards").iterdir()) == [f"part-0000{k}-of-00003.json" for k in range(3)]
  assert (result.shards_written, result.shards_skipped, result.books) == (3, 0, 5)
  done = {k: json.loads((out / "_shards" / f"part-0000{k}-of-00003.json").read_text()) for k in range(3)}
  assert sorted(str(p.relative_to(out)) for p in out.glob("longqa-*/*")) == sorted(
      f"longqa-{qp.length_name(n)}/part-0000{k}-of-00003.jsonl" for k in range(3) for n in LENGTHS
      if done[k]["records"][str(n)])
  assert all(done[0]["records"].values()) and done[1]["records"] == {"1024": 0, "2048": 0}  # bad line + "tiny"
  rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
  assert [(r["line"], r["reason"]) for r in rejects] == [(1, "missing_question"), (2, "bad_book")]
  assert rejects[0]["book_id"] == "mid" and rejects[0]["attempts"] == 6 and "UNANSWERABLE" not in rejects[0]["detail"]
  assert rejects[0]["generation"] == FAILURE
  assert result.rejects == 2 and result.qa_pairs == result.chunks - 1
  assert result.records == {n: len(_records(out, n)) for n in LENGTHS} and all(result.records.values())
  assert result.dropped["short"] >= 2  # "tiny" is far under 90 % of either target


def test_examples_by_hand_and_through_the_loader(made, books, corpus_vocab):
  out, _, _ = made
  _, texts = books
  for target in LENGTHS:
    records = _records(out, target)
    config = LoaderConfig(sources=[{"name": "qa", "files": f"{out}/longqa-{qp.length_name(target)}/*.jsonl"}],
                          seq_len=target, batch_size=1, shuffle=False, num_epochs=1)
    examples = list(source_stream(config, config.sources[0], corpus_vocab, shard_index=0, shard_count=1))
    assert len(examples) == len(records)
    for record, ex in zip(records, examples):
      info, messages = record["longqa"], record["messages"]
      tokens = np.r_[ex["inputs"], ex["targets"][-1:]]
      assert len(tokens) == info["tokens"] and 0.9 * target <= len(tokens) <= target
      assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2)
      document, first_question = messages[0]["content"].rsplit("\n\n", 1)
      homes = [b for b, text in texts.items() if document in text]
      assert homes == [info["book_id"]]  # one book, a contiguous run of it
      questions = [first_question] + [m["content"] for m in messages[2::2]]
      answers = [m["content"] for m in messages[1::2]]
      assert len(questions) == len(set(info["qa_chunks"])) and set(info["qa_chunks"]) <= set(range(*info["chunks"]))
      for q, a in zip(questions, answers):
        opening = q[len("Which paragraph starts with "):-1]
        ending = a[len("The one ending "):]
        assert opening in document and ending in document  # the pair's chunk is inside this example
      # Loss only on the answers and the EOS closing each: SentencePiece's own ids of the answers.
      weighted = ex["targets"][ex[WEIGHTS] > 0].tolist()
      expected = [i for a in answers for i in [*corpus_vocab.sp.encode(a), corpus_vocab.eos_id]]
      assert weighted == expected


def test_a_book_longer_than_the_target_is_split_into_adjacent_runs(made):
  """"long" (89 chunks, ~9K tokens) gives runs [0, a), [a, b), ... of adjacent chunks, in order, at both lengths."""
  out, _, _ = made
  for target in LENGTHS:
    ranges = [r["longqa"]["chunks"] for r in _records(out, target) if r["longqa"]["book_id"] == "long"]
    assert len(ranges) >= 9000 // target - 1 and ranges[0][0] == 0
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))


def test_deterministic_resumable_and_settings_checked(made, books, tmp_path):
  out, _, _ = made
  again = tmp_path / "again"
  _run(books[0], again)
  files = sorted(p.relative_to(out) for p in out.glob("longqa-*/*"))
  assert files == sorted(p.relative_to(again) for p in again.glob("longqa-*/*"))
  assert all((out / f).read_bytes() == (again / f).read_bytes() for f in files)
  assert (out / "rejects.jsonl").read_bytes() == (again / "rejects.jsonl").read_bytes()
  (again / "longqa-1k" / "part-00000-of-00003.jsonl").unlink()  # an interrupted shard: no done-record
  (again / "_shards" / "part-00000-of-00003.json").unlink()
  result, lines = _run(books[0], again)
  assert (result.shards_written, result.shards_skipped, result.books) == (1, 2, 2)
  assert lines[0].startswith("2 books to do in 1 shards (2 shards already complete)")
  assert all((out / f).read_bytes() == (again / f).read_bytes() for f in files)
  with pytest.raises(ValueError, match=r"other settings \(seed differ"):
    _run(books[0], again, seed=2)


def test_without_retries_the_unlucky_chunks_are_rejects(books, tmp_path):
  result, _ = _run(books[0], tmp_path / "o", retries=0, lengths=(1024,))
  rejects = [json.loads(x) for x in (tmp_path / "o" / "rejects.jsonl").read_text().splitlines()]
  assert len(rejects) > 5 and all(r["attempts"] == 1 for r in rejects if r["chunk"] is not None)
  assert result.qa_pairs == result.chunks - (len(rejects) - 1)


def test_option_checks(books, tmp_path):
  with pytest.raises(ValueError, match="distinct target lengths"):
    _options(books[0], tmp_path, lengths=(300, 300))
  with pytest.raises(ValueError, match="retries must be >= 0"):
    _options(books[0], tmp_path, retries=-1)
  with pytest.raises(ValueError, match="exactly once"):
    _options(books[0], tmp_path, template="no placeholder")
  assert [qp.length_name(n) for n in (32768, 131072, 2**20, 5000)] == ["32k", "128k", "1m", "5000"]
