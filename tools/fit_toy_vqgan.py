"""Fit the demo's toy VQGAN and write it beside the demo (`lwm_plugin/demo/toy_vqgan/`, diffusers layout).

    .venv/bin/python tools/fit_toy_vqgan.py [--steps 1500] [--out DIR]

LWM's VQGAN architecture (`lwm_plugin.vision.vqgan`), smaller (`TOY_CONFIG`: 5 levels of 24 channels,
so 256 x 256 pixels -> 16 x 16 codes as LWM's; 256 codes of 8 dimensions; one norm group, since the
pictures are mostly flat colour, which GroupNorm over few channels would erase), fit by
`vqgan_fit.fit_vqgan` to 512 pictures of the synthetic corpus's training scenes (`toy_vision.grid_rgb`,
8 x 8 cells of 32 pixels; the held-out scenes the demo round-trips are never among them), 128 x 128
crops, 4 per step. The shipped weights were made with the defaults (about 10 minutes on 2 cores;
BENCHMARKS.md, issue 17). Prints the round-trip scores on 32 held-out scenes when done.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# pylint: disable=wrong-import-position
from data_loaders import synthetic_corpus, tiny_data, toy_vision
from lwm_plugin.demo import vqgan_round_trip
from lwm_plugin.vision import media
from lwm_plugin.vision.vqgan import VQGANCodec
from lwm_plugin.vision.vqgan_fit import FitOptions, fit_vqgan
from lwm_plugin.vision.vqgan_weights import VQGANConfig, write_diffusers

TOY_CONFIG = VQGANConfig(block_channels=(24, 24, 24, 24, 24), num_res_blocks=1, z_channels=8, num_embeddings=256,
                         embed_dim=8, norm_groups=1)
SCENE_SEED = 20240211   # the pictures' own stream (the corpus files and the demo's evaluations use others)


def training_pictures(seed: int, n: int) -> np.ndarray:
  """float32 [n, 256, 256, 3] in [-1, 1]: training scenes (never held out) on the demo's grid."""
  rng = np.random.default_rng([seed])
  codebook, grid = tiny_data.DEMO_SPEC.codebook_size, tiny_data.DEMO_GRID
  lines = [synthetic_corpus.image_caption(rng, codebook, grid) for _ in range(n)]
  return np.stack([media.to_unit_range(toy_vision.grid_rgb(line["vision"], codebook, cell=vqgan_round_trip.CELL_PIXELS))
                   for line in lines])


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--steps", type=int, default=1500)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--learning-rate", type=float, default=1e-3)
  parser.add_argument("--pictures", type=int, default=512)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=str(vqgan_round_trip.TOY_VQGAN))
  args = parser.parse_args()
  start = time.monotonic()
  pictures = training_pictures(SCENE_SEED, args.pictures)
  options = FitOptions(steps=args.steps, batch=args.batch, crop=128, learning_rate=args.learning_rate, seed=args.seed)
  fit = fit_vqgan(TOY_CONFIG, pictures, options)
  write_diffusers(Path(args.out), TOY_CONFIG, fit.params)
  codec = VQGANCodec(TOY_CONFIG, fit.params)
  codebook, grid = tiny_data.DEMO_SPEC.codebook_size, tiny_data.DEMO_GRID
  scenes = toy_vision.held_out_scenes(SCENE_SEED, 32, codebook, grid)
  rgb = [toy_vision.grid_rgb(s.codes, codebook, cell=vqgan_round_trip.CELL_PIXELS) for s in scenes]
  decoded = media.to_uint8(codec.decode(codec.encode(np.stack([media.to_unit_range(x) for x in rgb]))))
  right, psnr = vqgan_round_trip.picture_scores(scenes, codebook, rgb, decoded)
  print(f"wrote {args.out} in {time.monotonic() - start:.0f} s: {args.steps} steps, {fit.codes_used} codes in use; "
        f"32 held-out pictures: cell colours right {right:.3f}, PSNR {psnr:.1f} dB")
  return 0


if __name__ == "__main__":
  sys.exit(main())
