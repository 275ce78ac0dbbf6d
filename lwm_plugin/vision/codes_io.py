"""VQGAN code files: `lwm-vision encode` writes them, `lwm-vision decode` reads them (and two other kinds).

A codes file is JSON lines, one per input:

    {"source": "clips/dog.mp4", "vision": [[256 codes of frame 1], [256 codes of frame 2], ...]}

`read_codes` accepts, line by line:
  * codes lines as above; `source` is optional and any other key (e.g. generation's `"prompt"`) is
    ignored, so lines written by generation (`lwm-generate`) decode as they are;
  * LWM JSONL records (`docs/vocabulary.md`): every vision field named by the line's `fields` spec (or
    specs) is read, and so is the `vision` of every chat message (`{"messages": [...]}`).
A vision value is a flat list of F x 256 codes or a list of F frames; it is checked by the loader's own
rule (`data_loaders.examples.vision_frames`: integers, whole frames, codes in range). A bad line raises
`LWMFormatError` naming `file:line`, like the loader.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from data_loaders.atomic_file import atomic_path
from data_loaders.examples import LWMFormatError, vision_frames
from data_loaders.lwm_format import parse_fields_spec
from data_loaders.vocab import LWM_CODEBOOK_SIZE, LWM_TOKENS_PER_FRAME


@dataclasses.dataclass(frozen=True)
class FrameGeometry:
  """What `vision_frames` reads of a vocabulary: codes per frame and codebook size (no tokenizer needed)."""
  tokens_per_frame: int = LWM_TOKENS_PER_FRAME
  codebook_size: int = LWM_CODEBOOK_SIZE


@dataclasses.dataclass(frozen=True)
class CodesEntry:
  """One vision value of a codes file: where it came from and its frames, int32 [F, tokens_per_frame]."""
  path: str
  line_number: int             # 1-based
  source: str | None           # the line's "source" (codes lines), else None
  field: str                   # "vision", an LWM vision field's name, or "messages[i]"
  codes_FxT: np.ndarray

  @property
  def where(self) -> str:
    return f"{self.path}:{self.line_number}"


def codes_line(source: str | None, codes_FxT: np.ndarray, **extra: Any) -> str:
  """One codes line (no newline): `{"source": ..., "vision": [[...] per frame], **extra}`."""
  codes = np.asarray(codes_FxT)
  if codes.ndim != 2 or codes.shape[0] < 1 or codes.dtype.kind not in "iu":
    raise ValueError(f"codes must be integers of shape [F >= 1, tokens_per_frame], got {codes.dtype} {codes.shape}")
  obj: dict[str, Any] = {} if source is None else {"source": source}
  obj["vision"] = codes.astype(np.int64).tolist()
  obj.update(extra)
  return json.dumps(obj, separators=(",", ":"))


def write_codes(path: str | os.PathLike, entries: Iterable[tuple[str | None, np.ndarray]]) -> Path:
  """(source, codes [F, T]) pairs -> a codes file, written atomically."""
  with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
    for source, codes in entries:
      f.write(codes_line(source, codes) + "\n")
  return Path(path)


def _vision_values(obj: dict[str, Any]) -> list[tuple[str, Any]]:
  """(field name, raw value) of every vision value of one parsed line (see the module docstring)."""
  if "fields" in obj:
    specs = obj["fields"] if isinstance(obj["fields"], list) else [obj["fields"]]
    names: list[str] = []
    for spec in specs:
      if not isinstance(spec, str):
        raise LWMFormatError("spec", f"'fields' must be a spec string or a list of them, got {json.dumps(spec)[:80]}")
      try:
        items = parse_fields_spec(spec)
      except ValueError as e:
        raise LWMFormatError("spec", str(e)) from None
      names += [i.names[0] for i in items if i.kind == "vision" and i.names[0] not in names]
    missing = [n for n in names if n not in obj]
    if missing:
      raise LWMFormatError("field", f"missing vision field {missing[0]!r} named by the fields spec")
    return [(n, obj[n]) for n in names]
  if "messages" in obj:
    messages = obj["messages"]
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
      raise LWMFormatError("type", "'messages' must be a list of objects")
    return [(f"messages[{i}]", m["vision"]) for i, m in enumerate(messages) if "vision" in m]
  if "vision" in obj:
    return [("vision", obj["vision"])]
  raise LWMFormatError("field", f"no 'vision' (codes line), 'fields' or 'messages' (LWM record); "
                                f"the line has keys {sorted(obj)[:20]}")


def read_codes(path: str | os.PathLike, geometry: FrameGeometry = FrameGeometry()) -> Iterator[CodesEntry]:
  """Every vision value of a codes file, LWM JSONL file or generation output, in file order.

  Raises `LWMFormatError` (`file:line: reason`) on a malformed line, a line without vision, a source
  that is not a string or codes that are not whole frames of in-range integers.
  """
  path = str(path)
  with open(path, encoding="utf-8") as f:
    for number, raw in enumerate(f, start=1):
      try:
        if not raw.strip():
          raise LWMFormatError("empty", "blank line")
        try:
          obj = json.loads(raw)
        except json.JSONDecodeError as e:
          raise LWMFormatError("json", f"malformed JSON ({e})") from None
        if not isinstance(obj, dict):
          raise LWMFormatError("json", f"expected a JSON object, got {type(obj).__name__}")
        source = obj.get("source")
        if source is not None and not isinstance(source, str):
          raise LWMFormatError("type", f"'source' must be a string, got {type(source).__name__}")
        values = _vision_values(obj)
        if not values:
          raise LWMFormatError("field", "the record has no vision value")
        for field, value in values:
          frames = vision_frames(value, geometry, None, f"{field!r}")
          yield CodesEntry(path, number, source, field, frames.astype(np.int32))
      except LWMFormatError as e:
        raise LWMFormatError(e.kind, e.reason, path, number) from None
