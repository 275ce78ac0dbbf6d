"""The Hugging Face tokenizer export loads with `transformers.AutoTokenizer` and gives our ids."""

import json
import random

import numpy as np
import pydoc_data.topics
import pytest
import sentencepiece as spm
import transformers

from data_loaders.chat_template import chat_example
from data_loaders.vocab import MultimodalVocab, train_sentencepiece
from data_loaders.vocab_hf import export_hf_tokenizer

LINES = [l for t in pydoc_data.topics.topics.values() for l in t.splitlines()]
EDGE = ["", " ", "  lead", "trail  ", "Hello  world", "a    b", "tab\tand\nnewline\n\n x", "日本語 🤖 emoji",
        "<vision>", "</vision> ASSISTANT:", "ÀÉÎõü ñ ß", "x" * 40, "1234567 89.5", "▁literal"]
EDGE += [" " * n for n in range(2, 40)] + ["a" + " " * n + "b" for n in range(2, 40)]
EDGE += ["\n" + "  " * n + "if" for n in range(9)]


def _random_strings(n, seed=0):
  rng = random.Random(seed)
  alphabet = list("abcdefghijklmnopqrstuvwxyz  \n\t.,;:'\"-_()[]0123456789") + [
      "▁", "ß", "é", "中", "文", "🤖", "👍🏽", "ا", "ل", "я", "\u200b", "\r", "   ", "the ", "ing ",
      "<vision>"]
  return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(n)]


def _load(path):
  return transformers.AutoTokenizer.from_pretrained(str(path))


@pytest.fixture(scope="module")
def default_export(tmp_path_factory):
  vocab = MultimodalVocab.default()
  out = tmp_path_factory.mktemp("hf_default")
  export_hf_tokenizer(vocab, out, model_max_length=4096)
  return vocab, out, _load(out)


def test_text_ids_equal_sentencepiece(default_export):
  vocab, _, tok = default_export
  texts = LINES[::3] + EDGE + _random_strings(3000)
  bad = [t for t in texts if tok.encode(t, add_special_tokens=False) != vocab.encode_text(t)]
  assert not bad, f"{len(bad)} of {len(texts)} texts differ, e.g. {bad[:3]}"
  assert tok.encode("a dog") == [1, 263, 11203]  # BOS with add_special_tokens, as LLaMA-2


def test_transformers_own_conversion_differs(tmp_path):
  """Why we write tokenizer.json ourselves: transformers' conversion of tokenizer.model disagrees."""
  vocab = MultimodalVocab.default()
  (tmp_path / "tokenizer.model").write_bytes(vocab.model_proto)
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
  converted = _load(tmp_path)
  assert converted.encode("Hello  world", add_special_tokens=False) != vocab.encode_text("Hello  world")


def test_every_row_is_named_with_its_id(default_export):
  vocab, out, tok = default_export
  assert len(tok) == vocab.size == 40448
  names = ["<|vq_0|>", "<|vq_8191|>", "<|eof|>", "<|eov|>", "<|vq_reserved_0|>", "<|vq_reserved_253|>"]
  assert tok.convert_tokens_to_ids(names) == [32000, 40191, 40192, 40193, 40194, 40447]
  assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (1, 2, 0)
  assert tok.model_max_length == 4096
  ids = [1] + vocab.encode_text("a dog") + vocab.encode_image(np.arange(256)).tolist() + [2]
  assert tok.decode(ids, skip_special_tokens=True) == "a dog <vision> </vision>"
  assert tok.decode(vocab.encode_text(LINES[5])) == vocab.decode_text(vocab.encode_text(LINES[5]))
  assert sorted(p.name for p in out.iterdir()) == ["special_tokens_map.json", "tokenizer.json",
                                                   "tokenizer.model", "tokenizer_config.json"]
  assert spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model")).get_piece_size() == 32000


def test_chat_template_gives_our_chat_ids(default_export):
  vocab, _, tok = default_export
  conversations = [
      [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."},
       {"role": "user", "content": "And 3+3?\nThink."}, {"role": "assistant", "content": "6, of course."}],
      [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a color."}],
  ]
  for messages in conversations:
    hf = tok.apply_chat_template(messages, tokenize=True)
    hf = hf["input_ids"] if isinstance(hf, dict) or hasattr(hf, "keys") else hf
    assert list(hf) == chat_example(vocab, messages)["tokens"].tolist()


def test_export_next_to_a_model_config(default_export, tmp_path):
  vocab, _, _ = default_export
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": vocab.size}))
  export_hf_tokenizer(vocab, tmp_path)
  assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "llama"  # left alone
  assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
  tok = _load(tmp_path)
  assert tok.encode("Hello  world", add_special_tokens=False) == vocab.encode_text("Hello  world")


def test_tiny_and_dedicated_exports(tmp_path):
  proto = train_sentencepiece([l for l in LINES if l.strip()], 500)
  vocab = MultimodalVocab.from_model_proto(proto, codebook_size=16, tokens_per_frame=4, vision_markers="dedicated")
  export_hf_tokenizer(vocab, tmp_path)
  tok = _load(tmp_path)
  assert len(tok) == vocab.size == 896  # 500 + 272 + 2 markers = 774 -> 896
  # Like every special token ("<s>" too), the dedicated markers' names are matched in HF input text,
  # while encode_text never produces a non-text id: compare on text without those names.
  texts = [t for t in LINES[1::7] + EDGE + _random_strings(1000, seed=1) if "vision>" not in t]
  bad = [t for t in texts if tok.encode(t, add_special_tokens=False) != vocab.encode_text(t)]
  assert not bad, f"{len(bad)} of {len(texts)} texts differ, e.g. {bad[:3]}"
  assert tok.convert_tokens_to_ids(["<|vq_15|>", "<|eof|>", "<|eov|>", "<vision>", "</vision>", "<|unused_0|>"]) == [
      515, 516, 517, vocab.vision_open_ids[0], vocab.vision_close_ids[0], 774]
  assert tok.encode("<vision>", add_special_tokens=False) == list(vocab.vision_open_ids)


@pytest.mark.parametrize("kwargs, message", [
    (dict(model_type="unigram"), "only SentencePiece BPE models"),
    (dict(normalization_rule_name="nmt_nfkc"), "only identity normalisation"),
])
def test_unsupported_models_refuse_to_export(tmp_path, kwargs, message):
  import io
  buf = io.BytesIO()
  options = dict(model_type="bpe", normalization_rule_name="identity")
  options.update(kwargs)
  spm.SentencePieceTrainer.train(sentence_iterator=iter([l for l in LINES if l.strip()]), model_writer=buf,
                                 vocab_size=400, byte_fallback=True, minloglevel=2, num_threads=1, **options)
  vocab = MultimodalVocab.from_model_proto(buf.getvalue())
  with pytest.raises(ValueError, match=message):
    export_hf_tokenizer(vocab, tmp_path)
  assert not list(tmp_path.iterdir())
