"""`lwm-vision prepare` end to end on this machine: images/s for decode + resize + VQGAN encode + write.

    .venv/bin/python benchmarks/vision_prepare.py [--images 16] [--batch-size 8] [--dtype float32]
                                                  [--out vision_prepare.json] [BEAM OPTIONS ...]

Makes a VQGAN of LWM's full architecture (aMUSEd-256: 128 x (1, 2, 2, 4, 6) channels, 8192 codes) with
random weights (the cost of a forward pass does not depend on the values), N JPEG photos-sized images
(640x480, smooth random content) and a JSONL manifest, all in a temporary directory, then:
  1. `prepare` through the Python API the CLI calls, with the CLI's default runner (the multi-process
     DirectRunner, one worker per core; Beam options on the command line replace it): the wall time of
     the whole run, which includes Beam's start-up and each worker's VQGAN load and compilation;
  2. the same stages in this process, warm, per image: read + decode + resize (`media.read_image`),
     VQGAN encode in batches of --batch-size (after one compiling call), and writing one JSONL record.
Prints both and writes them to --out as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_loaders.lwm_format import CAPTION_FIELDS  # noqa: E402
from lwm_plugin.vision import media  # noqa: E402
from lwm_plugin.vision.commands import VQGANFactory  # noqa: E402
from lwm_plugin.vision.prepare import PrepareOptions, prepare  # noqa: E402
from lwm_plugin.vision.vqgan_weights import VQGANConfig, name_table, write_diffusers  # noqa: E402


def random_vqgan(directory: Path, seed: int = 0) -> None:
  """LWM's VQGAN architecture with random weights (He-scaled kernels: activations stay finite)."""
  rng = np.random.default_rng(seed)
  config = VQGANConfig()
  params = {}
  for t in name_table(config):
    if t.kind == "kernel":
      params[t.ours] = rng.normal(0, 1 / np.sqrt(np.prod(t.shape[:-1])), t.shape).astype(np.float32)
    elif t.ours.endswith("/scale"):
      params[t.ours] = np.ones(t.shape, np.float32)
    else:
      params[t.ours] = rng.normal(0, 0.1, t.shape).astype(np.float32)
  write_diffusers(directory, config, params)


def images(directory: Path, n: int, seed: int = 0) -> list[Path]:
  rng = np.random.default_rng(seed)
  paths = []
  for k in range(n):
    small = rng.integers(0, 256, (15, 20, 3), np.uint8)  # upsampled: JPEG-friendly, photo-like sizes
    path = directory / f"img{k:04d}.jpg"
    Image.fromarray(small).resize((640, 480), Image.Resampling.BICUBIC).save(path, quality=90)
    paths.append(path)
  return paths


def in_process(codec, paths: list[Path], batch_size: int) -> dict[str, float]:
  """Warm per-image seconds of each stage in this process."""
  t = time.perf_counter()
  frames = np.concatenate([media.read_image(str(p)) for p in paths])
  read_s = (time.perf_counter() - t) / len(paths)
  codec.encode(frames[:batch_size])  # compile
  t = time.perf_counter()
  codes = np.concatenate([codec.encode(frames[i:i + batch_size]) for i in range(0, len(frames), batch_size)])
  encode_s = (time.perf_counter() - t) / len(paths)
  t = time.perf_counter()
  with tempfile.TemporaryFile("w") as f:
    for p, c in zip(paths, codes):
      f.write(json.dumps({"fields": list(CAPTION_FIELDS), "caption": p.stem,
                          "vision": c.reshape(-1).tolist(), "source": str(p)}) + "\n")
  write_s = (time.perf_counter() - t) / len(paths)
  return {"read_decode_resize_s": read_s, "encode_s": encode_s, "write_s": write_s,
          "images_per_s": 1 / (read_s + encode_s + write_s)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--images", type=int, default=16)
  parser.add_argument("--batch-size", type=int, default=8)
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  parser.add_argument("--out", default="vision_prepare.json")
  args, beam_args = parser.parse_known_args()
  with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    random_vqgan(tmp / "vq")
    paths = images(tmp, args.images)
    (tmp / "m.jsonl").write_text("".join(json.dumps({"image": str(p), "caption": p.stem}) + "\n" for p in paths))
    options = PrepareOptions(output=str(tmp / "out"), codec_factory=VQGANFactory(str(tmp / "vq"), args.dtype),
                             batch_size=args.batch_size)
    t = time.perf_counter()
    result = prepare([str(tmp / "m.jsonl")], options, beam_args, log=lambda line: print(f"prepare: {line}"))
    wall = time.perf_counter() - t
    assert result.records == args.images and result.rejects == 0, result
    warm = in_process(VQGANFactory(str(tmp / "vq"), args.dtype)(), paths, args.batch_size)
  record = {"images": args.images, "batch_size": args.batch_size, "dtype": args.dtype, "cpus": os.cpu_count(),
            "beam_args": beam_args or ["(default: DirectRunner, multi_processing, one worker per core)"],
            "prepare_wall_s": wall, "prepare_images_per_s": args.images / wall, "warm_in_process": warm}
  print(f"prepare end to end: {args.images} images in {wall:.1f} s = {args.images / wall:.2f} images/s "
        f"(Beam start-up and per-worker VQGAN compile included)")
  print(f"warm, one process, per image: read+decode+resize {warm['read_decode_resize_s'] * 1e3:.1f} ms, "
        f"VQGAN encode {warm['encode_s'] * 1e3:.0f} ms (batch {args.batch_size}, {args.dtype}), "
        f"write {warm['write_s'] * 1e3:.2f} ms -> {warm['images_per_s']:.2f} images/s")
  Path(args.out).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
  main()
