"""`lwm-vision prepare`: image-text and video-text pairs -> sharded LWM training records, on Apache Beam.

    manifests (JSONL / CSV / Parquet rows, WebDataset tars; `lwm_plugin.vision.manifest`)
      -> rows, minus those of completed shards -> Reshuffle (spread the work over the workers)
      -> read + decode + resize to 256x256 frames (`lwm_plugin.vision.media`)
      -> batches -> VQGAN encode (the codec is built once per worker, in `DoFn.setup`)
      -> group by shard -> one shard file per group, written atomically, then its done-record
    then the driver merges every done-record's rejects into `OUT/rejects.jsonl`. While it runs, each encoded
batch leaves a one-number file in `OUT/_progress/` that the driver sums for its progress line (inputs,
inputs/s, ETA every 5 s) and removes at the end.

Records are the LWM JSONL lines of `docs/vocabulary.md`, as the vision stages read them (paper Sec. 4.2:
image-text and video-text pairs in both orders, LWM's modality swap):

    {"fields": ["[caption],vision", "vision,caption"], "caption": "...", "vision": [F x 256 codes], "source": "..."}

(`source` is provenance for `lwm-vision decode`; the loader ignores keys the spec does not name). With
`--format arrayrecord` each line is tokenized here with the loader's own function, spec choice included
(`random.Random(index in the shard)`, what the JSONL loader does with the line index), and stored as the
pre-tokenized records `data_loaders.pretokenized` defines.

Shards: input row r of manifest m goes to `part-MMMMM-BBBBB` with B = r // shard_size, so the assignment
depends only on the manifests; records in a shard are in row order. A shard is complete when its
done-record `OUT/_shards/<shard>.json` exists (written after the shard's data file, both atomically); a
rerun skips the rows of complete shards before reading them. A shard whose inputs were all rejected has a
done-record and no data file. Every input that cannot be used (missing file, corrupt, zero frames, no
decoder, a bad manifest row) is a reject `{"source", "reason", "detail", "manifest", "row"}`: listed,
never fatal, never dropped silently.

Runs on any Beam runner: the DirectRunner in multi-process mode (one worker per core) unless the
command line names a runner or DirectRunner options; `--runner DataflowRunner --project ...` etc. pass
through unchanged. The codec factory must be picklable (it travels to the workers).
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Callable, Protocol, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from data_loaders.lwm_format import CAPTION_FIELDS, example_from_line, parse_fields_spec
from data_loaders.pretokenized import encode_record
from data_loaders.vocab import MultimodalVocab
from lwm_plugin.beam_shards import (Progress, beam_options, completed_shards, done_path, mark_progress,
                                    merge_rejects, publish, publish_text, read_done, write_text)
from lwm_plugin.vision import manifest as mf
from lwm_plugin.vision import media

FORMATS = ("jsonl", "arrayrecord")
DEFAULT_FIELDS = CAPTION_FIELDS


class Codec(Protocol):
  """What prepare needs of the VQGAN: float32 frames [B, 256, 256, 3] in [-1, 1] -> int codes [B, h, w]."""

  def encode(self, pixels_BxHxWx3: np.ndarray) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
  """Everything the workers need (picklable). `vocab_factory` is only used by --format arrayrecord."""
  output: str
  codec_factory: Callable[[], Codec]
  file_format: str = "jsonl"
  fields: tuple[str, ...] = DEFAULT_FIELDS
  fps: float = media.DEFAULT_FPS
  max_frames: int | None = None
  shard_size: int = 1000
  batch_size: int = 16
  vocab_factory: Callable[[], MultimodalVocab] | None = None

  def __post_init__(self):
    if self.file_format not in FORMATS:
      raise ValueError(f"format {self.file_format!r}: expected one of {FORMATS}")
    if self.file_format == "arrayrecord" and self.vocab_factory is None:
      raise ValueError("format arrayrecord tokenizes the captions: a vocab_factory is needed")
    for name in ("shard_size", "batch_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if not self.fields:
      raise ValueError("--fields: no spec")
    for spec in self.fields:
      try:
        items = parse_fields_spec(spec)
      except ValueError as e:
        raise ValueError(f"--fields: {e}") from None
      names = {n for item in items for n in item.names}
      if not names <= {"caption", "vision"} or "vision" not in names:
        raise ValueError(f"--fields {spec!r}: a spec names the fields 'caption' and 'vision' (and <|bos|>, "
                         f"<|eos|>) and includes vision; got {sorted(names)}")
    if self.max_frames is not None and self.max_frames < 1:
      raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")
    if not self.fps > 0:
      raise ValueError(f"fps must be > 0, got {self.fps}")


@dataclasses.dataclass
class PrepareResult:
  shards_written: int
  shards_skipped: int
  records: int
  rejects: int
  seconds: float


def data_path(output: str, shard: str, file_format: str) -> str:
  return FileSystems.join(output, f"{shard}.{file_format}")


def _reject(item: mf.MediaInput, reason: str, detail: str) -> dict[str, Any]:
  return {"source": item.source, "reason": reason, "detail": detail, "manifest": item.manifest, "row": item.row}


class _Expand(beam.DoFn):
  """(manifest number, path) -> its rows that belong to shards not yet complete."""

  def __init__(self, shard_size: int, done: frozenset[str]):
    self.shard_size, self.done = shard_size, done

  def process(self, element):
    number, path = element
    for item in mf.rows(number, path):
      if mf.shard_name(number, item.row, self.shard_size) not in self.done:
        yield item


class _ReadFrames(beam.DoFn):
  """A row -> ("ok", item, frames) or ("reject", item, reject record)."""

  def __init__(self, fps: float, max_frames: int | None):
    self.fps, self.max_frames = fps, max_frames

  def process(self, item: mf.MediaInput):
    if item.kind == "invalid":
      yield "reject", item, _reject(item, "manifest", item.problem)
      return
    try:
      data = mf.read_bytes(item)
    except (OSError, IOError) as e:  # Beam's BeamIOError is an IOError
      yield "reject", item, _reject(item, "missing", f"cannot read the file ({e})")
      return
    try:
      if item.kind == "image":
        frames = media.read_image(item.source, data)
      else:
        frames = media.read_video(item.source, data, fps=self.fps, max_frames=self.max_frames)
    except media.MediaError as e:
      yield "reject", item, _reject(item, e.reason, e.detail)
      return
    yield "ok", item, frames


class _Encode(beam.DoFn):
  """A batch of read rows -> (shard, (row, record or reject)); the codec is built once per worker."""

  def __init__(self, options: PrepareOptions):
    self.options = options
    self.codec = None

  def setup(self):
    self.codec = self.options.codec_factory()

  def process(self, batch: Sequence[tuple[str, mf.MediaInput, Any]]):
    mark_progress(self.options.output, len(batch))  # for the driver's progress line
    ok = [(item, frames) for status, item, frames in batch if status == "ok"]
    for status, item, reject in batch:
      if status == "reject":
        yield mf.shard_name(item.manifest, item.row, self.options.shard_size), (item.row, "reject", reject)
    if not ok:
      return
    codes = np.asarray(self.codec.encode(np.concatenate([frames for _, frames in ok])))
    codes_NxT = codes.reshape(codes.shape[0], -1)
    start = 0
    for item, frames in ok:
      vision = codes_NxT[start:start + len(frames)].reshape(-1)
      start += len(frames)
      record = {"fields": list(self.options.fields), "caption": item.caption, "vision": vision.tolist(),
                "source": item.source}
      yield mf.shard_name(item.manifest, item.row, self.options.shard_size), (item.row, "ok", record)


class _WriteShard(beam.DoFn):
  """(shard, [(row, status, record)]) -> the shard's data file (rows in order), then its done-record."""

  def __init__(self, options: PrepareOptions):
    self.options = options
    self.vocab = None

  def setup(self):
    if self.options.file_format == "arrayrecord":
      self.vocab = self.options.vocab_factory()

  def process(self, element):
    shard, entries = element
    entries = sorted(entries, key=lambda e: e[0])
    records = [r for _, status, r in entries if status == "ok"]
    rejects = [r for _, status, r in entries if status == "reject"]
    if records:
      publish(data_path(self.options.output, shard, self.options.file_format), lambda tmp: self._write(tmp, records))
    done = {"shard": shard, "records": len(records), "rejects": rejects}
    publish_text(done_path(self.options.output, shard), json.dumps(done) + "\n")
    yield shard

  def _write(self, tmp: str, records: list[dict[str, Any]]) -> None:
    if self.options.file_format == "jsonl":
      write_text(tmp, "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
      return
    from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
    writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
    try:
      for index, record in enumerate(records):
        writer.write(encode_record(example_from_line(record, self.vocab, source=tmp, line_number=index + 1,
                                                     example_index=index)))
    finally:
      writer.close()


def count_inputs(manifests: Sequence[str], shard_size: int, done: set[str]) -> int:
  """Rows still to prepare (all manifests, minus the rows of complete shards): the progress total."""
  total = 0
  for number, path in enumerate(manifests):
    total += sum(mf.shard_name(number, item.row, shard_size) not in done for item in mf.rows(number, path))
  return total


def build_pipeline(pipeline: beam.Pipeline, manifests: Sequence[str], options: PrepareOptions, done: set[str]):
  """The transforms, on `pipeline` (its options choose the runner)."""
  return (pipeline
          | "Manifests" >> beam.Create(list(enumerate(manifests)))
          | "Rows" >> beam.ParDo(_Expand(options.shard_size, frozenset(done)))
          | "Spread" >> beam.Reshuffle()
          | "Read" >> beam.ParDo(_ReadFrames(options.fps, options.max_frames))
          | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=options.batch_size)
          | "Encode" >> beam.ParDo(_Encode(options))
          | "ByShard" >> beam.GroupByKey()
          | "Write" >> beam.ParDo(_WriteShard(options)))


def prepare(manifests: Sequence[str], options: PrepareOptions, beam_args: Sequence[str] = (),
            log: Callable[[str], None] = print) -> PrepareResult:
  """Runs the pipeline to completion; returns counts. Manifests (paths or glob patterns) are expanded and
  checked first (`ManifestError`); their order after expansion numbers them, so reruns must pass the same."""
  manifests = mf.expand(manifests)
  start = time.monotonic()
  done = completed_shards(options.output)
  total = count_inputs(manifests, options.shard_size, done)
  log(f"{total} inputs to prepare ({len(done)} shards already complete) -> {options.output} ({options.file_format})")
  if total:
    with Progress(options.output, total, "inputs read and encoded", log) as progress:
      with beam.Pipeline(options=beam_options(beam_args)) as pipeline:
        build_pipeline(pipeline, manifests, options, done)
      log(progress.line())
      progress.clear()
  now = completed_shards(options.output) if total else done
  new = now - done
  records = 0
  for shard in new:
    records += read_done(options.output, shard)["records"]
  n_rejects = merge_rejects(options.output, key=lambda r: (r["manifest"], r["row"]))
  return PrepareResult(len(new), len(done), records, n_rejects, time.monotonic() - start)
