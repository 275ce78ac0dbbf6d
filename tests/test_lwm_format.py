"""LWM JSONL format: exact tokens and masks for each layout, the modality swap, budgets, bad input."""

import json
import logging
import pickle
import random

import numpy as np
import pytest

from data_loaders.lwm_format import FormatOptions, LWMFormatError, example_from_line, parse_fields_spec
from data_loaders.sources import LWMJsonlReader, Provenance
from data_loaders.vocab import MultimodalVocab

BOS, EOS, EOF, EOV = 1, 2, 40192, 40193
OPEN, CLOSE = [529, 4924, 29958], [1533, 4924, 29958]
A_DOG = [263, 11203]
CODES = [(7 * i) % 8192 for i in range(256)]
IMAGE = OPEN + [32000 + c for c in CODES] + [EOV] + CLOSE  # 263 tokens, 257 of them vision


@pytest.fixture(scope="module")
def vocab():
  return MultimodalVocab.default()


def _line(**obj):
  return json.dumps(obj)


def _rows(ex):
  return ex["tokens"].tolist(), ex["loss_mask"].tolist(), ex["is_vision"].astype(int).tolist()


def test_text_then_image_exact(vocab):
  ex = example_from_line(_line(fields="[caption],vision", caption="a dog", vision=CODES), vocab)
  assert {k: v.dtype for k, v in ex.items()} == {"tokens": np.int32, "loss_mask": np.int32, "is_vision": np.bool_}
  assert _rows(ex) == ([BOS] + A_DOG + IMAGE + [EOS],
                       [0, 0, 0] + [1] * 263 + [1],
                       [0, 0, 0] + [0] * 3 + [1] * 257 + [0] * 3 + [0])


def test_image_then_text_exact(vocab):
  ex = example_from_line(_line(fields="[vision],caption", caption="a dog", vision=CODES), vocab)
  assert _rows(ex) == ([BOS] + IMAGE + A_DOG + [EOS],
                       [0] + [0] * 263 + [1, 1] + [1],
                       [0] + [0] * 3 + [1] * 257 + [0] * 3 + [0, 0, 0])


def test_three_frame_video_flat_or_per_frame(vocab):
  frames = [[f] * 256 for f in (10, 20, 30)]
  want = OPEN + [32010] * 256 + [EOF] + [32020] * 256 + [EOF] + [32030] * 256 + [EOV] + CLOSE
  flat = example_from_line(_line(fields="vision", vision=sum(frames, [])), vocab)
  nested = example_from_line(_line(fields="vision", vision=frames), vocab)
  assert flat["tokens"].tolist() == [BOS] + want + [EOS] == nested["tokens"].tolist()
  assert flat["is_vision"].sum() == 3 * 257


def test_concatenation_specials_and_text_only(vocab):
  ex = example_from_line(_line(fields="[q+a],<|eos|>,[<|bos|>],b", q="a", a="dog", b="x"), vocab)
  assert _rows(ex)[:2] == ([BOS] + A_DOG + [EOS, BOS] + vocab.encode_text("x") + [EOS],
                           [0, 0, 0, 1, 0, 1, 1])
  text = example_from_line(_line(text="a dog"), vocab, options=FormatOptions(default_fields="text"))
  assert text["tokens"].tolist() == [BOS] + A_DOG + [EOS]
  assert parse_fields_spec("[a+b],vision")[0].names == ("a", "b")


def test_modality_swap_is_seeded_by_the_example_index(vocab):
  specs = ["[caption],vision", "[vision],caption"]
  line = _line(fields=specs, caption="a dog", vision=CODES)
  firsts = []
  for index in range(12):
    ex = example_from_line(line, vocab, example_index=index)
    want = random.Random(index).choice(specs)  # LWM: random.Random(line index).choice(fields)
    firsts.append(ex["tokens"][1])
    assert ex["tokens"][1] == (A_DOG[0] if want.startswith("[caption]") else OPEN[0])
    assert np.array_equal(ex["tokens"], example_from_line(line, vocab, example_index=index)["tokens"])
  assert set(firsts) == {A_DOG[0], OPEN[0]}  # both orders occur
  fixed = example_from_line(line, vocab, example_index=0, options=FormatOptions(fields_index=1))
  assert fixed["tokens"][1] == OPEN[0]


def test_long_video_is_subsampled_keeping_first_and_last(vocab):
  video = [[f] * 256 for f in range(10)]
  for options, kept in [(FormatOptions(max_frames=4), [0, 3, 6, 9]),
                        (FormatOptions(max_vision_tokens=3 * 257 + 5), [0, 4, 9]),
                        (FormatOptions(max_frames=20), list(range(10)))]:
    ex = example_from_line(_line(fields="vision", vision=video), vocab, options=options)
    codes = ex["tokens"][ex["is_vision"]].reshape(-1, 257)
    assert codes[:, 0].tolist() == [32000 + f for f in kept] and codes[-1, -1] == EOV
  with pytest.raises(ValueError, match="room for no frame"):
    example_from_line(_line(fields="vision", vision=video), vocab, options=FormatOptions(max_vision_tokens=200))


@pytest.mark.parametrize("line, kind, message", [
    ('{"fields": "text", "text": "a dog"', "json", "malformed JSON"),
    ('[1, 2]', "json", "expected a JSON object"),
    (_line(text="a dog"), "field", "missing field 'fields'"),
    (_line(fields="[caption],vision", vision=CODES), "field", "missing field 'caption'"),
    (_line(fields="[caption,vision", caption="x", vision=CODES), "spec", "malformed item"),
    (_line(fields="caption,,vision", caption="x", vision=CODES), "spec", "malformed item ''"),
    (_line(fields="<|pad|>,caption", caption="x"), "spec", "unknown special item '<|pad|>'"),
    (_line(fields="caption+vision", caption="x", vision=CODES), "spec", "'\\+' cannot join vision"),
    (_line(fields=[], caption="x"), "spec", "non-empty list"),
    (_line(fields="caption", caption=5), "type", "text field 'caption' must be a string"),
    (_line(fields="vision", vision=["1"] * 256), "type", "list of integer VQGAN codes"),
    (_line(fields="vision", vision=[0.5] * 256), "type", "list of integer VQGAN codes"),
    (_line(fields="vision", vision=[[1] * 256, [1] * 3]), "type", "list of integer VQGAN codes"),
    (_line(fields="vision", vision=[8192] + CODES[1:]), "code", "vision code 8192 out of range"),
    (_line(fields="vision", vision=[-3] + CODES[1:]), "code", "vision code -3 out of range"),
    (_line(fields="vision", vision=CODES + [1]), "frames", "257 codes .* not a whole number"),
    (_line(fields="vision", vision=[]), "frames", "not a whole number"),
    (_line(fields="caption", caption=""), "empty", "empty example"),
])
def test_bad_lines_raise_with_file_and_line(vocab, line, kind, message):
  with pytest.raises(LWMFormatError, match=message) as err:
    example_from_line(line, vocab, source="data.jsonl", line_number=7)
  assert err.value.kind == kind and str(err.value).startswith("data.jsonl:7: ")


def test_format_error_survives_a_pickle_round_trip(vocab):
  """Grain worker processes send exceptions back pickled: kind, reason, file and line must survive."""
  with pytest.raises(LWMFormatError) as err:
    example_from_line(_line(fields="vision", vision=[8192] + CODES[1:]), vocab, source="d.jsonl", line_number=3)
  back = pickle.loads(pickle.dumps(err.value))
  assert type(back) is LWMFormatError and str(back) == str(err.value) == "d.jsonl:3: " + err.value.reason
  assert (back.kind, back.reason, back.source, back.line_number) == ("code", err.value.reason, "d.jsonl", 3)


def _write(path, lines):
  path.write_text("".join(l + "\n" for l in lines))
  return path


def test_reader_yields_provenance_and_resumes(vocab, tmp_path):
  specs = ["[caption],vision", "[vision],caption"]
  lines = [_line(fields=specs, caption=f"picture {i}", vision=CODES) for i in range(6)]
  path = _write(tmp_path / "part-0.jsonl", lines)
  full = list(LWMJsonlReader(path, vocab))
  assert [p for _, p in full] == [Provenance(str(path), n, n - 1) for n in range(1, 7)]
  for (ex, prov), line in zip(full, lines):
    want = example_from_line(line, vocab, example_index=prov.example_index)
    assert np.array_equal(ex["tokens"], want["tokens"])
  resumed = list(LWMJsonlReader(path, vocab, start_line=4))
  assert [p.line_number for _, p in resumed] == [4, 5, 6]
  assert all(np.array_equal(a["tokens"], b["tokens"]) for (a, _), (b, _) in zip(resumed, full[3:]))


def test_reader_errors_by_default_and_counts_skips(vocab, tmp_path, caplog):
  good = _line(fields="caption", caption="a dog")
  path = _write(tmp_path / "bad.jsonl", [good, "{oops", good, "", _line(fields="vision", vision=[9999] * 256), good])
  with pytest.raises(LWMFormatError, match=f"{path}:2: malformed JSON"):
    list(LWMJsonlReader(path, vocab))
  reader = LWMJsonlReader(path, vocab, skip_invalid=True)
  with caplog.at_level(logging.WARNING, logger="data_loaders.lwm_format"):
    kept = [p.line_number for _, p in reader]
  assert kept == [1, 3, 6]
  assert reader.stats.examples == 3 and reader.stats.skipped == 3
  assert dict(reader.stats.skipped_by_kind) == {"json": 1, "empty": 1, "code": 1}
  assert [f"{path}:{n}" in caplog.text for n in (2, 4, 5)] == [True] * 3
