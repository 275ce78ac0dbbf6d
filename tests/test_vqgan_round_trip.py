"""The demo's pictures through lwm-vision's VQGAN: the shipped toy weights and the round trip's scoring.

The reference is the scene itself: the colour band of every code the corpus put in the frame. The
scorer reads a rendered picture exactly; the shipped toy VQGAN (a diffusers directory read by
`lwm-vision`'s own loader) brings held-out pictures back with their cells' colours; the files the demo
shows are written.
"""

import json

import numpy as np
import pytest
from PIL import Image

from data_loaders import tiny_data, toy_vision
from data_loaders.synthetic_corpus import colour_band
from lwm_plugin.demo import vqgan_round_trip as rt
from lwm_plugin.vision.vqgan_weights import read_weights

CODEBOOK, GRID = tiny_data.DEMO_SPEC.codebook_size, tiny_data.DEMO_GRID
SEED = 7


def _scenes(n: int) -> list[toy_vision.Scene]:
  return toy_vision.held_out_scenes(SEED, n, CODEBOOK, GRID)


def _bands(scene: toy_vision.Scene) -> np.ndarray:
  return np.asarray(scene.codes).reshape(GRID, GRID) // colour_band(CODEBOOK)


def test_cell_colours_read_a_rendered_picture_exactly():
  for scene in _scenes(8):
    rgb = toy_vision.grid_rgb(scene.codes, CODEBOOK, cell=rt.CELL_PIXELS)
    np.testing.assert_array_equal(rt.cell_colours(rgb, GRID), _bands(scene))


def test_psnr():
  a = np.zeros((4, 4, 3), np.uint8)
  b = a.copy()
  b[0, 0, 0] = 255
  assert rt.psnr_db(a, a) == float("inf")
  assert rt.psnr_db(a, b) == pytest.approx(10 * np.log10(48))


def test_the_shipped_toy_vqgan_is_lwms_architecture_at_lwms_frame_geometry():
  config, _ = read_weights(rt.TOY_VQGAN)
  assert config.downsample_factor == 16 and config.channels == 3   # 256 x 256 pixels -> 16 x 16 codes, as LWM's


def test_held_out_pictures_come_back_through_the_shipped_toy_vqgan(tmp_path):
  scenes = _scenes(4)
  lines = []
  result = rt.round_trip(tmp_path, rt.TOY_VQGAN, scenes, CODEBOOK, toy_weights=True, log=lines.append)
  assert result.cell_colour >= 0.9, result   # measured when fit: see tools/fit_toy_vqgan.py's output in BENCHMARKS
  assert result.images == 4 and result.codes_per_image == 256 and result.toy_weights
  codes = [json.loads(line) for line in result.codes.read_text().splitlines()]
  assert [len(c["vision"]) for c in codes] == [1] * 4 and all(len(c["vision"][0]) == 256 for c in codes)
  for i, scene in enumerate(scenes):
    decoded = np.asarray(Image.open(tmp_path / "vqgan" / "decoded" / f"scene_{i}.png").convert("RGB"))
    assert decoded.shape == (256, 256, 3)
    assert np.mean(rt.cell_colours(decoded, GRID) == _bands(scene)) >= 0.8
  assert Image.open(result.figure).size[0] > 400 and lines[-1].startswith("VQGAN round trip: 4 pictures")


def test_the_vqgan_comes_from_the_environment_or_is_the_toy_one(tmp_path):
  assert rt.weights_from_env({}) == (rt.TOY_VQGAN, True)
  assert rt.weights_from_env({rt.VQGAN_ENV: str(tmp_path)}) == (tmp_path, False)
  with pytest.raises(ValueError, match="LWM_DEMO_VQGAN='/no/such/vqgan': no such file"):
    rt.weights_from_env({rt.VQGAN_ENV: "/no/such/vqgan"})
