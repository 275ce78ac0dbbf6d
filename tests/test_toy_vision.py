"""The toy-image scorers against hand-built code grids and hand-written answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_loaders import toy_vision
from data_loaders.synthetic_corpus import CorpusSpec, generate_corpus, is_held_out, render_frame
from data_loaders.toy_vision import Reading

BOOK = 64  # bands of 8: colour c owns codes 8c..8c+7; red 0, green 1, blue 2, ..., orange 7


def _grid(background: int, cells: dict[tuple[int, int], int]) -> np.ndarray:
  grid = np.full((16, 16), background, np.int64)
  for (i, j), code in cells.items():
    grid[i, j] = code
  return grid.reshape(-1)


def test_a_rendered_frame_scores_one_for_its_caption_and_zero_for_another_colour_or_shape():
  truth = Reading("blue", "triangle", "yellow")
  frame = render_frame("triangle", "blue", "yellow", 1, 9, BOOK)
  assert toy_vision.read_grid(frame, BOOK) == truth
  assert toy_vision.score(truth, toy_vision.read_grid(frame, BOOK)) == {"correct": 1.0, "colour": 1.0, "shape": 1.0,
                                                                         "background": 1.0}
  red = render_frame("triangle", "red", "yellow", 1, 9, BOOK)
  assert toy_vision.score(truth, toy_vision.read_grid(red, BOOK)) == {"correct": 0.0, "colour": 0.0, "shape": 1.0,
                                                                       "background": 1.0}
  cross = render_frame("cross", "blue", "yellow", 1, 9, BOOK)
  assert toy_vision.score(truth, toy_vision.read_grid(cross, BOOK))["correct"] == 0.0


def test_an_8x8_frame_reads_as_its_caption_and_renders_at_its_own_size():
  # 8 x 8: shapes of 4 x 4 cells (shape_side); a blue (band 2) cross (texture 4 -> code 20) on yellow (24).
  frame = render_frame("cross", "blue", "yellow", 3, 1, BOOK, grid=8)
  assert frame.shape == (64,) and set(frame.tolist()) == {24, 20} and (frame == 20).sum() == 12  # 4 x 4 plus sign
  assert toy_vision.read_grid(frame, BOOK) == Reading("blue", "cross", "yellow")
  assert toy_vision.grid_rgb(frame, BOOK, cell=4).shape == (32, 32, 3)
  scenes = toy_vision.held_out_scenes(5, 3, BOOK, grid=8)
  assert all(len(s.codes) == 64 and toy_vision.read_grid(s.codes, BOOK) == s.truth for s in scenes)


def test_hand_built_grids():
  # green background (code 8); three purple (band 6 = 48..55) cells of texture 2 (circle), one of texture 1.
  grid = _grid(8, {(3, 3): 50, (3, 4): 50, (4, 3): 50, (4, 4): 49})
  assert toy_vision.read_grid(grid, BOOK) == Reading("purple", "circle", "green")
  # the shape cells use a texture no shape owns (6): colour read, no shape
  assert toy_vision.read_grid(_grid(8, {(0, 0): 54}), BOOK) == Reading("purple", None, "green")
  # a plain background: neither colour nor shape
  assert toy_vision.read_grid(_grid(32, {}), BOOK) == Reading(None, None, "white")
  # two foreign bands: the larger one is the shape's (orange 7: 2 cells of texture 4 = cross)
  assert toy_vision.read_grid(_grid(0, {(0, 0): 60, (0, 1): 60, (5, 5): 17}), BOOK) == Reading("orange", "cross", "red")
  with pytest.raises(ValueError, match="square grid of codes, got 255 codes"):
    toy_vision.read_grid(np.zeros(255, int), BOOK)
  with pytest.raises(ValueError, match="at least 8 x 8"):
    toy_vision.read_grid(np.zeros(49, int), BOOK)
  with pytest.raises(ValueError, match=r"\[0, 64\)"):
    toy_vision.read_grid(_grid(64, {}), BOOK)


@pytest.mark.parametrize("answer, reading", [
    ("a red circle at the top left on a blue background", Reading("red", "circle", "blue")),
    ("A Red Circle.", Reading("red", "circle", None)),
    ("a circle on a green background", Reading(None, "circle", "green")),
    ("a red big square and a blue circle", Reading(None, "square", None)),   # only the word before the shape
    ("a yellow cross moving left on an orange background", Reading("yellow", "cross", "orange")),
    ("red blue green", Reading(None, None, None)),
    ("", Reading(None, None, None)),
])
def test_parse_answer(answer, reading):
  assert toy_vision.parse_answer(answer) == reading


def test_scores_of_answers_and_their_mean():
  truth = toy_vision.truth_of("a white square at the bottom right on a black background")
  assert truth == Reading("white", "square", "black")
  scores = [toy_vision.score(truth, toy_vision.parse_answer(a)) for a in
            ("a white square at the top left on a red background", "a black square", "a white circle")]
  assert [s["correct"] for s in scores] == [1.0, 0.0, 0.0]
  assert toy_vision.mean_scores(scores) == pytest.approx({"correct": 1 / 3, "colour": 2 / 3, "shape": 2 / 3,
                                                          "background": 0.0})
  with pytest.raises(ValueError, match="not the corpus's image template"):
    toy_vision.truth_of("a dog on a beach")


def test_held_out_scenes_are_the_corpus_generator_on_another_stream(tmp_path):
  scenes = toy_vision.held_out_scenes(7, 12, BOOK)
  assert scenes == toy_vision.held_out_scenes(7, 12, BOOK) and scenes != toy_vision.held_out_scenes(8, 12, BOOK)
  for scene in scenes:
    assert toy_vision.read_grid(scene.codes, BOOK) == scene.truth  # the truth agrees with the pixels
  files = generate_corpus(tmp_path, CorpusSpec(seed=7, text_documents=1, retrieval_chats=1, images=12, videos=1,
                                               codebook_size=BOOK))
  corpus = [json.loads(line)["vision"] for line in files["image"].read_text().splitlines()]
  assert [list(s.codes) for s in scenes] != corpus  # not the corpus file's stream for the same seed


def test_held_out_scenes_never_occur_in_the_corpus(tmp_path):
  """Indices by hand (red 0, green 1, blue 2, ..., black 5, purple 6, orange 7; square 0, circle 1, triangle 2,
  cross 3): a scene is held out when colour + shape + background is 8 or 16; none is in a training file."""
  assert not is_held_out("square", "red", "green") and is_held_out("circle", "blue", "black")  # 2 + 1 + 5 = 8
  assert is_held_out("cross", "orange", "purple") and not is_held_out("cross", "orange", "black")  # 7+3+6 = 16
  held = {s.caption for s in toy_vision.held_out_scenes(3, 64, BOOK, grid=8)}
  assert all(is_held_out(t.shape, t.colour, t.background) for t in map(toy_vision.truth_of, held))
  files = generate_corpus(tmp_path, CorpusSpec(seed=3, text_documents=1, retrieval_chats=1, images=2000, videos=1,
                                               codebook_size=BOOK, grid=8))
  training = {json.loads(line)["caption"] for line in files["image"].read_text().splitlines()}
  assert len(training) > 600 and not held & training  # 784 training scenes, 112 held out


def test_grid_rgb_paints_bands_and_marks_textures():
  frame = _grid(16, {(0, 0): 0 * 8 + 1, (15, 15): 5 * 8 + 3})  # blue background, a red dot cell, a black bar cell
  image = toy_vision.grid_rgb(frame, BOOK, cell=8)
  assert image.shape == (128, 128, 3) and image.dtype == np.uint8
  assert tuple(image[60, 60]) == toy_vision.RGB["blue"]
  assert tuple(image[0, 0]) == toy_vision.RGB["red"] and tuple(image[3, 3]) == (0, 0, 0)  # dark mark on red
  assert tuple(image[120, 120]) == (20, 20, 20) and tuple(image[123, 123]) == (255, 255, 255)  # light on black
