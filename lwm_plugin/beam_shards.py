"""Sharded outputs of this project's Apache Beam pipelines (`lwm-vision prepare`, `lwm-make-qa`).

What both pipelines share, so that it is written once:

* `beam_options`: the command line's Beam options; without a runner, the DirectRunner in multi-process
  mode with one worker per core. `--runner DataflowRunner --project ...` etc. pass through unchanged.
* `publish`: a file written under a temporary name, then renamed onto its destination (atomic locally
  through `data_loaders.atomic_file`; a rename on any other Beam file system).
* Done-records: a shard is complete when `OUT/_shards/<shard>.json` exists (written after the shard's
  data files); `completed_shards` lists them, so a rerun skips that work. Each done-record carries the
  shard's rejects; `merge_rejects` gathers them into `OUT/rejects.jsonl`.
* `Progress`: while a pipeline runs, workers leave one-number files in `OUT/_progress/` (`mark_progress`);
  the driver sums them every few seconds into a line with the rate and an ETA, and removes them at the end.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import tempfile
import threading
import time
import uuid
from typing import Any, Callable, Sequence

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from data_loaders.atomic_file import atomic_path

DONE_DIR = "_shards"
PROGRESS_DIR = "_progress"   # one tiny file per unit of work done, while a run is going
REJECTS = "rejects.jsonl"


def beam_options(beam_args: Sequence[str]) -> PipelineOptions:
  """The command line's Beam options; without a runner: the DirectRunner, multi-process, one worker per core."""
  options = PipelineOptions(list(beam_args))
  if options.view_as(StandardOptions).runner is None:
    options.view_as(StandardOptions).runner = "DirectRunner"
    direct = options.view_as(DirectOptions)
    if not any(a.startswith(("--direct_running_mode", "--direct_num_workers")) for a in beam_args):
      direct.direct_running_mode = "multi_processing"
      direct.direct_num_workers = os.cpu_count() or 1
  return options


def _is_local(path: str) -> bool:
  return "://" not in path


def write_text(path: str, text: str) -> None:
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)


def publish(dest: str, write: Callable[[str], None]) -> None:
  """`write(tmp)` then rename onto `dest`: atomic locally, a rename on any other Beam file system."""
  if _is_local(dest):
    with atomic_path(dest) as tmp:
      write(tmp)
    return
  with tempfile.TemporaryDirectory() as scratch:
    local = os.path.join(scratch, "file")
    write(local)
    tmp = f"{dest}.tmp-{uuid.uuid4().hex}"
    with open(local, "rb") as src, FileSystems.create(tmp) as out:
      shutil.copyfileobj(src, out)
    FileSystems.rename([tmp], [dest])


def publish_text(dest: str, text: str) -> None:
  publish(dest, lambda tmp: write_text(tmp, text))


def done_path(output: str, shard: str) -> str:
  return FileSystems.join(output, DONE_DIR, f"{shard}.json")


def completed_shards(output: str) -> set[str]:
  """Names of the shards whose done-record exists (none when `OUT/_shards` does not)."""
  if not FileSystems.exists(FileSystems.join(output, DONE_DIR)):
    return set()
  pattern = FileSystems.join(output, DONE_DIR, "part-*.json")
  found = FileSystems.match([pattern])[0].metadata_list
  return {posixpath.basename(m.path)[:-len(".json")] for m in found}


def read_done(output: str, shard: str) -> dict[str, Any]:
  with FileSystems.open(done_path(output, shard)) as f:
    return json.loads(f.read())


def merge_rejects(output: str, key: Callable[[dict[str, Any]], Any]) -> int:
  """`OUT/rejects.jsonl` from every done-record's `rejects` (sorted by `key`), atomically; returns its length."""
  rejects = []
  for shard in sorted(completed_shards(output)):
    rejects += read_done(output, shard)["rejects"]
  rejects.sort(key=key)
  publish_text(FileSystems.join(output, REJECTS), "".join(json.dumps(r) + "\n" for r in rejects))
  return len(rejects)


def mark_progress(output: str, n: int) -> None:
  """A worker's note that `n` more units are done (a retried bundle counts twice)."""
  with FileSystems.create(FileSystems.join(output, PROGRESS_DIR, f"{uuid.uuid4().hex}.n")) as f:
    f.write(str(n).encode())


class Progress:
  """Sums the workers' progress files while the pipeline runs: `N/total {what}, rate/s, ETA`."""

  def __init__(self, output: str, total: int, what: str, log: Callable[[str], None], period: float = 5.0):
    self.output, self.total, self.what, self.log, self.period = output, total, what, log, period
    self.start = time.monotonic()
    self.stop = threading.Event()
    self.thread = threading.Thread(target=self._run, daemon=True)

  def _files(self) -> list[str]:
    pattern = FileSystems.join(self.output, PROGRESS_DIR, "*.n")
    return [m.path for m in FileSystems.match([pattern])[0].metadata_list]

  def done_units(self) -> int:
    n = 0
    for path in self._files():
      with FileSystems.open(path) as f:
        text = f.read().decode()
      n += int(text) if text.isdigit() else 0  # a file still being written counts next time
    return n

  def line(self) -> str:
    n, elapsed = min(self.done_units(), self.total), time.monotonic() - self.start
    rate = n / elapsed if elapsed > 0 else 0.0
    eta = f"{(self.total - n) / rate:.0f} s" if rate > 0 else "unknown"
    return f"{n}/{self.total} {self.what}, {rate:.2f}/s, ETA {eta}"

  def _run(self):
    while not self.stop.wait(self.period):
      self.log(self.line())

  def __enter__(self):
    self.clear()
    self.thread.start()
    return self

  def __exit__(self, *exc):
    self.stop.set()
    self.thread.join()

  def clear(self) -> None:
    files = self._files()
    if files:
      FileSystems.delete(files)
