"""The synthetic corpus's toy images read back: held-out scenes, caption and code-grid scorers, RGB pictures.

The demo's images are not VQGAN codes but a toy codebook (`data_loaders.synthetic_corpus`): on a
square grid of codes (the demo's is 8 x 8, LWM's VQGAN 16 x 16; a frame's side is the square root of
its code count) every colour owns a band of `codebook_size / 8` codes, the background is the band's
code 0 and a shape is drawn with the band's code `1 + SHAPES.index(shape)` (its texture). That
makes both directions of the demo's vision model checkable without a model:

  understanding  `parse_answer` reads the colour, shape and background a caption names;
  generation     `read_grid` reads them from a generated code grid: the background is the most
                 common band, the shape's colour the most common other band, the shape its most
                 common texture code inside that band (a cell of a texture no shape owns: no shape).

`score` compares either with the truth of a held-out scene (`held_out_scenes`, drawn by the
corpus's own `image_caption` from a seed stream its files never use): `correct` is 1 when colour
and shape both match, `colour` / `shape` / `background` are the diagnostics. `grid_rgb` renders a
code grid for a person (one RGB colour per band, a texture drawn as a mark inside the cell).
Pure numpy; no model, no JAX.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Sequence

import numpy as np

from data_loaders.synthetic_corpus import COLOURS, GRID, SHAPES, colour_band, image_caption, shape_side

# The caption template of `synthetic_corpus.image_caption`, parsed strictly (the truth of a scene).
_CAPTION = re.compile(rf"a ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)}) at the (top|bottom) (left|right) "
                      rf"on a ({'|'.join(COLOURS)}) background")
_WORD = re.compile(r"[a-z]+")
RGB = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 220, 40),
       "white": (250, 250, 250), "black": (20, 20, 20), "purple": (140, 50, 170), "orange": (250, 140, 20)}


@dataclasses.dataclass(frozen=True)
class Reading:
  """What a caption names or a code grid shows; None where it names or shows none."""
  colour: str | None
  shape: str | None
  background: str | None

  def to_json(self) -> dict[str, str | None]:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Scene:
  """A held-out image: its caption, its 256 codes and the truth read from the caption's template."""
  caption: str
  codes: tuple[int, ...]
  truth: Reading


def truth_of(caption: str) -> Reading:
  """The colour, shape and background of a corpus caption (its exact template; ValueError otherwise)."""
  m = _CAPTION.fullmatch(caption)
  if m is None:
    raise ValueError(f"caption {caption!r} is not the corpus's image template 'a COLOUR SHAPE at the PLACE on a "
                     "COLOUR background'")
  return Reading(m.group(1), m.group(2), m.group(5))


def held_out_scenes(seed: int, n: int, codebook_size: int, grid: int = GRID) -> list[Scene]:
  """`n` `grid` x `grid` images the corpus never trains on (`synthetic_corpus.is_held_out`: a colour,
  shape and background never seen together), drawn by its image generator from `seed`'s own stream."""
  rng = np.random.default_rng([seed])
  scenes = []
  for _ in range(n):
    line = image_caption(rng, codebook_size, grid, held_out=True)
    scenes.append(Scene(line["caption"], tuple(int(c) for c in line["vision"]), truth_of(line["caption"])))
  return scenes


def parse_answer(text: str) -> Reading:
  """The first shape word of an answer, the colour word right before it, and the colour in
  "on a(n) COLOUR background"; None for what the answer does not say that way."""
  words = _WORD.findall(text.lower())
  colour = shape = background = None
  for i, word in enumerate(words):
    if word in SHAPES:
      shape = word
      colour = words[i - 1] if i > 0 and words[i - 1] in COLOURS else None
      break
  for i in range(len(words) - 3):
    if words[i] == "on" and words[i + 1] in ("a", "an") and words[i + 2] in COLOURS and words[i + 3] == "background":
      background = words[i + 2]
      break
  return Reading(colour, shape, background)


def frame_side(tokens_per_frame: int) -> int:
  """The side of a square frame of `tokens_per_frame` codes (8 for 64, 16 for LWM's 256); ValueError
  if the count is not a square of at least `synthetic_corpus.MIN_GRID` squared."""
  side = math.isqrt(tokens_per_frame)
  if side * side != tokens_per_frame:
    raise ValueError(f"a frame is a square grid of codes, got {tokens_per_frame} codes")
  shape_side(side)
  return side


def _codes_grid(codes: Any, codebook_size: int) -> np.ndarray:
  """The frame's codes as a square grid (`frame_side`)."""
  flat = np.asarray(codes, np.int64).reshape(-1)
  side = frame_side(flat.shape[0])
  if flat.min() < 0 or flat.max() >= codebook_size:
    raise ValueError(f"codes must be in [0, {codebook_size}), got {flat.min()}..{flat.max()}")
  return flat.reshape(side, side)


def read_grid(codes: Any, codebook_size: int) -> Reading:
  """The background (most common band), the shape's colour (most common other band; ties: the lower
  band) and its shape (most common texture code in that band; None if that code is no shape's) of a frame."""
  band = colour_band(codebook_size)
  grid = _codes_grid(codes, codebook_size)
  colours, textures = grid // band, grid % band
  counts = np.bincount(colours.reshape(-1), minlength=len(COLOURS))
  background = int(np.argmax(counts))
  counts[background] = 0
  if not counts.any():
    return Reading(None, None, COLOURS[background])
  colour = int(np.argmax(counts))
  texture = int(np.argmax(np.bincount(textures[colours == colour], minlength=band)))
  shape = SHAPES[texture - 1] if 1 <= texture <= len(SHAPES) else None
  return Reading(COLOURS[colour], shape, COLOURS[background])


def score(truth: Reading, found: Reading) -> dict[str, float]:
  """`correct` (colour and shape both right), and `colour`, `shape`, `background` alone; each 0 or 1."""
  colour, shape = float(found.colour == truth.colour), float(found.shape == truth.shape)
  return {"correct": colour * shape, "colour": colour, "shape": shape,
          "background": float(found.background == truth.background)}


def mean_scores(scores: Sequence[dict[str, float]]) -> dict[str, float]:
  """The mean of each score over trials (ValueError for none)."""
  if not scores:
    raise ValueError("no scores to average")
  return {key: float(np.mean([s[key] for s in scores])) for key in scores[0]}


def _marks(cell: int) -> list[np.ndarray]:
  """Texture t >= 1 is drawn as mark t - 1 in a cell of `cell` pixels: a dot, a bar, a column, a diagonal, ..."""
  r, c = np.mgrid[0:cell, 0:cell]
  mid, lo, hi = (cell - 1) / 2, cell // 4, cell - 1 - cell // 4
  inner = (r >= lo) & (r <= hi) & (c >= lo) & (c <= hi)
  return [inner & (np.abs(r - mid) <= 1) & (np.abs(c - mid) <= 1),   # 1: dot
          inner & (np.abs(r - mid) <= 0.5),                          # 2: horizontal bar
          inner & (np.abs(c - mid) <= 0.5),                          # 3: vertical bar
          inner & (np.abs(r - c) <= 0.5),                            # 4: diagonal
          inner & (np.abs(r + c - cell + 1) <= 0.5),                 # 5..: anti-diagonal, ring, full
          inner & ~((r > lo) & (r < hi) & (c > lo) & (c < hi)),
          inner]


def grid_rgb(codes: Any, codebook_size: int, cell: int = 8) -> np.ndarray:
  """uint8 [side cell, side cell, 3] for a side x side frame: each code's band colour, its texture as a
  mark (black on light colours, white on dark ones) so a shape of the background's own colour still shows."""
  band = colour_band(codebook_size)
  grid = _codes_grid(codes, codebook_size)
  marks = _marks(cell)
  image = np.zeros((grid.shape[0] * cell, grid.shape[1] * cell, 3), np.uint8)
  for (i, j), code in np.ndenumerate(grid):
    name = COLOURS[code // band]
    tile = np.empty((cell, cell, 3), np.uint8)
    tile[:] = RGB[name]
    texture = code % band
    if texture:
      tile[marks[min(texture, len(marks)) - 1]] = (255, 255, 255) if sum(RGB[name]) < 300 else (0, 0, 0)
    image[i * cell:(i + 1) * cell, j * cell:(j + 1) * cell] = tile
  return image
