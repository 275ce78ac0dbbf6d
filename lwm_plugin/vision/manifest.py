"""The inputs of `lwm-vision prepare`: manifests of image-text / video-text pairs and WebDataset shards.

A manifest file is one of
  * JSON lines (`.jsonl`, `.json`), CSV (`.csv`, with a header) or Parquet (`.parquet`): one row per
    pair, with a `caption` column and exactly one of `image` / `video` set (a path; relative paths start
    at the manifest's directory; any path Beam's file systems read, e.g. `gs://...`);
  * a WebDataset tar shard (`.tar`): members grouped by key (the member name up to the first dot of its
    base name); each group needs one image (`.jpg .jpeg .png .webp`) or video (`.mp4 .webm .mkv .mov
    .avi`) member and a `.txt` caption.
Rows are numbered in file order; `(manifest number, row)` decides the output shard (`shard_name`), so a
rerun with the same manifests assigns every input to the same shard. A row that is not a valid pair
(no caption, neither or both of image and video, a tar group without media) becomes a reject with
reason `manifest`, listed like an unreadable image; a manifest whose columns cannot hold pairs at all
is a `ManifestError` before anything runs.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import posixpath
import tarfile
from typing import Any, Iterator

from apache_beam.io.filesystems import FileSystems

MANIFEST_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".tar")
WDS_IMAGE = (".jpg", ".jpeg", ".png", ".webp")
WDS_VIDEO = (".mp4", ".webm", ".mkv", ".mov", ".avi")


class ManifestError(ValueError):
  """A manifest that cannot be read as pairs at all (unknown suffix, missing columns, unreadable file)."""


@dataclasses.dataclass(frozen=True)
class MediaInput:
  """One pair to prepare. `location` is ("file", path) or ("tar", tar path, data offset, size)."""
  manifest: int
  row: int
  kind: str                 # "image" | "video" | "invalid"
  source: str               # a path, or "TAR::member" for a WebDataset member
  caption: str
  location: tuple = ()
  problem: str = ""         # for kind == "invalid": what is wrong with the row


def shard_name(manifest: int, row: int, shard_size: int) -> str:
  """The output shard of an input: `part-MMMMM-BBBBB` (manifest number, block of `shard_size` rows)."""
  return f"part-{manifest:05d}-{row // shard_size:05d}"


def suffix(path: str) -> str:
  base = posixpath.basename(path).lower()
  return base[base.rfind("."):] if "." in base else ""


def expand(patterns: list[str] | tuple[str, ...]) -> list[str]:
  """Manifest paths and glob patterns (any Beam file system) -> the files, each pattern's matches sorted.

  Raises ManifestError for a pattern that matches nothing, a missing file or an unknown suffix (the
  columns are checked when the rows are read).
  """
  paths = []
  for pattern in patterns:
    if any(c in pattern for c in "*?["):
      matches = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
      if not matches:
        raise ManifestError(f"manifest pattern {pattern!r} matches no file")
    else:
      if not FileSystems.exists(pattern):
        raise ManifestError(f"manifest {pattern!r}: no such file")
      matches = [pattern]
    for path in matches:
      if suffix(path) not in MANIFEST_SUFFIXES:
        raise ManifestError(f"manifest {path!r}: unknown suffix (expected one of {', '.join(MANIFEST_SUFFIXES)})")
    paths += matches
  return paths


def _resolve(manifest_path: str, media: str) -> str:
  if "://" in media or posixpath.isabs(media):
    return media
  directory = posixpath.dirname(manifest_path)
  return FileSystems.join(directory, media) if directory else media


def _pair(manifest: int, row: int, path: str, obj: Any) -> MediaInput:
  def invalid(problem: str) -> MediaInput:
    return MediaInput(manifest, row, "invalid", f"{path}:{row + 1}", "", (), problem)
  if not isinstance(obj, dict):
    return invalid(f"expected an object with 'caption' and 'image' or 'video', got {type(obj).__name__}")
  caption = obj.get("caption")
  media = {k: obj.get(k) for k in ("image", "video") if obj.get(k) not in (None, "")}
  if not isinstance(caption, str) or not caption.strip():
    return invalid("no caption (a non-empty string 'caption')")
  if len(media) != 1:
    return invalid(f"exactly one of 'image' or 'video' must be set, got {sorted(media) or 'neither'}")
  (kind, value), = media.items()
  if not isinstance(value, str):
    return invalid(f"{kind!r} must be a path string, got {type(value).__name__}")
  full = _resolve(path, value)
  return MediaInput(manifest, row, kind, full, caption, ("file", full))


def _table_rows(path: str) -> Iterator[Any]:
  kind = suffix(path)
  if kind == ".parquet":
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
    with FileSystems.open(path) as f:
      table = pq.read_table(f)
    missing = {"caption"} - set(table.column_names)
    if missing or not {"image", "video"} & set(table.column_names):
      raise ManifestError(f"manifest {path!r}: columns {table.column_names}; expected 'caption' and 'image' "
                          "and/or 'video'")
    yield from table.to_pylist()
    return
  with FileSystems.open(path) as f:
    text = io.TextIOWrapper(f, encoding="utf-8")
    if kind == ".csv":
      reader = csv.DictReader(text)
      fields = reader.fieldnames or []
      if "caption" not in fields or not {"image", "video"} & set(fields):
        raise ManifestError(f"manifest {path!r}: CSV header {fields}; expected 'caption' and 'image' and/or 'video'")
      yield from reader
      return
    for line in text:
      try:
        yield json.loads(line)
      except json.JSONDecodeError as e:
        yield f"malformed JSON ({e})"


def _tar_groups(path: str) -> Iterator[tuple[str, dict[str, tuple[int, int]], bytes | None]]:
  """(key, {extension: (data offset, size)}, the .txt member's bytes) per WebDataset group, in tar order."""
  key, group, caption = None, {}, None
  with FileSystems.open(path) as f:
    try:
      with tarfile.open(fileobj=f, mode="r|") as tar:
        for member in tar:
          if not member.isfile():
            continue
          directory, base = posixpath.split(member.name)
          this = posixpath.join(directory, base.split(".", 1)[0])
          if this != key and key is not None:
            yield key, group, caption
            group, caption = {}, None
          key = this
          ext = "." + base.split(".", 1)[1].lower() if "." in base else ""
          group[ext] = (member.offset_data, member.size)
          if ext == ".txt":
            caption = tar.extractfile(member).read()
    except tarfile.TarError as e:
      raise ManifestError(f"WebDataset shard {path!r}: not a readable tar file ({e})") from None
  if key is not None:
    yield key, group, caption


def _tar_pair(manifest: int, row: int, path: str, key: str, group: dict[str, tuple[int, int]],
              caption: bytes | None) -> MediaInput:
  source = f"{path}::{key}"
  media = [(ext, "image") for ext in WDS_IMAGE if ext in group] + [(ext, "video") for ext in WDS_VIDEO if ext in group]
  try:
    text = (caption or b"").decode("utf-8").strip()
  except UnicodeDecodeError:
    text = ""
  if not text or len(media) != 1:
    problem = ("no .txt caption (or an empty or non-UTF-8 one)" if not text else
               f"expected one image or video member, got {sorted(e for e, _ in media) or 'none'}")
    return MediaInput(manifest, row, "invalid", source, "", (), problem)
  ext, kind = media[0]
  return MediaInput(manifest, row, kind, source + ext, text, ("tar", path, *group[ext]))


def rows(manifest: int, path: str) -> Iterator[MediaInput]:
  """Every row of one manifest file as a `MediaInput` (invalid rows included, marked `invalid`)."""
  if suffix(path) == ".tar":
    for row, (key, group, caption) in enumerate(_tar_groups(path)):
      yield _tar_pair(manifest, row, path, key, group, caption)
    return
  for row, obj in enumerate(_table_rows(path)):
    if isinstance(obj, str):  # a JSONL line that did not parse
      yield MediaInput(manifest, row, "invalid", f"{path}:{row + 1}", "", (), obj)
    else:
      yield _pair(manifest, row, path, obj)


def read_bytes(item: MediaInput) -> bytes:
  """The media file's bytes (a plain file, or a member of a WebDataset tar)."""
  if item.location[0] == "file":
    with FileSystems.open(item.location[1]) as f:
      return f.read()
  _, tar_path, offset, size = item.location
  with FileSystems.open(tar_path) as f:
    f.seek(offset)
    return f.read(size)
