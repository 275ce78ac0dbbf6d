"""The synthetic LWM corpus: deterministic, in the paper's needle format, readable by our reader."""

import json
import re

import numpy as np
import pytest

from data_loaders import longqa
from data_loaders import synthetic_corpus as sc
from data_loaders.lwm_format import FormatOptions, example_from_line
from data_loaders.sources import LWMJsonlReader
from data_loaders.vocab import MultimodalVocab


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


def test_shape_side_and_grid_limits():
  assert (sc.shape_side(16), sc.shape_side(8), sc.shape_side(32)) == (6, 4, 12)
  with pytest.raises(ValueError, match="at least 8 x 8"):
    sc.shape_side(7)
  with pytest.raises(ValueError, match="at least 8 x 8"):
    sc.CorpusSpec(grid=4)


@pytest.mark.parametrize("grid", [16, 8])
def test_video_moves_one_cell_per_frame(grid):
  line = sc.video_caption(np.random.default_rng(3), 4, 64, grid)
  frames = np.asarray(line["vision"]).reshape(4, grid, grid)
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
  assert spec.tokens_per_frame == 256
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


def test_word_needles_and_their_questions():
  assert sc.needle_sentence("Paris", "otter", "word") == "The special magic Paris word is: otter."
  assert sc.needle_question(["Paris", "Rome"], "word") == "What are the special magic words for Paris and Rome?"
  needles = sc.random_needles(np.random.default_rng(0), 5, kind="word")
  assert all(n.value in sc.VALUE_WORDS and n.sentence.endswith(f"word is: {n.value}.") for n in needles)
  assert len({n.city for n in needles}) == 5
  # Value words are nowhere else in the corpus's text, so a value in an answer can only come from its needle.
  filler = " ".join(sc.filler_sentences(np.random.default_rng(0), 500)).lower().replace(".", "").split()
  assert not set(sc.VALUE_WORDS) & (set(filler) | {c.lower() for c in sc.CITIES} | set(sc.COLOURS) | set(sc.SHAPES))
  with pytest.raises(ValueError, match="needle value 'digit'"):
    sc.CorpusSpec(needle_value="digit")


def test_qa_recall_documents_put_the_loss_on_the_recalls():
  line = sc.text_document(np.random.default_rng(2), 12, 3, "word", qa_recalls=True)
  assert line["fields"] == "[text],recall"
  asked = line["recall"].split("? ")
  assert len(asked) == 4  # three question/answer pairs
  for sentence in line["recall"].split("? ")[1:]:  # each answer is the needle sentence of the document
    assert sentence.split(". ")[0].rstrip(".") + "." in line["text"]


def test_copy_drills_repeat_one_run_of_distinct_words():
  line = sc.copy_drill(np.random.default_rng(4), 32, 8)
  words = line["text"].split(" ")
  assert len(words) == 32 * 8 and len(set(words[:32])) == 32 and set(words) <= set(sc.drill_words())
  assert all(words[i] == words[i % 32] for i in range(len(words)))


def test_short_documents_and_drills_get_files_of_their_own(tmp_path, corpus_vocab):
  spec = sc.CorpusSpec(seed=3, text_documents=2, short_documents=5, short_sentences=(2, 4), copy_drills=3,
                       sentences_per_needle=2, needle_value="word", qa_recalls=True, retrieval_chats=2,
                       images=0, videos=0, codebook_size=64)
  files = sc.generate_corpus(tmp_path, spec)
  assert {"text_short", "copy_drill"} <= set(files)
  short = [json.loads(x) for x in files["text_short"].read_text().splitlines()]
  assert len(short) == 5 and all(1 <= x["recall"].count("?") <= 2 for x in short)
  for name in ("text_short", "copy_drill", "retrieval_chat"):
    examples = list(LWMJsonlReader(files[name], corpus_vocab, options=FormatOptions()))
    assert len(examples) == len(files[name].read_text().splitlines())
  example = next(iter(LWMJsonlReader(files["text_short"], corpus_vocab)))[0]
  recall_ids = corpus_vocab.encode_text(short[0]["recall"])
  assert example["loss_mask"].sum() == len(recall_ids) + 1  # loss on the recalls and the closing EOS only
  assert example["tokens"][-1] == corpus_vocab.eos_id
  chat = json.loads(files["retrieval_chat"].read_text().splitlines()[0])["messages"]
  needles = chat[0]["content"].count("The special magic")
  assert len(chat) == 2 * needles  # follow-ups ask every needle of the document once


def test_both_modality_orders_and_the_image_first_order_trains_the_image(corpus_vocab):
  """Lines carry the paper's swap: caption -> image (loss on the image), image -> caption with loss on
  the image too (unconditional generation, the `<s><vision>` branch of guidance) and on the caption."""
  vocab = MultimodalVocab.from_model_proto(corpus_vocab.model_proto, codebook_size=64, tokens_per_frame=64)
  line = sc.image_caption(np.random.default_rng(0), 64, grid=8)
  assert line["fields"] == ["[caption],vision", "vision,caption"] and len(line["vision"]) == 64
  caption_ids = vocab.encode_text(line["caption"])
  for index, image_first in ((0, False), (1, True)):
    ex = example_from_line(line, vocab, options=FormatOptions(fields_index=index))
    vision, loss = np.asarray(ex["is_vision"], bool), np.asarray(ex["loss_mask"], bool)
    assert vision.sum() == 64 + 1 and loss[vision].all()  # 64 codes + eov, all with loss in both orders
    start = next(i for i in range(len(ex["tokens"])) if list(ex["tokens"][i:i + len(caption_ids)]) == caption_ids)
    if image_first:  # every token after <s> trains: the image (unconditional), then the caption
      assert start > 64 and not loss[0] and loss[1:].all()
    else:            # <s> and the caption are the prompt: nothing before the image trains
      assert start == 1 and not loss[:start + len(caption_ids)].any()


def test_qa_writing_chats_answer_the_make_qa_prompt_about_one_fact_of_the_paragraph(tmp_path, corpus_vocab):
  """The chat stage's QA-writing task: lwm-make-qa's default prompt around a paragraph, answered by one
  pair that `longqa.parse_qa` reads, asking about a fact of that paragraph; the loader trains the answer only."""
  spec = sc.CorpusSpec(seed=5, text_documents=0, retrieval_chats=0, images=0, videos=0, codebook_size=64,
                       needle_value="word", qa_writing_chats=40, qa_writing_sentences=(3, 6))
  files = sc.generate_corpus(tmp_path, spec)
  lines = [json.loads(x)["messages"] for x in files["qa_writing"].read_text().splitlines()]
  assert len(lines) == 40
  counts = set()
  for user, assistant in lines:
    head, paragraph = user["content"].split("Paragraph:\n")
    assert user["content"] == longqa.DEFAULT_TEMPLATE.replace("{paragraph}", paragraph)
    facts = re.findall(r"The special magic (\w+) word is: (\w+)\.", paragraph)
    counts.add(len(facts))
    pair = longqa.parse_qa(assistant["content"])
    city = re.fullmatch(r"What is the special magic (\w+) word\?", pair.question).group(1)
    assert city in dict(facts) and pair.answer == f"The special magic {city} word is: {dict(facts)[city]}."
    assert 3 <= paragraph.count(". ") + 1 - len(facts) <= 6
  assert counts == {1, 2}
  for (ex, _), messages in zip(LWMJsonlReader(files["qa_writing"], corpus_vocab), lines):
    answer_ids = [*corpus_vocab.sp.encode(messages[1]["content"]), corpus_vocab.eos_id]
    assert np.asarray(ex["tokens"])[np.asarray(ex["loss_mask"], bool)].tolist() == answer_ids


def test_needle_books_hold_one_fact_per_so_many_sentences():
  book = sc.needle_book(np.random.default_rng(6), "b3", 100, 16, kind="word")
  facts = re.findall(r"The special magic (\w+) word is: (\w+)\.", book["text"])
  assert book["id"] == "b3" and len(facts) == 6 and len({c for c, _ in facts}) == 6
  assert book["text"].count(". ") + 1 == 106
  assert len(re.findall("The special magic", sc.needle_book(np.random.default_rng(6), "b", 3000, 1)["text"])) == 43
  assert sc.needle_book(np.random.default_rng(6), "b", 3, 16)["text"].count("The special magic") == 1
