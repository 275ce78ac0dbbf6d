"""Random-access record sources for the Grain loader, and their decoding into examples.

Grain's global shuffle, host sharding and multiprocessing all slice a `MapDataset`, which needs a
random-access source (`__len__`, `__getitem__`; picklable for worker processes). Three formats:

* LWM JSONL (`JsonlSource`): a byte-offset index of line starts, built once by scanning the files
  in 64 MiB chunks (about 1 s per GB); a record is one line.
* ArrayRecord of pre-tokenized examples (`ArrayRecordSource`): each record is a msgpack map
  `{"tokens": int32 little-endian bytes, "loss_mask": uint8 bytes}` (`data_loaders.pretokenized`).
* Parquet of pre-tokenized examples (`ParquetSource`): list columns `tokens` and `loss_mask`. A
  record read decodes its whole row group (cached, the last few per process), so a global shuffle
  over Parquet wants small row groups; ArrayRecord has true random access.

Every source yields `Record(path, line_number, payload)` (line_number is 1-based: the JSONL line,
or the record number in its file), and `RecordDecoder` turns one into an example
`{"tokens", "loss_mask", "is_vision"}` with `is_vision` taken from the vocabulary. A bad record
raises `LWMFormatError` naming `path:line`; with `skip_invalid=True` the decoder returns an
`InvalidRecord` instead, which the example stream counts (`data_loaders.stream`).
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import glob
import logging
import mmap
import os
from typing import Any, Iterator, Literal, Sequence

import msgpack
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from data_loaders.lwm_format import FormatOptions, LWMFormatError, example_from_line
from data_loaders.vocab import MultimodalVocab

logger = logging.getLogger(__name__)

_CHUNK = 64 << 20  # bytes scanned at a time while indexing JSONL lines


class LWMDataSource(BaseModel):
  """One training (or evaluation) data source of the LWM loader: a list item of `lwm_data_sources`."""

  model_config = ConfigDict(extra="forbid", frozen=True)

  name: str = Field(..., min_length=1, description="Unique name, used in logs, errors, seeds and iterator state.")
  files: tuple[str, ...] = Field(
      ..., min_length=1,
      description="File paths or glob patterns (relative paths are resolved from the working directory); every "
      "pattern must match at least one file. Matches are sorted.")
  format: Literal["jsonl", "arrayrecord", "parquet"] = Field(
      "jsonl",
      description="'jsonl': LWM JSONL lines (data_loaders.lwm_format); 'arrayrecord' / 'parquet': pre-tokenized "
      "examples written by data_loaders.pretokenized (tokens + loss_mask).")
  weight: float = Field(
      1.0, gt=0,
      description="Mixture weight. Within a packing group, examples are drawn in proportion to the weights of its "
      "sources; across groups, packed rows are drawn in proportion to each group's total weight.")
  group: str = Field(
      "default", min_length=1,
      description="Packing group: examples of different groups are never packed into one row (the paper keeps "
      "UltraChat and long-context QA apart).")
  default_fields: str | None = Field(
      None, description="JSONL: fields spec for lines without a 'fields' key (e.g. 'text' for {\"text\": ...}).")
  fields_index: int = Field(
      -1, ge=-1, description="JSONL: pick this spec of a 'fields' list instead of LWM's per-line random choice.")
  fields: str | None = Field(
      None, description="JSONL: this fields spec for every line, in place of the line's own (e.g. '[vision],caption' "
      "trains captioning from caption lines without loss on the image); not with fields_index.")

  @field_validator("files", mode="before")
  @classmethod
  def _one_file(cls, value):
    return (value,) if isinstance(value, str) else value

  @model_validator(mode="after")
  def _spec_options(self):
    try:  # FormatOptions owns the spec rules: a malformed spec, or two ways to choose one
      FormatOptions(default_fields=self.default_fields, fields_index=self.fields_index, fields=self.fields)
    except ValueError as e:
      raise ValueError(f"data source {self.name!r}: {e}") from None
    return self


def check_unique_names(sources: Sequence[LWMDataSource], what: str) -> None:
  """Source names key seeds, logs and iterator state: a repeated name is a ValueError naming it."""
  names = [s.name for s in sources]
  dupes = sorted({n for n in names if names.count(n) > 1})
  if dupes:
    raise ValueError(f"{what}: source names must be unique, repeated: {dupes}")


@dataclasses.dataclass(frozen=True)
class Record:
  """One raw record: its file, 1-based line (or record) number, and undecoded payload."""
  path: str
  line_number: int
  payload: Any

  @property
  def where(self) -> str:
    return f"{self.path}:{self.line_number}"


@dataclasses.dataclass(frozen=True)
class InvalidRecord:
  """A bad record that `skip_invalid` skips: what was wrong and where."""
  kind: str
  message: str


def expand_files(patterns: Sequence[str], what: str) -> list[str]:
  """Glob patterns -> sorted file paths; every pattern must match a file (no silent empty source)."""
  paths = []
  for pattern in patterns:
    matches = sorted(glob.glob(os.path.expanduser(pattern)))
    matches = [m for m in matches if os.path.isfile(m)]
    if not matches:
      raise FileNotFoundError(f"{what}: {pattern!r} matches no file (relative paths start at {os.getcwd()})")
    paths.extend(matches)
  return paths


def _line_spans(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(starts, ends) byte offsets of every line of `path` (a last line without newline counts)."""
  size = os.path.getsize(path)
  if size == 0:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)
  newlines = []
  with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
    for offset in range(0, size, _CHUNK):
      chunk = np.frombuffer(mm[offset:offset + _CHUNK], np.uint8)
      newlines.append(np.flatnonzero(chunk == ord("\n")).astype(np.int64) + offset)
  ends = np.concatenate(newlines)
  if not len(ends) or ends[-1] != size - 1:
    ends = np.append(ends, size)
  starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
  return starts, ends


class _FileSet:
  """Global record index over several files: index -> (file number, 0-based record in the file)."""

  def __init__(self, paths: Sequence[str], counts: Sequence[int]):
    self.paths = tuple(paths)
    self.first = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

  def __len__(self) -> int:
    return int(self.first[-1])

  def locate(self, index: int) -> tuple[int, int]:
    if not 0 <= index < len(self):
      raise IndexError(f"record {index} out of range [0, {len(self)})")
    f = bisect.bisect_right(self.first, index) - 1
    return f, index - int(self.first[f])


class JsonlSource:
  """LWM JSONL files as a random-access source of lines (`Record.payload`: the line's bytes)."""

  def __init__(self, paths: Sequence[str]):
    spans = [_line_spans(p) for p in paths]
    self._files = _FileSet(paths, [len(s) for s, _ in spans])
    self._starts = [s for s, _ in spans]
    self._ends = [e for _, e in spans]
    self._maps: dict[int, mmap.mmap] = {}

  def __len__(self) -> int:
    return len(self._files)

  def __getitem__(self, index: int) -> Record:
    f, i = self._files.locate(int(index))
    mm = self._maps.get(f)
    if mm is None:
      with open(self._files.paths[f], "rb") as handle:
        mm = self._maps[f] = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    return Record(self._files.paths[f], i + 1, mm[int(self._starts[f][i]):int(self._ends[f][i])])

  def __getstate__(self) -> dict[str, Any]:
    return {k: v for k, v in self.__dict__.items() if k != "_maps"}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state, _maps={})

  def __repr__(self) -> str:
    return f"JsonlSource({len(self._files.paths)} files, {len(self)} lines)"


class ArrayRecordSource:
  """ArrayRecord files of pre-tokenized examples (`Record.payload`: the record's bytes)."""

  def __init__(self, paths: Sequence[str]):
    from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
    counts = []
    for path in paths:
      reader = array_record_module.ArrayRecordReader(path)
      counts.append(reader.num_records())
      reader.close()
    self._files = _FileSet(paths, counts)
    self._readers: dict[int, Any] = {}

  def __len__(self) -> int:
    return len(self._files)

  def __getitem__(self, index: int) -> Record:
    from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
    f, i = self._files.locate(int(index))
    reader = self._readers.get(f)
    if reader is None:
      reader = self._readers[f] = array_record_module.ArrayRecordReader(
          self._files.paths[f], "readahead_buffer_size:0")
    return Record(self._files.paths[f], i + 1, reader.read([i])[0])

  def __getstate__(self) -> dict[str, Any]:
    return {k: v for k, v in self.__dict__.items() if k != "_readers"}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state, _readers={})

  def __repr__(self) -> str:
    return f"ArrayRecordSource({len(self._files.paths)} files, {len(self)} records)"


class ParquetSource:
  """Parquet files of pre-tokenized examples (`Record.payload`: `(tokens, loss_mask)` lists)."""

  _CACHE = 4  # row groups kept per process

  def __init__(self, paths: Sequence[str]):
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
    self._groups: list[list[int]] = []  # per file: first row of each row group, then the row count
    counts = []
    for path in paths:
      meta = pq.ParquetFile(path).metadata
      rows = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
      self._groups.append(np.concatenate([[0], np.cumsum(rows)]).astype(np.int64).tolist())
      counts.append(int(sum(rows)))
    self._files = _FileSet(paths, counts)
    self._cache: collections.OrderedDict = collections.OrderedDict()

  def __len__(self) -> int:
    return len(self._files)

  def __getitem__(self, index: int) -> Record:
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
    f, i = self._files.locate(int(index))
    g = bisect.bisect_right(self._groups[f], i) - 1
    key = (f, g)
    if key not in self._cache:
      table = pq.ParquetFile(self._files.paths[f]).read_row_group(g, columns=["tokens", "loss_mask"])
      self._cache[key] = (table.column("tokens").to_pylist(), table.column("loss_mask").to_pylist())
      while len(self._cache) > self._CACHE:
        self._cache.popitem(last=False)
    self._cache.move_to_end(key)
    tokens, loss = self._cache[key]
    row = i - self._groups[f][g]
    return Record(self._files.paths[f], i + 1, (tokens[row], loss[row]))

  def __getstate__(self) -> dict[str, Any]:
    return {k: v for k, v in self.__dict__.items() if k != "_cache"}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state, _cache=collections.OrderedDict())

  def __repr__(self) -> str:
    return f"ParquetSource({len(self._files.paths)} files, {len(self)} rows)"


SOURCES = {"jsonl": JsonlSource, "arrayrecord": ArrayRecordSource, "parquet": ParquetSource}


def open_source(format_name: str, paths: Sequence[str]):
  if format_name not in SOURCES:
    raise ValueError(f"unknown data format {format_name!r}; expected one of {sorted(SOURCES)}")
  return SOURCES[format_name](paths)


def pretokenized_example(tokens: Any, loss_mask: Any, vocab: MultimodalVocab) -> dict[str, np.ndarray]:
  """Checks a pre-tokenized (tokens, loss_mask) pair and adds `is_vision`; raises LWMFormatError (no source)."""
  try:
    tokens = np.asarray(tokens)
    loss = np.asarray(loss_mask)
  except (TypeError, ValueError) as e:
    raise LWMFormatError("type", f"tokens/loss_mask are not arrays of integers ({e})") from None
  if tokens.ndim != 1 or loss.shape != tokens.shape or tokens.dtype.kind not in "iu" or loss.dtype.kind not in "iub":
    raise LWMFormatError("type", f"tokens {tokens.dtype}{tokens.shape} and loss_mask {loss.dtype}{loss.shape} must be "
                                 "1-D integer arrays of one length")
  if len(tokens) < 2:
    raise LWMFormatError("empty", f"example of {len(tokens)} tokens has no target")
  lo, hi = int(tokens.min()), int(tokens.max())
  if lo < 0 or hi >= vocab.size:
    raise LWMFormatError("code", f"token id {lo if lo < 0 else hi} out of range [0, {vocab.size})")
  if loss.min() < 0 or loss.max() > 1:
    raise LWMFormatError("type", "loss_mask must hold only 0 and 1")
  return {"tokens": tokens.astype(np.int32), "loss_mask": loss.astype(np.int32), "is_vision": vocab.is_vision(tokens)}


class RecordDecoder:
  """`Record` -> `(example or InvalidRecord, "path:line")`; a picklable `MapDataset.map` function."""

  def __init__(self, format_name: str, vocab: MultimodalVocab, options: FormatOptions = FormatOptions(), *,
               skip_invalid: bool = False, text_only: bool = False):
    if format_name not in SOURCES:
      raise ValueError(f"unknown data format {format_name!r}; expected one of {sorted(SOURCES)}")
    self.format_name, self.vocab, self.options, self.skip_invalid = format_name, vocab, options, skip_invalid
    self.text_only = text_only

  def __call__(self, record: Record) -> tuple[Any, str]:
    try:
      example = self._decode(record)
      if self.text_only and example["is_vision"].any():
        raise LWMFormatError("vision", f"vision tokens in a text-only model (vocab_size = the {self.vocab.text_size} "
                             "text ids); train vision data with the multimodal vocabulary (docs/vocabulary.md)")
      return example, record.where
    except LWMFormatError as e:
      error = LWMFormatError(e.kind, e.reason, record.path, record.line_number)
      if not self.skip_invalid:
        raise error from None
      return InvalidRecord(e.kind, str(error)), record.where

  def _decode(self, record: Record) -> dict[str, np.ndarray]:
    if self.format_name == "jsonl":
      if not bytes(record.payload).strip():
        raise LWMFormatError("empty", "blank line")
      return example_from_line(record.payload, self.vocab, example_index=record.line_number - 1,
                               options=self.options)
    if self.format_name == "parquet":
      return pretokenized_example(*record.payload, self.vocab)
    try:
      obj = msgpack.unpackb(record.payload, raw=False)
      tokens = np.frombuffer(obj["tokens"], "<i4")
      loss = np.frombuffer(obj["loss_mask"], np.uint8)
    except (msgpack.UnpackException, ValueError, KeyError, TypeError) as e:
      raise LWMFormatError("json", f"not a pre-tokenized record {{'tokens', 'loss_mask'}} ({type(e).__name__}: {e})"
                           ) from None
    return pretokenized_example(tokens, loss, self.vocab)


@dataclasses.dataclass(frozen=True)
class Provenance:
  """Where an example came from: file, 1-based line number, and the index that seeded its spec choice."""
  source: str
  line_number: int
  example_index: int


@dataclasses.dataclass
class ReadStats:
  examples: int = 0
  skipped: int = 0
  skipped_by_kind: collections.Counter = dataclasses.field(default_factory=collections.Counter)


class LWMJsonlReader:
  """Iterates `(example, Provenance)` over one LWM JSONL file, outside Grain (tools, tests, benchmarks).

  The same path as the loader: `JsonlSource` records decoded by `RecordDecoder`. Bad lines raise
  `LWMFormatError` (file:line) unless `skip_invalid=True`, which skips them, logs each at WARNING
  and counts them in `stats` (by kind). `start_line` (1-based) resumes mid-file; the spec choice
  depends only on the line index, so a resumed read yields the same examples. A blank line is an
  invalid (empty) example, never silently passed over.
  """

  def __init__(self, path: str | os.PathLike, vocab: MultimodalVocab, *, options: FormatOptions = FormatOptions(),
               skip_invalid: bool = False, start_line: int = 1):
    if start_line < 1:
      raise ValueError(f"start_line is 1-based, got {start_line}")
    options.frame_limit(vocab)  # validates the budget before any line is read
    self.path, self.start_line = str(path), start_line
    self._decode = RecordDecoder("jsonl", vocab, options, skip_invalid=skip_invalid)
    self.stats = ReadStats()

  def __iter__(self) -> Iterator[tuple[dict[str, np.ndarray], Provenance]]:
    source = JsonlSource([self.path])
    for index in range(self.start_line - 1, len(source)):
      example, _ = self._decode(source[index])
      if isinstance(example, InvalidRecord):
        self.stats.skipped += 1
        self.stats.skipped_by_kind[example.kind] += 1
        logger.warning("skipped invalid line: %s", example.message)
        continue
      self.stats.examples += 1
      yield example, Provenance(self.path, index + 1, index)
