"""`lwm-vision`: LWM's VQGAN on real files: images and videos to codes, codes to pixels, training data.

  lwm-vision encode  --vqgan WEIGHTS --output OUT.jsonl [--fps 4] [--max-frames N] INPUT...
  lwm-vision decode  --vqgan WEIGHTS --input CODES.jsonl --output DIR [--fps 4]
  lwm-vision prepare --vqgan WEIGHTS --manifest M [M ...] --output DIR [--format jsonl|arrayrecord]
                     [--fps 4] [--max-frames N] [--shard-size 1000] [--batch-size 16] [BEAM OPTIONS ...]

WEIGHTS is a diffusers `VQModel` directory (aMUSEd's `vqvae/`) or LWM's pickled `vqgan` file. `encode`
writes one line `{"source": INPUT, "vision": [[256 codes] per frame]}` per input (images: PNG, JPEG,
WebP; videos: anything FFmpeg reads, sampled at --fps). `decode` reads those lines, lines written by
generation and LWM JSONL records, and writes DIR/<stem of source>.png for one frame, .mp4 + .gif for
several. `prepare` turns image-text / video-text manifests into sharded LWM records plus
DIR/rejects.jsonl, on Apache Beam: options it does not know (`--runner DataflowRunner --project ...`)
go to Beam; without a runner it uses the DirectRunner with one process per core.

Everything on the command line but the --fields specs and the manifests' suffixes and columns (checked
by the data format's parser and the manifest reader, which import JAX and Beam) is checked before JAX or
Beam is imported (`lwm_plugin.vision.commands`
does the work): a usage error prints `lwm-vision: error: ...`, exits 2 and writes nothing. An input that
turns out unreadable while encoding or decoding exits 1 with its name and reason.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from pathlib import Path
from typing import Sequence

from data_loaders.lwm_format import CAPTION_FIELDS
from lwm_plugin.beam_cli import beam_args as checked_beam_args
from lwm_plugin.model_source import UsageError

PROG = "lwm-vision"


class _Parser(argparse.ArgumentParser):
  """argparse whose errors read `lwm-vision: error: ...` (rc 2) for the subcommands too."""

  def error(self, message: str):
    self.print_usage(sys.stderr)
    self.exit(2, f"{PROG}: error: {message}\n")


def _positive(kind: type):
  def parse(text: str):
    try:
      value = kind(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
    if not value > 0:
      raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
    return value
  return parse


def _parser() -> argparse.ArgumentParser:
  parser = _Parser(prog=PROG, description=__doc__.split("\n", 1)[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                   epilog=__doc__.split("\n\n", 1)[1])
  sub = parser.add_subparsers(dest="command", required=True)

  def common(p):
    p.add_argument("--vqgan", required=True, help="diffusers VQModel directory or LWM's pickled vqgan file")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="VQGAN compute dtype")
    p.add_argument("--platform", choices=("cpu", "gpu", "tpu"), default=None,
                   help="JAX platform (sets JAX_PLATFORMS; default: JAX's choice)")

  def frames(p):
    p.add_argument("--fps", type=_positive(float), default=4.0, help="video frames sampled per second (LWM: 4)")
    p.add_argument("--max-frames", type=_positive(int), default=None,
                   help="at most this many frames per video, evenly subsampled (LWM's rule)")

  p = sub.add_parser("encode", help="images and videos -> a codes file")
  common(p)
  frames(p)
  p.add_argument("--output", required=True, help="codes file to write (.jsonl)")
  p.add_argument("inputs", nargs="+", metavar="INPUT", help="image or video files")

  p = sub.add_parser("decode", help="a codes file (or generation output, or LWM JSONL) -> PNG / MP4 + GIF")
  common(p)
  p.add_argument("--input", required=True, help="codes JSON lines")
  p.add_argument("--output", required=True, help="output directory")
  p.add_argument("--fps", type=_positive(float), default=4.0, help="frame rate of written videos")

  p = sub.add_parser("prepare", help="image-text / video-text manifests -> sharded LWM records, on Apache Beam")
  common(p)
  frames(p)
  p.add_argument("--manifest", required=True, nargs="+", help="JSONL / CSV / Parquet manifests or WebDataset tars")
  p.add_argument("--output", required=True, help="output directory (local or any Beam file system path)")
  p.add_argument("--format", choices=("jsonl", "arrayrecord"), default="jsonl", help="record format")
  p.add_argument("--fields", default=";".join(CAPTION_FIELDS),
                 help="';'-separated LWM fields specs, one drawn per record (default: both orders, the image "
                      "first with loss on it too: data_loaders.lwm_format.CAPTION_FIELDS)")
  p.add_argument("--shard-size", type=_positive(int), default=1000, help="manifest rows per output shard")
  p.add_argument("--batch-size", type=_positive(int), default=16, help="inputs per VQGAN batch")
  p.add_argument("--tokenizer", default=None,
                 help="--format arrayrecord: SentencePiece model for the captions (default: LLaMA-2, LWM's)")
  p.add_argument("--codebook-size", type=_positive(int), default=8192,
                 help="--format arrayrecord: the vocabulary's codebook size (LWM: 8192)")
  return parser


def _check(args: argparse.Namespace, beam_args: list[str]) -> None:
  """Every check that needs no JAX or Beam; raises UsageError."""
  if not Path(args.vqgan).exists():
    raise UsageError(f"--vqgan {args.vqgan!r}: no such file or directory")
  if args.command == "encode":
    for path in args.inputs:
      if not Path(path).is_file():
        raise UsageError(f"input {path!r}: no such file")
    if Path(args.output).is_dir():
      raise UsageError(f"--output {args.output!r} is a directory; expected a codes file path")
  elif args.command == "decode":
    if not Path(args.input).is_file():
      raise UsageError(f"--input {args.input!r}: no such file")
    if Path(args.output).exists() and not Path(args.output).is_dir():
      raise UsageError(f"--output {args.output!r} exists and is not a directory")
  else:
    for path in args.manifest:
      if "://" not in path and not (glob.glob(path) if any(c in path for c in "*?[") else Path(path).is_file()):
        raise UsageError(f"--manifest {path!r}: no such file")
    if "://" not in args.output and Path(args.output).exists() and not Path(args.output).is_dir():
      raise UsageError(f"--output {args.output!r} exists and is not a directory")
    if args.tokenizer and not Path(args.tokenizer).is_file():
      raise UsageError(f"--tokenizer {args.tokenizer!r}: no such file")
    if args.format != "arrayrecord" and (args.tokenizer or args.codebook_size != 8192):
      raise UsageError("--tokenizer and --codebook-size are for --format arrayrecord only")
    checked_beam_args(beam_args, PROG)  # raises UsageError
  if args.command != "prepare" and beam_args:
    raise UsageError(f"unrecognized arguments: {' '.join(beam_args)}")


def main(argv: Sequence[str] | None = None) -> int:
  """`lwm-vision`; returns the exit code (2 for every usage error, with nothing written)."""
  try:
    args, beam_args = _parser().parse_known_args(argv)
    _check(args, beam_args)
  except SystemExit as e:  # argparse: --help (0) or a usage error (2), already printed
    return int(e.code or 0)
  except UsageError as e:
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return 2
  if args.platform:
    os.environ["JAX_PLATFORMS"] = args.platform  # before JAX is imported
  from lwm_plugin.vision import commands  # pylint: disable=import-outside-toplevel  (JAX and Beam after the checks)

  log = lambda line: print(f"{PROG}: {line}", file=sys.stderr)  # noqa: E731
  try:
    if args.command == "prepare":
      fields = tuple(s.strip() for s in args.fields.split(";") if s.strip())
      try:  # the fields specs are checked by the data format's own parser (data_loaders imports JAX)
        options = commands.PrepareOptions(
            output=args.output, codec_factory=commands.VQGANFactory(args.vqgan, args.dtype), file_format=args.format,
            fields=fields, fps=args.fps, max_frames=args.max_frames, shard_size=args.shard_size,
            batch_size=args.batch_size,
            vocab_factory=commands.VocabFactory(args.tokenizer, args.codebook_size) if args.format == "arrayrecord"
            else None)
      except ValueError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
      commands.VQGANFactory(args.vqgan, args.dtype)()  # the weights are checked here once, not in every worker
      try:
        result = commands.prepare(args.manifest, options, beam_args, log=log)
      except commands.ManifestError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
      log(f"{result.records} records in {result.shards_written} new shards ({result.shards_skipped} complete "
          f"before), {result.rejects} rejects listed in {args.output}/rejects.jsonl, {result.seconds:.1f} s")
      return 0
    codec = commands.VQGANFactory(args.vqgan, args.dtype)()
    if args.command == "encode":
      commands.encode_files(codec, args.inputs, args.output, fps=args.fps, max_frames=args.max_frames, log=log)
    else:
      commands.decode_file(codec, args.input, args.output, fps=args.fps, log=log)
  except (commands.VisionError, commands.VQGANWeightsError) as e:
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
