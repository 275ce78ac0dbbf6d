"""The demo's round trip through `lwm-vision`: pictures of held-out scenes -> VQGAN codes -> pictures.

The demo's language model reads and draws a toy codebook (`data_loaders.toy_vision`), not VQGAN codes,
so this phase shows the real image path beside it: each held-out scene of the vision evaluation is
rendered as a 256 x 256 PNG (`toy_vision.grid_rgb`, 32 pixels per cell), encoded to 16 x 16 codes and
decoded back to a PNG by `lwm-vision encode` / `decode`'s own functions (`vision.commands`), with a
VQGAN of LWM's architecture. Without LWM's weights (nothing is downloaded) that is the demo's toy VQGAN:
the same architecture, smaller, fit to pictures of training scenes by `tools/fit_toy_vqgan.py` and
shipped beside this module (`toy_vqgan/`, diffusers layout); `LWM_DEMO_VQGAN=PATH` runs LWM's or
aMUSEd's weights instead.

Scored against the rendered pictures, not against the codec: `cell_colour` is the fraction of the 8 x 8
cells whose decoded colour (the mean of a patch in the cell's corner, which no shape mark touches) is
nearest the palette colour the scene put there; `psnr_db` the decoded PNG's PSNR. Writes
`OUTPUT/vqgan/` (the PNGs, `codes.jsonl`, `decoded/`) and `vqgan_round_trip.png` (original above, decoded
below).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from data_loaders import toy_vision
from data_loaders.atomic_file import atomic_path
from data_loaders.synthetic_corpus import COLOURS, colour_band
from lwm_plugin.vision import commands, media

TOY_VQGAN = Path(__file__).with_name("toy_vqgan")
VQGAN_ENV = "LWM_DEMO_VQGAN"
CELL_PIXELS = 32           # 8 x 8 cells of 32 pixels: lwm-vision's 256 x 256 frame
_CORNER = slice(2, 8)      # the patch of a cell read for its colour (marks start at a quarter of the cell)
_PALETTE = np.array([toy_vision.RGB[c] for c in COLOURS], np.float32)


@dataclasses.dataclass
class RoundTripResult:
  """What the report says: the weights, how many pictures, their scores, the files and the wall time."""
  weights: str
  toy_weights: bool             # the shipped toy VQGAN (False: LWM_DEMO_VQGAN)
  images: int
  codes_per_image: int
  codebook_size: int
  cell_colour: float
  psnr_db: float
  codes: Path
  figure: Path
  wall_s: float


def weights_from_env(environ) -> tuple[Path, bool]:
  """LWM_DEMO_VQGAN's path (which must exist) or the shipped toy VQGAN; and whether it is the toy one."""
  value = environ.get(VQGAN_ENV, "").strip()
  if not value:
    return TOY_VQGAN, True
  if not Path(value).exists():
    raise ValueError(f"{VQGAN_ENV}={value!r}: no such file or directory (a diffusers VQModel directory or LWM's "
                     "vqgan file)")
  return Path(value), False


def cell_colours(rgb_HxWx3: np.ndarray, side: int) -> np.ndarray:
  """int [side, side]: the palette index nearest each cell's corner patch (uint8 RGB of side x 32 pixels)."""
  cells = rgb_HxWx3.astype(np.float32).reshape(side, CELL_PIXELS, side, CELL_PIXELS, 3)
  patch = cells[:, _CORNER, :, _CORNER].mean(axis=(1, 3))
  return np.argmin(((patch[:, :, None] - _PALETTE) ** 2).sum(-1), axis=-1)


def psnr_db(a_uint8: np.ndarray, b_uint8: np.ndarray) -> float:
  mse = float(np.mean((a_uint8.astype(np.float64) - b_uint8.astype(np.float64)) ** 2))
  return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def picture_scores(scenes: Sequence[toy_vision.Scene], codebook_size: int, originals: Sequence[np.ndarray],
                   decoded: Sequence[np.ndarray]) -> tuple[float, float]:
  """(cell colours right, mean PSNR in dB) of decoded uint8 pictures against the scenes and their renders."""
  band, side = colour_band(codebook_size), toy_vision.frame_side(len(scenes[0].codes))
  right = [np.mean(cell_colours(d, side) == np.asarray(s.codes).reshape(side, side) // band)
           for d, s in zip(decoded, scenes)]
  return float(np.mean(right)), float(np.mean([psnr_db(o, d) for o, d in zip(originals, decoded)]))


def round_trip(output: Path, weights: Path, scenes: Sequence[toy_vision.Scene], codebook_size: int, *,
               toy_weights: bool, log: Callable[[str], None] = print) -> RoundTripResult:
  """Renders `scenes` (codes of `codebook_size`), encodes and decodes them with `weights`, scores the result."""
  start = time.monotonic()
  work = output / "vqgan"
  sources = []
  for i, scene in enumerate(scenes):
    rgb = toy_vision.grid_rgb(scene.codes, codebook_size, cell=CELL_PIXELS)
    if rgb.shape != (media.FRAME_SIZE, media.FRAME_SIZE, 3):
      raise ValueError(f"a {toy_vision.frame_side(len(scene.codes))}-cell frame renders to {rgb.shape[:2]} pixels, "
                       f"not lwm-vision's {media.FRAME_SIZE} x {media.FRAME_SIZE}")
    sources.append(media.write_png(work / f"scene_{i}.png", media.to_unit_range(rgb)))
  codec = commands.VQGANFactory(str(weights), "float32")()
  codes = commands.encode_files(codec, [str(p) for p in sources], work / "codes.jsonl", log=log)
  decoded = commands.decode_file(codec, codes, work / "decoded", log=log)
  originals = [np.asarray(Image.open(p).convert("RGB")) for p in sources]
  results = [np.asarray(Image.open(p).convert("RGB")) for p in decoded]
  cell_colour, psnr = picture_scores(scenes, codebook_size, originals, results)
  figure = _figure(output / "vqgan_round_trip.png", originals, results, weights.name if toy_weights else str(weights))
  config = codec.config
  result = RoundTripResult(str(weights), toy_weights, len(scenes), (media.FRAME_SIZE // config.downsample_factor) ** 2,
                           config.num_embeddings, cell_colour, psnr, codes, figure, time.monotonic() - start)
  log(f"VQGAN round trip: {len(scenes)} pictures, cell colours right {cell_colour:.2f}, PSNR {psnr:.1f} dB")
  return result


def _figure(path: Path, originals: list[np.ndarray], decoded: list[np.ndarray], weights: str) -> Path:
  """Originals in the top row, their decoded round trips below."""
  import matplotlib  # pylint: disable=import-outside-toplevel  (a plotting backend only when drawing)

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel

  cols = len(originals)
  fig, axes = plt.subplots(2, cols, figsize=(2.4 * cols, 5.2), squeeze=False)
  for j, (a, b) in enumerate(zip(originals, decoded)):
    for row, (image, label) in enumerate(((a, "rendered"), (b, "encoded + decoded"))):
      axes[row, j].imshow(image)
      axes[row, j].set_title(label, fontsize=7)
      axes[row, j].axis("off")
  fig.suptitle(f"lwm-vision round trip (256 x 256 pixels -> 16 x 16 codes -> pixels), VQGAN {weights}", fontsize=8)
  with atomic_path(path) as tmp:
    fig.savefig(tmp, format="png", dpi=90)
  plt.close(fig)
  return path
