"""`lwm-make-qa`'s pipeline: books -> QA pairs from a generator -> long-context chat examples, on Apache Beam.

    books JSONL (`{"text": "...", "id": optional}` per line)
      -> shards of `books_per_shard` lines, minus completed shards (the driver finds each shard's byte offset)
      -> the shard's lines -> Reshuffle (spread the books over the workers)
      -> per book: chunks by the training tokenizer (`data_loaders.longqa.chunk_book`), one prompt per chunk,
         generation in batches of `batch_size` (the generator is built once per worker, in `DoFn.setup`),
         parse (`parse_qa`); chunks whose generation does not parse are generated again with another seed,
         up to `retries` times, then listed as rejects; assembly per target length (`assemble_book`)
      -> group by shard -> per length `OUT/longqa-32k/part-SSSSS-of-NNNNN.jsonl` (written atomically), then
         the shard's done-record `OUT/_shards/part-SSSSS-of-NNNNN.json`
    then the driver merges the done-records' rejects into `OUT/rejects.jsonl` (`lwm_plugin.beam_shards`).

A book is handled by one worker from chunking to assembly: its QA pairs never meet another book's,
an example holds adjacent chunks of one book, and a book is split only when longer than the target
(`assemble_book`). Records are the chat JSONL the loader's chat sources read (`{"messages": [...],
"longqa": provenance}`, see `data_loaders.longqa`); a directory per length is what the chat stage
configs glob (`${lwm_data_dir}/longqa-128k/*.jsonl`).

Determinism: the generation seed of a batch is derived from (`seed`, book id, attempt, batch number)
and the batches of a book are its pending chunks in order, so the output depends only on the inputs,
the settings and the generator, not on the runner or the number of workers. The settings are kept in
`OUT/make_qa.json`; a rerun with other settings is refused (start a new `--output`), a rerun with the
same ones skips completed shards.

Rejects (`OUT/rejects.jsonl`): `{"line", "book_id", "chunk", "reason", "detail", "attempts",
"generation"}`: a chunk whose last generation did not parse (reason from `longqa.FAILURE_REASONS`,
`generation` its text, at most 1000 characters), or a book line that is not usable (`chunk` null,
reason `bad_book`). Chunk ranges that went into no example (shorter than 90 % of the target, no QA
pair) are counted per reason in the done-records, not listed as rejects.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from typing import Any, Callable, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from data_loaders import longqa
from data_loaders.vocab import MultimodalVocab
from lwm_plugin.beam_shards import (Progress, beam_options, completed_shards, done_path, mark_progress, merge_rejects,
                                    publish_text, read_done)
from lwm_plugin.longqa_gen.qa_endpoint import TextGenerator

SETTINGS = "make_qa.json"


class SettingsError(ValueError):
  """The output directory holds a run with other settings, or the books file is missing."""
MAX_GENERATION_CHARS = 1000  # of a rejected generation, kept in rejects.jsonl


def length_name(tokens: int) -> str:
  """32768 -> "32k", 1048576 -> "1m", 5000 -> "5000" (the `longqa-*` directory of a target length)."""
  if tokens % 2**20 == 0:
    return f"{tokens >> 20}m"
  if tokens % 2**10 == 0:
    return f"{tokens >> 10}k"
  return str(tokens)


def length_dir(output: str, tokens: int) -> str:
  return FileSystems.join(output, f"longqa-{length_name(tokens)}")


def shard_name(index: int, count: int) -> str:
  return f"part-{index:05d}-of-{count:05d}"


@dataclasses.dataclass(frozen=True)
class MakeQAOptions:
  """Everything the workers need (picklable). `generator` names the generator in the settings file;
  `tokenizer_proto` is the training tokenizer's SentencePiece model (it travels to the workers)."""
  output: str
  generator_factory: Callable[[], TextGenerator]
  generator: str
  tokenizer_proto: bytes
  lengths: tuple[int, ...]
  chunk_tokens: int = longqa.DEFAULT_CHUNK_TOKENS
  template: str = longqa.DEFAULT_TEMPLATE
  retries: int = 2
  seed: int = 0
  batch_size: int = 16
  books_per_shard: int = 100

  def __post_init__(self):
    longqa.check_template(self.template)
    if not self.lengths or any(n < 1 for n in self.lengths) or len(set(self.lengths)) != len(self.lengths):
      raise ValueError(f"lengths {list(self.lengths)}: expected distinct target lengths >= 1")
    for name, low in (("chunk_tokens", 8), ("retries", 0), ("batch_size", 1), ("books_per_shard", 1)):
      if getattr(self, name) < low:
        raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")

  def settings(self, books: str, n_books: int) -> dict[str, Any]:
    """What a rerun into the same output must repeat (the tokenizer by its content)."""
    return {"books": books, "books_lines": n_books, "books_per_shard": self.books_per_shard,
            "generator": self.generator, "tokenizer_sha256": hashlib.sha256(self.tokenizer_proto).hexdigest(),
            "lengths": list(self.lengths), "chunk_tokens": self.chunk_tokens, "template": self.template,
            "retries": self.retries, "seed": self.seed}


@dataclasses.dataclass
class MakeQAResult:
  shards_written: int
  shards_skipped: int
  books: int
  chunks: int
  qa_pairs: int
  records: dict[int, int]        # examples written per target length (this run's shards)
  dropped: dict[str, int]        # chunk ranges in no example, per reason
  rejects: int                   # lines of rejects.jsonl (all shards)
  seconds: float


def batch_seed(seed: int, book_id: str, attempt: int, batch: int) -> int:
  """The generation seed of one batch: fixed by the run's seed and the batch's place, 31 bits."""
  digest = hashlib.sha256(f"{seed}:{book_id}:{attempt}:{batch}".encode()).digest()
  return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _bad_book(line: int, detail: str) -> dict[str, Any]:
  return {"line": line, "book_id": None, "chunk": None, "reason": "bad_book", "detail": detail, "attempts": 0,
          "generation": None}


def _book(line_no: int, line: str) -> tuple[str, str] | dict[str, Any]:
  """(book id, text) of a books line, or its reject."""
  try:
    obj = json.loads(line)
  except json.JSONDecodeError as e:
    return _bad_book(line_no, f"not JSON ({e})")
  if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) or not obj["text"].strip():
    return _bad_book(line_no, "expected an object with a non-empty string 'text'")
  book_id = obj.get("id", f"line-{line_no}")
  if not isinstance(book_id, (str, int)) or isinstance(book_id, bool):
    return _bad_book(line_no, f"'id' must be a string or an int, got {book_id!r}")
  return str(book_id), obj["text"]


def generate_qa(generator: TextGenerator, prompts: Sequence[str], *, book_id: str, seed: int, retries: int,
                batch_size: int) -> tuple[dict[int, longqa.QAPair], dict[int, tuple[longqa.ParseFailure, str, int]]]:
  """The QA pair of each prompt that got one within 1 + `retries` generations, and for the others the last
  failure, its generation and the number of attempts."""
  qa: dict[int, longqa.QAPair] = {}
  failed: dict[int, tuple[longqa.ParseFailure, str, int]] = {}
  pending, attempt = list(range(len(prompts))), 1
  while pending:
    for b in range(0, len(pending), batch_size):
      batch = pending[b:b + batch_size]
      texts = generator.generate([prompts[i] for i in batch], batch_seed(seed, book_id, attempt, b // batch_size))
      if len(texts) != len(batch):
        raise RuntimeError(f"the generator returned {len(texts)} completions for {len(batch)} prompts")
      for i, text in zip(batch, texts):
        result = longqa.parse_qa(text)
        if isinstance(result, longqa.QAPair):
          qa[i] = result
          failed.pop(i, None)
        else:
          failed[i] = (result, text, attempt)
    pending = [i for i in pending if i in failed and longqa.should_retry(failed[i][0], attempt, retries)]
    attempt += 1
  return qa, failed


class _ReadShard(beam.DoFn):
  """(shard index, byte offset, first line, lines) -> (shard index, line number, line) for each book line."""

  def __init__(self, books: str):
    self.books = books

  def process(self, element):
    shard, offset, first, count = element
    with FileSystems.open(self.books) as f:
      f.seek(offset)
      for k in range(count):
        yield shard, first + k, f.readline().decode("utf-8", errors="replace")


class _BookQA(beam.DoFn):
  """(shard, line number, line) -> (shard, the book's examples per length, rejects, counts)."""

  def __init__(self, options: MakeQAOptions):
    self.options = options
    self.vocab = self.generator = None

  def setup(self):
    self.vocab = MultimodalVocab.from_model_proto(self.options.tokenizer_proto)
    self.generator = self.options.generator_factory()

  def process(self, element):
    shard, line_no, line = element
    o = self.options
    result = {"line": line_no, "records": {}, "rejects": [], "dropped": [], "chunks": 0, "qa_pairs": 0}
    book = _book(line_no, line)
    if isinstance(book, dict):
      result["rejects"].append(book)
    else:
      book_id, text = book
      chunks = longqa.chunk_book(self.vocab, book_id, text, o.chunk_tokens)
      qa, failed = generate_qa(self.generator, [longqa.chunk_prompt(c, o.template) for c in chunks], book_id=book_id,
                               seed=o.seed, retries=o.retries, batch_size=o.batch_size)
      result["rejects"] = [{"line": line_no, "book_id": book_id, "chunk": i, "reason": f.reason, "detail": f.detail,
                            "attempts": attempts, "generation": generation[:MAX_GENERATION_CHARS]}
                           for i, (f, generation, attempts) in sorted(failed.items())]
      result["chunks"], result["qa_pairs"] = len(chunks), len(qa)
      for target in o.lengths:
        records, dropped = longqa.assemble_book(self.vocab, chunks, qa, target, seed=o.seed)
        result["records"][str(target)] = records
        result["dropped"] += [{"target": target, "start": d.start, "end": d.end, "reason": d.reason} for d in dropped]
    mark_progress(o.output, 1)
    yield shard, result


class _WriteShard(beam.DoFn):
  """(shard index, book results) -> one file per length (books in line order), then the done-record."""

  def __init__(self, options: MakeQAOptions, n_shards: int):
    self.options, self.n_shards = options, n_shards

  def process(self, element):
    shard, results = element
    name = shard_name(shard, self.n_shards)
    results = sorted(results, key=lambda r: r["line"])
    counts = {}
    for target in self.options.lengths:
      records = [rec for r in results for rec in r["records"].get(str(target), [])]
      counts[str(target)] = len(records)
      if records:
        path = FileSystems.join(length_dir(self.options.output, target), f"{name}.jsonl")
        publish_text(path, "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records))
    done = {"shard": name, "books": len(results), "chunks": sum(r["chunks"] for r in results),
            "qa_pairs": sum(r["qa_pairs"] for r in results), "records": counts,
            "dropped": [d for r in results for d in r["dropped"]],
            "rejects": [x for r in results for x in r["rejects"]]}
    publish_text(done_path(self.options.output, name), json.dumps(done) + "\n")
    yield name


def shard_offsets(books: str, books_per_shard: int) -> list[tuple[int, int, int, int]]:
  """(shard index, byte offset, first line, lines) of every shard of the books file, in one pass."""
  shards, offset, line = [], 0, 0
  with FileSystems.open(books) as f:
    for raw in iter(f.readline, b""):
      if line % books_per_shard == 0:
        shards.append([line // books_per_shard, offset, line, 0])
      shards[-1][3] += 1
      offset += len(raw)
      line += 1
  return [tuple(s) for s in shards]


def check_settings(output: str, settings: dict[str, Any]) -> None:
  """Writes `OUT/make_qa.json`, or checks that an earlier run into `output` used the same settings."""
  path = FileSystems.join(output, SETTINGS)
  if FileSystems.exists(path):
    with FileSystems.open(path) as f:
      before = json.loads(f.read())
    changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
    if changed:
      raise SettingsError(f"{output} holds a run with other settings ({', '.join(changed)} differ, see {SETTINGS}); "
                       "give a new --output")
    return
  publish_text(path, json.dumps(settings, indent=1) + "\n")


def make_qa(books: str, options: MakeQAOptions, beam_args: Sequence[str] = (),
            log: Callable[[str], None] = print) -> MakeQAResult:
  """Runs the pipeline to completion (see the module docstring); returns counts."""
  start = time.monotonic()
  if not FileSystems.exists(books):
    raise SettingsError(f"--books {books}: no such file")
  shards = shard_offsets(books, options.books_per_shard)
  n_books = sum(s[3] for s in shards)
  check_settings(options.output, options.settings(books, n_books))
  names = {s[0]: shard_name(s[0], len(shards)) for s in shards}
  done = completed_shards(options.output) & set(names.values())
  todo = [s for s in shards if names[s[0]] not in done]
  total = sum(s[3] for s in todo)
  log(f"{total} books to do in {len(todo)} shards ({len(done)} shards already complete) -> {options.output}, "
      f"lengths {', '.join(length_name(n) for n in options.lengths)}")
  if todo:
    with Progress(options.output, total, "books done", log) as progress:
      with beam.Pipeline(options=beam_options(beam_args)) as pipeline:
        (pipeline
         | "Shards" >> beam.Create(todo)
         | "Lines" >> beam.ParDo(_ReadShard(books))
         | "Spread" >> beam.Reshuffle()
         | "BookQA" >> beam.ParDo(_BookQA(options))
         | "ByShard" >> beam.GroupByKey()
         | "Write" >> beam.ParDo(_WriteShard(options, len(shards))))
      log(progress.line())
      progress.clear()
  new = (completed_shards(options.output) & set(names.values())) - done
  result = MakeQAResult(len(new), len(done), 0, 0, 0, {n: 0 for n in options.lengths}, {}, 0, 0.0)
  for name in sorted(new):
    record = read_done(options.output, name)
    result.books += record["books"]
    result.chunks += record["chunks"]
    result.qa_pairs += record["qa_pairs"]
    for n in options.lengths:
      result.records[n] += record["records"][str(n)]
    for d in record["dropped"]:
      result.dropped[d["reason"]] = result.dropped.get(d["reason"], 0) + 1
  result.rejects = merge_rejects(options.output, key=lambda r: (r["line"], -1 if r["chunk"] is None else r["chunk"]))
  result.seconds = time.monotonic() - start
  return result
