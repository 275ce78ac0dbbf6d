"""Needle-in-a-haystack prompts and scoring (the model side is exercised by the demo test)."""

import json

import numpy as np
import pytest

from data_loaders import synthetic_corpus as sc
from lwm_plugin.evaluation import needle


def test_score_is_the_fraction_of_numbers_found():
  assert needle.score_answer("1234567", ["1234567"]) == 1.0
  assert needle.score_answer("the number is 123456", ["1234567"]) == 0.0
  assert needle.score_answer("1111111 and 3333333", ["1111111", "2222222"]) == 0.5


@pytest.mark.parametrize("task", [needle.NeedleTask(1, 1), needle.NeedleTask(4, 2)], ids=lambda t: t.name)
def test_prompts_fit_and_carry_the_needles_at_their_depth(corpus_vocab, task):
  for depth in (0.0, 0.5, 1.0):
    trial = needle.build_trial(corpus_vocab, task, 512, depth, np.random.default_rng(7), 0)
    assert 480 <= len(trial.tokens) <= 512  # filled up to the budget, never over it
    text = corpus_vocab.decode_text(trial.tokens[1:])  # after BOS
    assert text.startswith("You are a helpful assistant. USER:") and text.endswith("ASSISTANT:")
    haystack = text.split("USER:")[1]
    body = haystack[:haystack.index(" What ")]  # the document before the question
    first = body.index(sc.needle_sentence(trial.cities[0], trial.values[0]))
    assert abs(first / len(body) - depth) < 0.2, (depth, first / len(body))
    for city, number in zip(trial.cities, trial.values):
      assert sc.needle_sentence(city, number) in haystack
    assert len(trial.values) == task.n_asked
  with pytest.raises(ValueError, match="too short"):
    needle.build_trial(corpus_vocab, task, 20, 0.5, np.random.default_rng(0), 0)


def test_grid_is_deterministic_and_results_are_written(corpus_vocab, tmp_path):
  task = needle.NeedleTask(1, 1)
  grid = needle.build_grid(corpus_vocab, task, [256, 512], [0.0, 1.0], rounds=2, seed=3)
  again = needle.build_grid(corpus_vocab, task, [256, 512], [0.0, 1.0], rounds=2, seed=3)
  assert len(grid) == 8 and all(np.array_equal(a.tokens, b.tokens) for a, b in zip(grid, again))
  by_prompt = {id(t.tokens): t for t in grid}

  def fake_model(prompts, max_new_tokens):  # right in the short context only
    assert max_new_tokens == needle.answer_budget(task)
    return [by_prompt[id(p)].values[0] if by_prompt[id(p)].context_length == 256 else "no idea" for p in prompts]

  needle.run_grid(grid, fake_model, task)
  lengths, depths, table = needle.accuracy_table(grid)
  assert lengths == [256, 512] and depths == [0.0, 1.0]
  assert table[:, 0].tolist() == [1.0, 1.0] and table[:, 1].tolist() == [0.0, 0.0]
  doc = json.loads(needle.write_results(tmp_path / "r.json", task, grid).read_text())
  assert doc["mean_accuracy"] == 0.5 and len(doc["trials"]) == 8
  for trial, written in zip(grid, doc["trials"]):  # every prompt is in the file, as text the model read
    assert written["prompt"].endswith("number? ASSISTANT:") and trial.values[0] in written["prompt"]
    assert corpus_vocab.encode_text(written["prompt"]) == [int(t) for t in trial.tokens[1:]]
  png = needle.plot_heatmap(tmp_path / "h.png", grid, "test").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_partial_credit_names_cities_and_counts_digits_by_position():
  assert needle.partial_credit("The special magic Oslo number is: 1234567.", ["Oslo"], ["1234567"]) == (1.0, 1.0)
  named, digits = needle.partial_credit("The special magic Rome number is: 1204560.", ["Oslo"], ["1234567"])
  assert (named, digits) == (0.0, pytest.approx(5 / 7))
  # Several asked facts: each number against its best digit run; no digits at all scores 0.
  assert needle.partial_credit("Oslo 7654321, Rome 1111111", ["Oslo", "Lima"], ["7654321", "1111112"]) == (
      0.5, pytest.approx((1 + 6 / 7) / 2))
  assert needle.partial_credit("no idea", ["Oslo"], ["1234567"]) == (0.0, 0.0)


def test_lwm_eval_names_a_bad_task(capsys):
  from lwm_plugin.evaluation import cli as evaluate  # pylint: disable=import-outside-toplevel

  assert evaluate.main(["needle", "--config", "tiny_text_chat_4k.yml", "--model", "nowhere", "--needles", "1",
                        "--asked", "2"]) == 2
  assert "lwm-eval: error: need 1 <= asked (2) <= needles (1)" in capsys.readouterr().err


def _haystack_file(tmp_path, corpus_vocab, suffix=".txt"):
  sentences = sc.filler_sentences(np.random.default_rng(11), 400)
  path = tmp_path / f"hay{suffix}"
  if suffix == ".jsonl":
    path.write_text("".join(json.dumps({"text": " ".join(sentences[i:i + 50]) + " "}) + "\n"
                            for i in range(0, 400, 50)))
  else:
    path.write_text(" ".join(sentences))
  return needle.read_haystack(path, corpus_vocab), " ".join(sentences)


@pytest.mark.parametrize("fmt", ["lwm", "chat"])
def test_haystack_file_prompts(fmt, corpus_vocab, tmp_path):
  haystack, text = _haystack_file(tmp_path, corpus_vocab)
  assert np.array_equal(haystack.ids, corpus_vocab.encode_text(text))
  grid = needle.build_grid(corpus_vocab, needle.NeedleTask(1, 1), [400, 700], [0.0, 0.5, 1.0], rounds=2, seed=1,
                           haystack=haystack, prompt_format=fmt)
  assert len(grid) == 12
  for trial in grid:
    assert trial.context_length - 20 <= len(trial.tokens) <= trial.context_length
    assert trial.tokens[0] == corpus_vocab.bos_id
    prompt = corpus_vocab.decode_text(trial.tokens[1:])
    city, number = trial.cities[0], trial.values[0]
    if fmt == "lwm":
      question = f"What is the special magic {city} number?"
      assert prompt.startswith("You are a helpful assistant. USER: ")
      assert prompt.endswith(f" {question} Don't give information outside the document or repeat your findings. "
                             "Keep your response short and direct. ASSISTANT: ")
      planted = f"\nThe special magic {city} number is: {number}\n"
    else:
      question = sc.needle_question([city])
      assert prompt.startswith("You are a helpful assistant. USER:") and prompt.endswith(f"{question} ASSISTANT:")
      planted = sc.needle_sentence(city, number)
    body = prompt[len("You are a helpful assistant. USER: "):prompt.rindex(question)]
    window = len(body) - len(planted)  # the haystack's characters; the needle goes back at most one sentence
    at = body.index(planted)
    assert trial.depth * window - 70 <= at <= trial.depth * window + 2, (trial.depth, at, window)
    before = body[:at].rstrip()
    if trial.depth < 1:  # on a sentence boundary, as LWM (depth 1 appends to the window, as LWM)
      assert before == "" or before.endswith("."), before[-30:]
  # round 1 reads another window of the file than round 0
  first, second = grid[0], grid[1]
  assert (first.round, second.round) == (0, 1) and first.tokens[5:40].tolist() != second.tokens[5:40].tolist()


def test_lwm_multi_needle_questions_and_jsonl_haystacks(corpus_vocab, tmp_path):
  assert needle.lwm_question(["Oslo"], multi_needle=False) == "What is the special magic Oslo number?"
  assert needle.lwm_question(["Oslo"], multi_needle=True) == "What is the special magic number for Oslo?"
  assert needle.lwm_question(["Oslo", "Rome", "Lima"], multi_needle=True) == (
      "What are the special magic numbers for Oslo, Rome, and Lima?")
  jsonl, text = _haystack_file(tmp_path, corpus_vocab, ".jsonl")
  assert corpus_vocab.decode_text(jsonl.ids).strip() == text.strip()
  (trial,) = needle.build_grid(corpus_vocab, needle.NeedleTask(4, 2), [600], [0.25], rounds=1, seed=2, haystack=jsonl,
                               prompt_format="lwm")
  prompt = corpus_vocab.decode_text(trial.tokens[1:])
  assert f"What are the special magic numbers for {trial.cities[0]}, and {trial.cities[1]}?" in prompt
  assert prompt.count("\nThe special magic ") == 4


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe", "not a readable UTF-8 text file"), (b"", "no text"),
])
def test_bad_haystack_files(content, message, corpus_vocab, tmp_path):
  path = tmp_path / "h.txt"
  path.write_bytes(content)
  with pytest.raises(ValueError, match=f"--haystack {path}: {message}"):
    needle.read_haystack(path, corpus_vocab)
  bad = tmp_path / "h.jsonl"
  bad.write_text('{"text": "a"}\n{"txt": "b"}\n')
  with pytest.raises(ValueError, match=rf'--haystack {bad}:2: expected an object with a string "text"'):
    needle.read_haystack(bad, corpus_vocab)


def test_word_needles_are_asked_and_scored_as_whole_words(corpus_vocab):
  task = needle.NeedleTask(2, 1, value="word")
  trial = needle.build_trial(corpus_vocab, task, 512, 0.5, np.random.default_rng(5), 0)
  text = corpus_vocab.decode_text(trial.tokens[1:])
  word = trial.values[0]
  assert word in sc.VALUE_WORDS and f"The special magic {trial.cities[0]} word is: {word}." in text
  assert text.endswith(f"What is the special magic {trial.cities[0]} word? ASSISTANT:")
  # A word counts only whole: "pear" is not in "pearl"; letters by position against the best word.
  assert needle.score_answer("The special magic Oslo word is: pear.", ["pear"], "word") == 1.0
  assert needle.score_answer("The special magic Oslo word is: pearl.", ["pear"], "word") == 0.0
  assert needle.partial_credit("The special magic Oslo word is: peak.", ["Oslo"], ["pear"], "word") == (1.0, 0.75)
  # the task's kind decides, not the values' look: a number needle's scoring is LWM's substring rule
  assert needle.score_answer("pearl", ["pear"], "number") == 1.0
  with pytest.raises(ValueError, match="needle value 'colour'"):
    needle.score_answer("x", ["pear"], "colour")
  with pytest.raises(ValueError, match="needle value 'digits'"):
    needle.NeedleTask(1, 1, value="digits")
  with pytest.raises(ValueError, match="lwm prompt format"):
    needle.build_grid(corpus_vocab, task, [512], [0.5], 1, 0, prompt_format="lwm")
