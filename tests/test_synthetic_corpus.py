"""The synthetic LWM corpus: deterministic, in the paper's needle format, readable by our reader."""

import json

import numpy as np
import pytest

from data_loaders import synthetic_corpus as sc
from data_loaders.lwm_format import FormatOptions
from data_loaders.sources import LWMJsonlReader


def test_needle_format_is_the_papers():
  assert sc.needle_sentence("Paris", "1234567") == "The special magic Paris number is: 1234567."
  assert sc.needle_question(["Paris"]) == "What is the special magic Paris number?"
  assert sc.needle_question(["Paris", "Rome"]) == "What are the special magic numbers for Paris and Rome?"
  assert sc.needle_question(["A", "B", "C"]) == "What are the special magic numbers for A, B, and C?"


def test_plant_puts_needles_at_their_depth():
  sentences = [f"S{i}." for i in range(10)]
  doc = sc.plant(sentences, [sc.Needle("Oslo", "7654321", 0.0), sc.Needle("Rome", "1111111", 0.5),
                             sc.Needle("Kyoto", "2222222", 1.0)])
  parts = doc.split(". ")
  assert parts[0].startswith("The special magic Oslo")
  assert parts[6].startswith("The special magic Rome")  # after S0..S4 and the Oslo needle
  assert doc.endswith("The special magic Kyoto number is: 2222222.")


def test_frames_follow_the_caption():
  a = sc.render_frame("circle", "red", "blue", 2, 3, 64)
  b = sc.render_frame("circle", "red", "blue", 2, 3, 64)
  c = sc.render_frame("square", "red", "blue", 2, 3, 64)
  assert a.shape == (256,) and np.array_equal(a, b) and not np.array_equal(a, c)
  band = 64 // len(sc.COLOURS)
  assert set(np.unique(a) // band) == {sc.COLOURS.index("red"), sc.COLOURS.index("blue")}
  with pytest.raises(ValueError, match="does not fit"):
    sc.render_frame("circle", "red", "blue", 12, 0, 64)
  with pytest.raises(ValueError, match="too small"):
    sc.colour_code(0, 0, 16)


def test_video_moves_one_cell_per_frame():
  line = sc.video_caption(np.random.default_rng(3), 4, 64)
  frames = np.asarray(line["vision"]).reshape(4, 16, 16)
  move = line["caption"].split(" moving ")[1].split(" ")[0]
  axis, step = {"right": (1, 1), "left": (1, -1), "down": (0, 1), "up": (0, -1)}[move]
  assert np.array_equal(np.roll(frames[0], step, axis=axis), frames[1])


def test_corpus_is_deterministic_and_readable(tmp_path, corpus_vocab):
  spec = sc.CorpusSpec(seed=5, text_documents=3, retrieval_chats=4, images=3, videos=2, codebook_size=64,
                       document_sentences=(5, 10))
  first = sc.generate_corpus(tmp_path / "a", spec)
  second = sc.generate_corpus(tmp_path / "b", spec)
  for name, path in first.items():
    assert path.read_bytes() == second[name].read_bytes(), name
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    examples = list(LWMJsonlReader(path, corpus_vocab, options=FormatOptions()))
    assert len(examples) == len(rows) > 0
  chat = json.loads(first["retrieval_chat"].read_text().splitlines()[0])["messages"]
  for sentence in chat[1]["content"].split(". "):  # the answer repeats the asked needle sentences
    assert sentence.rstrip(".") + "." in chat[0]["content"]
  video = next(iter(LWMJsonlReader(first["video"], corpus_vocab)))[0]
  assert int(video["is_vision"].sum()) == spec.video_frames * (256 + 1)  # each frame closed by eof or eov
  assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave nothing behind


@pytest.mark.parametrize("log_uniform", [False, True])
def test_document_lengths_follow_the_spec(tmp_path, log_uniform):
  spec = sc.CorpusSpec(seed=1, text_documents=400, retrieval_chats=0, images=0, videos=0, codebook_size=64,
                       document_sentences=(3, 300), needles_per_document=1, log_uniform_lengths=log_uniform)
  path = sc.generate_corpus(tmp_path, spec)["text"]
  # Sentences per document: the filler, the needle, two filler sentences and the recall.
  lengths = np.array([json.loads(line)["text"].count(". ") + 1 - 4 for line in path.read_text().splitlines()])
  assert lengths.min() >= 3 and lengths.max() <= 300
  short = np.mean(lengths < 30)  # log-uniform: ln(10)/ln(100) = half the documents; uniform: 9%
  assert short == pytest.approx(0.5 if log_uniform else 0.09, abs=0.08)
