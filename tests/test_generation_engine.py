"""`lwm-generate`'s chat loop and output files (lwm_plugin/generation/engine.py) over the numpy stand-in decoder."""

from __future__ import annotations

import json

import numpy as np
from helpers.toy_decoder import ToyDecoder

from data_loaders import vision_prompts as vp
from lwm_plugin.generation import engine, loop
from lwm_plugin.integration import inference
from lwm_plugin.generation.request import GenerateRequest
from lwm_plugin.model_source import ModelSource


def _prepared(vocab, tmp_path, **request) -> engine.Prepared:
  req = GenerateRequest(config_file="c.yml", model=ModelSource(tmp_path, False), overrides=(), **request)
  return engine.Prepared(req, None, vocab, [], [], max_prompt_length=200, import_dir=None, temporary_import=False)


def test_chat_loop_keeps_the_conversation_as_tokens(corpus_vocab, tmp_path, capsys):
  """The toy answers every question with [7, 8, EOS] (bigram: anything -> 7 -> 8 -> EOS)."""
  bigram = np.zeros((corpus_vocab.size, corpus_vocab.size), np.float32)
  bigram[:, 7] = 1.0
  bigram[7, 8] = bigram[8, corpus_vocab.eos_id] = 2.0
  decoder = ToyDecoder(bigram, max_length=256)
  questions = iter(["What is the special magic Oslo number?", "", "And Rome?"])

  def ask(_):
    try:
      return next(questions)
    except StopIteration as e:
      raise EOFError from e

  turns = engine._chat(_prepared(corpus_vocab, tmp_path, mode="text", interactive=True, max_new_tokens=5),
                       decoder, (corpus_vocab.eos_id,), print, ask)
  answer = [7, 8, corpus_vocab.eos_id]
  assert [g.new_ids.tolist() for g, _ in turns] == [answer, answer]  # the empty line was skipped
  first = vp.chat_prompt_ids(corpus_vocab, "What is the special magic Oslo number?")
  second = [*first.tolist(), *answer, *corpus_vocab.encode_text("USER: And Rome?"),
            *corpus_vocab.encode_text("ASSISTANT:")]
  assert [p[0].tolist() for p in decoder.prefills] == [first.tolist(), second]
  text = corpus_vocab.decode_text([7, 8])
  assert capsys.readouterr().out.splitlines() == [f"ASSISTANT: {text}"] * 2


def test_chat_loop_ends_when_the_conversation_outgrows_the_cache(corpus_vocab, tmp_path):
  bigram = np.zeros((corpus_vocab.size, corpus_vocab.size), np.float32)
  bigram[:, corpus_vocab.eos_id] = 1.0
  said = []
  prepared = _prepared(corpus_vocab, tmp_path, mode="text", interactive=True, max_new_tokens=5)
  prepared.max_prompt_length = 30
  turns = engine._chat(prepared, ToyDecoder(bigram, max_length=256), (corpus_vocab.eos_id,), said.append,
                       lambda _: "What is the special magic Oslo number? " * 3)
  assert turns == [] and "more than the cache's 30 prompt tokens; it ends here" in said[0]


def test_results_and_codes_files(corpus_vocab, tmp_path):
  frames = np.arange(2 * 256).reshape(2, 256) % 64
  new_ids = np.concatenate([frames[0] + corpus_vocab.vision_start, [corpus_vocab.eof_id],
                            frames[1] + corpus_vocab.vision_start, [corpus_vocab.eov_id]]).astype(np.int32)
  gen = loop.Generation(np.array([1, 5, 6], np.int32), new_ids, 0.5, 1.5)
  engine._write_codes(tmp_path / "c.jsonl", corpus_vocab, ["a dog"], [(gen, None)])
  (line,) = [json.loads(x) for x in (tmp_path / "c.jsonl").read_text().splitlines()]
  assert line == {"prompt": "a dog", "vision": frames.tolist()}
  engine._write_results(tmp_path / "r.json", [(gen, None)])
  assert json.loads((tmp_path / "r.json").read_text()) == {"results": [{
      "prompt_ids": [1, 5, 6], "new_ids": new_ids.tolist(), "text": None,
      "timing": {"prefill_s": 0.5, "decode_s": 1.5, "new_tokens": 514}}]}


def test_decode_config_names_the_weights_the_cache_split_and_no_checkpointing(monkeypatch):
  seen = []
  monkeypatch.setattr(inference, "load_config", lambda argv: seen.append(list(argv)) or "config")
  assert inference.decode_config("lwm-demo-vision", "tiny.yml", "/ckpt/9/items",
                                 ["dtype=float32", "per_device_batch_size=2"], total=600, prompt=512) == "config"
  # the cache keys come last, after the caller's overrides
  assert seen == [["lwm-demo-vision", "tiny.yml", "run_name=lwm_demo_vision", "enable_checkpointing=false",
                   "load_parameters_path=/ckpt/9/items", "dtype=float32", "per_device_batch_size=2",
                   "max_target_length=600", "max_prefill_predict_length=512"]]
