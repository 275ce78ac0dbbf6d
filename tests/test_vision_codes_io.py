"""`lwm_plugin.vision.codes_io`: codes lines round trip; generation lines and LWM records read; errors name file:line."""

import json

import numpy as np
import pytest

from data_loaders.examples import LWMFormatError
from lwm_plugin.vision import codes_io


def _lines(path, objs):
  path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs))
  return path


def test_codes_lines_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  image, video = rng.integers(0, 8192, (1, 256)), rng.integers(0, 8192, (3, 256))
  codes_io.write_codes(tmp_path / "c.jsonl", [("a/dog.png", image), ("clip.mp4", video), (None, image)])
  raw = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
  assert raw[0] == {"source": "a/dog.png", "vision": image.tolist()} and raw[2] == {"vision": image.tolist()}
  entries = list(codes_io.read_codes(tmp_path / "c.jsonl"))
  assert [(e.source, e.line_number, e.field) for e in entries] == [("a/dog.png", 1, "vision"),
                                                                    ("clip.mp4", 2, "vision"), (None, 3, "vision")]
  np.testing.assert_array_equal(entries[1].codes_FxT, video)
  assert entries[1].codes_FxT.dtype == np.int32


def test_generation_lines_and_lwm_records_are_read(tmp_path):
  codes = np.arange(512) % 8192
  path = _lines(tmp_path / "mixed.jsonl", [
      {"prompt": "a cat", "vision": codes[:256].tolist(), "new_ids": [1, 2]},             # generation: extra keys
      {"fields": ["[caption],vision", "[vision],caption"], "caption": "c", "vision": codes.tolist()},  # flat F x 256
      {"fields": "[caption],vision_a,vision_b", "caption": "c", "vision_a": [codes[:256].tolist()],
       "vision_b": codes[256:].tolist()},                                                  # two vision fields
      {"messages": [{"role": "user", "content": "q", "vision": codes[:256].tolist()},
                    {"role": "assistant", "content": "a"}]},
  ])
  entries = list(codes_io.read_codes(path))
  assert [(e.line_number, e.field, len(e.codes_FxT)) for e in entries] == [
      (1, "vision", 1), (2, "vision", 2), (3, "vision_a", 1), (3, "vision_b", 1), (4, "messages[0]", 1)]
  np.testing.assert_array_equal(entries[1].codes_FxT.reshape(-1), codes)
  np.testing.assert_array_equal(entries[3].codes_FxT[0], codes[256:])


@pytest.mark.parametrize("line,match", [
    ("{not json", "malformed JSON"),
    ("", "blank line"),
    ('["a list"]', "expected a JSON object"),
    ({"source": "x"}, "no 'vision'"),
    ({"source": 3, "vision": [0] * 256}, "'source' must be a string"),
    ({"vision": [0] * 255}, "not a whole number"),
    ({"vision": [8192] + [0] * 255}, r"vision code 8192 out of range \[0, 8192\)"),
    ({"vision": [[0.5] * 256]}, "must be a list of integer"),
    ({"fields": "[caption],vision", "caption": "c"}, "missing vision field 'vision'"),
    ({"fields": "[caption],caption", "caption": "c"}, "no vision value"),
])
def test_bad_lines_name_file_and_line(tmp_path, line, match):
  path = _lines(tmp_path / "bad.jsonl", [{"vision": [1] * 256}, line])
  with pytest.raises(LWMFormatError, match=match) as info:
    list(codes_io.read_codes(path))
  assert str(info.value).startswith(f"{path}:2: ")


def test_a_smaller_codebook_is_checked(tmp_path):
  path = _lines(tmp_path / "c.jsonl", [{"vision": [64] * 256}])
  with pytest.raises(LWMFormatError, match=r"out of range \[0, 64\)"):
    list(codes_io.read_codes(path, codes_io.FrameGeometry(codebook_size=64)))
