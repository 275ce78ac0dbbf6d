"""What `lwm-vision encode`, `decode` and `prepare` do, as Python functions over a loaded VQGAN.

`lwm_plugin.vision.vision_cli` checks the command line and then calls these; this module imports JAX (through
the VQGAN) and Beam, which is why the CLI imports it only after its checks.

  encode_files(codec, inputs, output, fps=, max_frames=)   media files -> one codes line per input
  decode_file(codec, codes_path, output_dir, fps=)        codes / generation / LWM lines -> PNG, MP4 + GIF
  prepare(manifests, options, beam_args)                  `lwm_plugin.vision.prepare` (re-exported for the CLI)

Decode names its outputs `<stem of source>` (`.png` for one frame; `.mp4` and a `.gif` preview for
several), the line number when a line has no source, with `-<field>` added for LWM records that hold
several vision values. Every name is planned before anything is written: two lines that would write
the same file are an error naming both.
"""

from __future__ import annotations

import dataclasses
import math
import posixpath
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from data_loaders.examples import LWMFormatError
from data_loaders.vocab import MultimodalVocab
from lwm_plugin.vision import codes_io, media
from lwm_plugin.vision.prepare import PrepareOptions, prepare  # pylint: disable=unused-import  (the CLI's)
from lwm_plugin.vision.manifest import ManifestError  # pylint: disable=unused-import  (the CLI's)
from lwm_plugin.vision.vqgan import load_vqgan
from lwm_plugin.vision.vqgan_weights import VQGANWeightsError  # pylint: disable=unused-import  (the CLI's)


class VisionError(ValueError):
  """A problem with the command's inputs found while running (a bad media file, a bad codes line)."""


@dataclasses.dataclass(frozen=True)
class VQGANFactory:
  """Builds the codec in each Beam worker (`DoFn.setup`): picklable, weights read where it runs."""
  path: str
  dtype: str = "float32"

  def __call__(self):
    return load_vqgan(self.path, dtype=self.dtype)


@dataclasses.dataclass(frozen=True)
class VocabFactory:
  """The multimodal vocabulary for `--format arrayrecord`: a SentencePiece file, or LLaMA-2 (LWM's)."""
  tokenizer: str | None
  codebook_size: int

  def __call__(self) -> MultimodalVocab:
    if self.tokenizer:
      return MultimodalVocab.from_tokenizer(self.tokenizer, codebook_size=self.codebook_size)
    return MultimodalVocab.default(codebook_size=self.codebook_size)


def encode_files(codec, inputs: Sequence[str], output: str | Path, *, fps: float = media.DEFAULT_FPS,
                 max_frames: int | None = None, log: Callable[[str], None] = print) -> Path:
  """Each image or video -> frames -> codes; one `{"source", "vision"}` line per input, written atomically.

  An input that cannot be read stops the command (`VisionError` naming it and the reason), nothing written.
  """
  entries = []
  for path in inputs:
    try:
      frames = media.read_media(path, fps=fps, max_frames=max_frames)
    except media.MediaError as e:
      raise VisionError(str(e)) from None
    codes = np.asarray(codec.encode(frames))
    entries.append((path, codes.reshape(codes.shape[0], -1)))
    log(f"{path}: {len(frames)} frame(s) -> {codes.shape[0]} x {codes[0].size} codes")
  return codes_io.write_codes(output, entries)


def _name(entry: codes_io.CodesEntry, several: bool) -> str:
  if entry.source:
    stem = posixpath.basename(entry.source.split("::")[-1]).split(".")[0] or str(entry.line_number)
  else:
    stem = str(entry.line_number)
  return f"{stem}-{entry.field}" if several else stem


def plan_outputs(codes_path: str | Path) -> list[tuple[str, codes_io.CodesEntry]]:
  """Every entry of the file with its output stem; raises VisionError on a bad line or a name clash."""
  try:
    entries = list(codes_io.read_codes(codes_path))
  except LWMFormatError as e:
    raise VisionError(str(e)) from None
  fields_per_line: dict[int, int] = {}
  for entry in entries:
    fields_per_line[entry.line_number] = fields_per_line.get(entry.line_number, 0) + 1
  planned: dict[str, codes_io.CodesEntry] = {}
  for entry in entries:
    name = _name(entry, fields_per_line[entry.line_number] > 1)
    if name in planned:
      raise VisionError(f"{entry.where} and {planned[name].where} would both write {name!r} "
                        "(sources with the same file stem); rename the sources")
    planned[name] = entry
  return list(planned.items())


def decode_file(codec, codes_path: str | Path, output_dir: str | Path, *, fps: float = media.DEFAULT_FPS,
                log: Callable[[str], None] = print) -> list[Path]:
  """Codes -> pixels -> `DIR/<name>.png` (one frame) or `DIR/<name>.mp4` + `.gif` (several)."""
  plan = plan_outputs(codes_path)
  out = Path(output_dir)
  written = []
  for name, entry in plan:
    side = math.isqrt(entry.codes_FxT.shape[1])
    if side * side != entry.codes_FxT.shape[1]:
      raise VisionError(f"{entry.where}: {entry.codes_FxT.shape[1]} codes per frame is not a square grid")
    try:
      pixels = np.asarray(codec.decode(entry.codes_FxT.reshape(-1, side, side)))
    except ValueError as e:  # the codec's own checks (e.g. a code beyond its codebook)
      raise VisionError(f"{entry.where}: {e}") from None
    if len(pixels) == 1:
      written.append(media.write_png(out / f"{name}.png", pixels[0]))
    else:
      written += [media.write_mp4(out / f"{name}.mp4", pixels, fps), media.write_gif(out / f"{name}.gif", pixels, fps)]
    log(f"{entry.where}: {len(pixels)} frame(s) -> {written[-1]}")
  return written
