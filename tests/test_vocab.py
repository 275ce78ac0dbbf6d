"""MultimodalVocab: exact LWM ids, layouts, decode round trips, options and errors."""

import pickle
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from data_loaders import vocab as vocab_module
from lwm_plugin.config.settings import LWMSettings
from data_loaders.vocab import MultimodalVocab, VocabLayout, train_sentencepiece

# Hand-checked with sentencepiece on the LLaMA-2 model: '▁<' 'vision' '>' and '▁</' 'vision' '>'.
OPEN, CLOSE = [529, 4924, 29958], [1533, 4924, 29958]
A_DOG = [263, 11203]  # '▁a' '▁dog'


@pytest.fixture(scope="module")
def vocab():
  return MultimodalVocab.default()


@pytest.fixture(scope="module")
def tiny_proto():
  import pydoc_data.topics
  lines = [l for t in pydoc_data.topics.topics.values() for l in t.splitlines() if l.strip()]
  return train_sentencepiece(lines, 400)


def test_default_ids_are_lwm_tables_stacked(vocab):
  assert (vocab.text_size, vocab.codebook_size, vocab.vision_rows, vocab.size) == (32000, 8192, 8448, 40448)
  assert (vocab.bos_id, vocab.eos_id, vocab.unk_id) == (1, 2, 0)
  assert (vocab.vision_id(0), vocab.vision_id(8191)) == (32000, 40191)
  assert (vocab.eof_id, vocab.eov_id) == (32000 + 8192, 32000 + 8193)
  assert vocab.layout == VocabLayout(text_size=32000, vision_start=32000, vision_end=40448, marker_ids=(), size=40448)
  assert vocab.size % 128 == 0
  assert (vocab.vision_open_ids, vocab.vision_close_ids) == (tuple(OPEN), tuple(CLOSE))


def test_text_never_gets_a_bos(vocab):
  assert vocab.encode_text("a dog") == A_DOG
  assert vocab.encode_text("<vision>") == OPEN
  assert vocab.decode_text(A_DOG) == "a dog"
  with pytest.raises(ValueError, match="id 40192 at position 1 is not a text id"):
    vocab.decode_text([263, vocab.eof_id])


def test_is_vision(vocab):
  ids = np.array([0, 1, 2, 31999, 32000, 40191, 40192, 40193, 40447])
  np.testing.assert_array_equal(vocab.is_vision(ids), [0, 0, 0, 0, 1, 1, 1, 1, 1])


def test_image_exact_ids(vocab):
  codes = (np.arange(256) * 37) % 8192
  expected = OPEN + [32000 + int(c) for c in codes] + [40193] + CLOSE
  ids = vocab.encode_image(codes)
  assert ids.dtype == np.int32 and ids.tolist() == expected and len(ids) == 263
  np.testing.assert_array_equal(vocab.is_vision(ids), [False] * 3 + [True] * 257 + [False] * 3)


def test_three_frame_video_exact_ids(vocab):
  frames = np.stack([np.full(256, 7), np.arange(256), np.full(256, 8191)])
  expected = (OPEN + [32007] * 256 + [40192] + list(range(32000, 32256)) + [40192] + [40191] * 256 + [40193]
              + CLOSE)
  assert vocab.encode_video(frames).tolist() == expected


def test_decode_round_trip(vocab):
  rng = np.random.default_rng(0)
  image, video = rng.integers(0, 8192, 256), rng.integers(0, 8192, (3, 256))
  ids = ([vocab.bos_id] + vocab.encode_text("a dog") + vocab.encode_image(image).tolist() + vocab.encode_text("then")
         + vocab.encode_video(video).tolist() + [vocab.eos_id])
  parts = vocab.decode(ids)
  assert [type(p) for p in parts] == [str, np.ndarray, str, np.ndarray]
  assert parts[0] == "a dog" and parts[2] == "then"
  np.testing.assert_array_equal(parts[1], image[None])
  np.testing.assert_array_equal(parts[3], video)


@pytest.mark.parametrize("bad, message", [
    (lambda v: v.encode_image(np.full(256, 8192)), "vision code 8192 out of range"),
    (lambda v: v.encode_image(np.full(256, -1)), "vision code -1 out of range"),
    (lambda v: v.encode_image(np.zeros(255, int)), r"expected 256 codes of one frame, got shape \(255,\)"),
    (lambda v: v.encode_video(np.zeros((2, 200), int)), r"frames of shape \[F >= 1, 256\], got \(2, 200\)"),
    (lambda v: v.encode_video(np.zeros((0, 256), int)), r"got \(0, 256\)"),
    (lambda v: v.encode_image(np.zeros(256)), "must be integers"),
    (lambda v: v.vision_id(9000), "vision code 9000 out of range"),
])
def test_bad_vision_input_names_the_problem(vocab, bad, message):
  with pytest.raises(ValueError, match=message):
    bad(vocab)


def test_decode_rejects_malformed_blocks(vocab):
  img = vocab.encode_image(np.zeros(256, int)).tolist()
  with pytest.raises(ValueError, match="does not end with <eov>"):
    vocab.decode(img[:3] + img[3:259] + [vocab.eof_id] + img[260:])
  with pytest.raises(ValueError, match="not 256 codes"):
    vocab.decode(img[:10] + img[11:])
  with pytest.raises(ValueError, match="reserved vision row"):
    vocab.decode(img[:3] + [vocab.eov_id + 1] + img[4:])


def test_dedicated_markers(vocab):
  ded = MultimodalVocab.default(vision_markers="dedicated")
  assert ded.vision_open_ids == (40448,) and ded.vision_close_ids == (40449,) and ded.size == 40576
  assert ded.layout.marker_ids == (40448, 40449)
  ids = ded.encode_image(np.arange(256))
  assert ids.tolist() == [40448] + list(range(32000, 32256)) + [40193, 40449]
  assert ded.eof_id == vocab.eof_id and ded.vision_id(5) == vocab.vision_id(5)  # LWM rows unchanged
  parts = ded.decode(ded.encode_text("x") + ids.tolist())
  assert parts[0] == "x" and parts[1].shape == (1, 256)
  assert ded.decode([40448] + ded.encode_text("y")) == ["<vision>y"]  # a stray marker decodes to its name


def test_tiny_codebook_and_frames(tiny_proto):
  tiny = MultimodalVocab.from_model_proto(tiny_proto, codebook_size=16, tokens_per_frame=4)
  assert (tiny.text_size, tiny.vision_rows, tiny.eof_id, tiny.eov_id) == (400, 272, 416, 417)
  assert tiny.size == 768  # 400 + 272 = 672, rounded up to a multiple of 128
  ids = tiny.encode_video([[0, 1, 2, 3], [15, 14, 13, 12]])
  n_open = len(tiny.vision_open_ids)
  assert ids[n_open:n_open + 10].tolist() == [400, 401, 402, 403, 416, 415, 414, 413, 412, 417]
  with pytest.raises(ValueError, match="vision code 16 out of range"):
    tiny.encode_image([0, 1, 2, 16])
  assert tiny.decode(ids)[0].tolist() == [[0, 1, 2, 3], [15, 14, 13, 12]]


def test_pickle_round_trip(vocab):
  again = pickle.loads(pickle.dumps(vocab))
  assert again.layout == vocab.layout and again.encode_text("a dog") == A_DOG


def test_from_settings_and_file(tmp_path, tiny_proto):
  path = tmp_path / "tiny.model"
  path.write_bytes(tiny_proto)
  settings = LWMSettings(lwm_tokenizer_path=str(path), lwm_codebook_size=32, lwm_vision_markers="dedicated")
  v = MultimodalVocab.from_settings(settings)
  assert (v.text_size, v.codebook_size, v.vision_markers, v.source) == (400, 32, "dedicated", str(path))
  assert MultimodalVocab.from_settings(LWMSettings()).size == 40448


def test_bad_tokenizer_paths(tmp_path, monkeypatch):
  with pytest.raises(FileNotFoundError, match="no such file"):
    MultimodalVocab.from_tokenizer(tmp_path / "missing.model")
  junk = tmp_path / "junk.model"
  junk.write_bytes(b"not a model")
  with pytest.raises(ValueError, match="is not a SentencePiece model"):
    MultimodalVocab.from_tokenizer(junk)
  monkeypatch.setattr(vocab_module.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(FileNotFoundError, match="tokenizer.llama2.*no maxtext package is installed"):
    MultimodalVocab.default()


def test_bad_options(tiny_proto):
  with pytest.raises(ValueError, match="codebook_size must be >= 1"):
    MultimodalVocab.from_model_proto(tiny_proto, codebook_size=0)
  with pytest.raises(ValueError, match="vision_markers must be"):
    MultimodalVocab.from_model_proto(tiny_proto, vision_markers="special")


def test_vocabulary_and_format_never_import_maxtext():
  code = ("import sys\n"
          "import data_loaders.lwm_format, data_loaders.chat_template\n"
          "import data_loaders.vocab_hf, lwm_plugin.losses.modality_softmax\n"
          "from data_loaders.vocab import MultimodalVocab\n"
          "v = MultimodalVocab.default()\n"
          "data_loaders.lwm_format.example_from_line('{\"fields\": \"t\", \"t\": \"x\"}', v)\n"
          "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'maxtext')\n"
          "assert not bad, bad\n")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=300)


def test_check_vocab_size(vocab):
  vocab.check_vocab_size(40448)
  with pytest.raises(ValueError, match="vocab_size=32000, but .* has 40448 rows; set vocab_size: 40448"):
    vocab.check_vocab_size(32000)


def test_is_text_model(vocab):
  assert vocab.is_text_model(32000) and not vocab.is_text_model(40448)
  with pytest.raises(ValueError, match="vocab_size=32128, but .* has 40448 rows"):
    vocab.is_text_model(32128)
