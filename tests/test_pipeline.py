"""`data_loaders.pipeline`: mixtures, packing groups, determinism, host shards, exact resume, bad input."""

import json
import re

import numpy as np
import pytest

from data_loaders import tiny_data
from data_loaders.batch import ROW_KEYS
from data_loaders.lwm_format import LWMFormatError
from data_loaders.pipeline import LoaderConfig, build_dataset, source_stream
from data_loaders.pretokenized import pretokenize_jsonl, write_arrayrecord, write_parquet
from data_loaders.stream import TooManyInvalidError


@pytest.fixture(scope="module")
def vocab(tiny_lwm_data):
  return tiny_data.vocab(tiny_lwm_data)


def _coded_examples(source: int, count: int, rng, max_len: int = 40):
  """Examples whose 2nd and 3rd tokens say (source, index); text and vision tokens, loss on all targets."""
  out = []
  for k in range(count):
    body = rng.integers(20, 380, size=int(rng.integers(2, max_len - 4)))
    if rng.random() < 0.5:
      body = np.concatenate([body, rng.integers(400, 700, size=int(rng.integers(1, 8)))])
    tokens = np.concatenate([[1, 3 + source, 10 + k], body, [2]]).astype(np.int32)
    out.append({"tokens": tokens, "loss_mask": np.r_[0, np.ones(len(tokens) - 1, np.int32)]})
  return out


def _ids(batch):
  """(source, index) of every example starting in the batch, row by row."""
  rows = []
  for inputs, positions in zip(batch["inputs"], batch["inputs_position"]):
    starts = np.flatnonzero((positions == 0) & (inputs == 1))
    rows.append([(int(inputs[s + 1]) - 3, int(inputs[s + 2]) - 10) for s in starts])
  return rows


def _batches(config, vocab, n, **kwargs):
  it = iter(build_dataset(config, vocab, **kwargs))
  return [next(it) for _ in range(n)]


def _config(sources, **kwargs):
  defaults = {"seq_len": 64, "batch_size": 4, "seed": 3, "read_threads": 2, "read_buffer_size": 16}
  return LoaderConfig(**{"sources": sources, **defaults, **kwargs})


@pytest.fixture(scope="module")
def coded_files(tmp_path_factory):
  rng = np.random.default_rng(0)
  d = tmp_path_factory.mktemp("coded")
  return {"a1": write_arrayrecord(d / "a1.arrayrecord", _coded_examples(0, 200, rng)),
          "a2": write_parquet(d / "a2.parquet", _coded_examples(1, 200, rng), row_group_size=16),
          "b": write_arrayrecord(d / "b.arrayrecord", _coded_examples(2, 200, rng))}


def _sources(files):
  return [{"name": "a1", "files": str(files["a1"]), "format": "arrayrecord", "weight": 3.0, "group": "A"},
          {"name": "a2", "files": str(files["a2"]), "format": "parquet", "weight": 1.0, "group": "A"},
          {"name": "b", "files": str(files["b"]), "format": "arrayrecord", "weight": 4.0, "group": "B"}]


def test_batches_from_jsonl_have_the_row_keys(tiny_lwm_data, vocab):
  sources = [{"name": "image", "files": str(tiny_lwm_data / "image.jsonl")},
             {"name": "text", "files": str(tiny_lwm_data / "text.jsonl"), "weight": 0.5}]
  (batch,) = _batches(_config(sources, seq_len=512, overlong="split"), vocab, 1)
  assert set(batch) == set(ROW_KEYS)
  for key in ROW_KEYS:
    assert batch[key].shape == (4, 512), key
    assert batch[key].dtype == (np.float32 if key == "targets_weights" else np.int32), key
  assert batch["targets_vision_mask"].any() and (batch["targets_weights"] > 0).any()
  np.testing.assert_array_equal(batch["targets_vision_mask"], vocab.is_vision(batch["targets"]) & (batch["targets_segmentation"] > 0))


def test_groups_never_share_a_row_and_mixtures_follow_the_weights(coded_files, vocab):
  batches = _batches(_config(_sources(coded_files), shuffle=True), vocab, 60)
  rows = [row for b in batches for row in _ids(b)]
  groups = [{"A" if s in (0, 1) else "B" for s, _ in row} for row in rows if row]
  assert all(len(g) == 1 for g in groups)  # never packed together
  share_b = sum(g == {"B"} for g in groups) / len(groups)
  assert share_b == pytest.approx(0.5, abs=0.05)  # rows: group weights 4 : 4
  in_a = [s for row in rows for s, _ in row if s in (0, 1)]
  assert in_a.count(0) / len(in_a) == pytest.approx(0.75, abs=0.03)  # examples: source weights 3 : 1


def test_deterministic_for_a_seed(coded_files, vocab):
  first = _batches(_config(_sources(coded_files)), vocab, 5)
  again = _batches(_config(_sources(coded_files)), vocab, 5)
  other = _batches(_config(_sources(coded_files), seed=4), vocab, 5)
  for x, y in zip(first, again):
    for key in ROW_KEYS:
      np.testing.assert_array_equal(x[key], y[key])
  assert any(not np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(first, other))


def test_host_shards_are_disjoint_and_cover_an_epoch(coded_files, vocab):
  sources = [{"name": "a1", "files": str(coded_files["a1"]), "format": "arrayrecord"}]
  seen = []
  for shard in range(2):
    it = iter(build_dataset(_config(sources, num_epochs=1), vocab, shard_index=shard, shard_count=2))
    seen.append([i for b in it for row in _ids(b) for i in row])
  assert len(seen[0]) + len(seen[1]) == 200
  assert not set(seen[0]) & set(seen[1])
  assert set(seen[0]) | set(seen[1]) == {(0, k) for k in range(200)}


def test_resume_from_any_batch_gives_the_same_stream(tiny_lwm_data, vocab):
  # Shuffled mixture with examples split across rows: the state must restore mid-example.
  sources = [{"name": "text", "files": str(tiny_lwm_data / "text.jsonl")},
             {"name": "chat", "files": str(tiny_lwm_data / "retrieval_chat.jsonl"), "group": "qa"}]
  config = _config(sources, seq_len=128, batch_size=2, overlong="split")
  reference = _batches(config, vocab, 12)
  it = iter(build_dataset(config, vocab))
  mid_example = 0
  for k in range(9):
    state = json.loads(json.dumps(it.get_state()))  # what MaxText writes to process_<i>-of-<n>.json
    mid_example += bool(re.search(r'"taken": [1-9]', json.dumps(state)))
    restored = iter(build_dataset(config, vocab))
    restored.set_state(state)
    for j in range(k, k + 3):
      got = next(restored)
      for key in ROW_KEYS:
        np.testing.assert_array_equal(got[key], reference[j][key], err_msg=f"resumed at {k}, batch {j}, {key}")
    next(it)
  assert mid_example  # some states were taken in the middle of a split example


@pytest.mark.slow
def test_multiprocessing_prefetch_resumes_exactly(coded_files, vocab):
  config = _config(_sources(coded_files), worker_count=1)
  it = iter(build_dataset(config, vocab))
  try:
    batches = [next(it) for _ in range(5)]
    state = json.loads(json.dumps(it.get_state()))
    batches += [next(it) for _ in range(5)]
  finally:
    it.close()
  restored = iter(build_dataset(config, vocab))
  try:
    restored.set_state(state)
    for j in range(5, 10):
      got = next(restored)
      for key in ROW_KEYS:
        np.testing.assert_array_equal(got[key], batches[j][key], err_msg=f"batch {j}, {key}")
  finally:
    restored.close()


BAD_LINES = {
    "malformed": ('{"text": "fine"}\n{"text": \n', 2, "malformed JSON"),
    "code": ('{"text": "fine"}\n{"fields": "[caption],vision", "caption": "x", "vision": [' + ",".join(["9999"] * 256)
             + ']}\n', 2, "vision code 9999 out of range"),
    "empty": ('{"text": "fine"}\n{"text": "ok"}\n\n', 3, "blank line"),
    "empty_fields": ('{"fields": "[text]", "text": ""}\n', 1, "empty example"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_input_is_an_error_naming_file_and_line(tmp_path, vocab, case):
  text, line, message = BAD_LINES[case]
  path = tmp_path / f"{case}.jsonl"
  path.write_text(text)
  config = _config([{"name": case, "files": str(path), "default_fields": "text"}], shuffle=False, num_epochs=1)
  with pytest.raises(LWMFormatError, match=rf"{path}:{line}: .*{message}"):
    list(build_dataset(config, vocab))


def test_skip_mode_counts_bad_lines_and_stops_when_too_many(tmp_path, vocab):
  lines = ['{"text": "good line %d"}' % i for i in range(120)]
  for i, bad in zip((5, 40, 41, 90), ('{"text": ', '{"fields": "vision", "vision": [70000' + ', 0' * 255 + ']}', "", '{"fields": "[text]", '
                                                                                                '"text": ""}')):
    lines[i] = bad
  path = tmp_path / "mixed.jsonl"
  path.write_text("\n".join(lines) + "\n")
  source = {"name": "mixed", "files": str(path), "default_fields": "text"}
  config = _config([source], shuffle=False, num_epochs=1, skip_invalid=True, max_invalid_fraction=0.05)
  it = iter(source_stream(config, config.sources[0], vocab, shard_index=0, shard_count=1))
  examples = list(it)
  assert len(examples) == 116
  assert it.counts["read"] == 120 and it.counts["examples"] == 116
  assert it.counts["invalid"] == {"json": 1, "code": 1, "empty": 2}
  strict = _config([source], shuffle=False, num_epochs=1, skip_invalid=True, max_invalid_fraction=0.02)
  with pytest.raises(TooManyInvalidError, match=r"4 of 1\d\d records were invalid"):
    list(build_dataset(strict, vocab))


def test_a_text_only_model_reads_text_and_refuses_vision_data(tmp_path, tiny_lwm_data, vocab):
  """vocab_size = the tokenizer's size (LWM's text stages): vision ids would be out of the model's range."""
  text = _config([{"name": "text", "files": str(tiny_lwm_data / "text.jsonl")}], seq_len=256, overlong="split",
                 text_only=True)
  (batch,) = _batches(text, vocab, 1)
  assert batch["inputs"].max() < vocab.text_size and not batch["targets_vision_mask"].any()
  path = tmp_path / "mixed.jsonl"
  path.write_text((tiny_lwm_data / "text.jsonl").read_text().splitlines()[0] + "\n" +
                  (tiny_lwm_data / "image.jsonl").read_text().splitlines()[0] + "\n")
  mixed = _config([{"name": "mixed", "files": str(path)}], seq_len=512, overlong="split", text_only=True,
                  shuffle=False, num_epochs=1)
  with pytest.raises(LWMFormatError, match=rf"{path}:2: vision tokens in a text-only model"):
    list(build_dataset(mixed, vocab))


def test_a_source_fields_spec_replaces_every_lines_own(tiny_lwm_data, vocab):
  """`fields: "[vision],caption"` on caption lines (whose own spec is a list of both orders): every example is
  the image without loss, then the caption with loss and EOS."""
  path = tiny_lwm_data / "image.jsonl"
  lines = [json.loads(line) for line in path.read_text().splitlines()[:8]]
  config = _config([{"name": "caption", "files": str(path), "fields": "[vision],caption"}], seq_len=512,
                   shuffle=False, num_epochs=1)
  examples = list(source_stream(config, config.sources[0], vocab, shard_index=0, shard_count=1))[:8]
  assert len(examples) == 8
  for line, ex in zip(lines, examples):  # next-token features: target t predicts token t + 1
    targets, weights, vision = ex["targets"], ex["targets_weights"], ex["targets_vision_mask"]
    caption = vocab.encode_text(line["caption"]) + [vocab.eos_id]
    image = len(targets) - len(caption)  # the image with its markers, after BOS
    assert ex["inputs"][0] == vocab.bos_id and targets[-len(caption):].tolist() == caption
    assert vision[:image].sum() == len(line["vision"]) + 1 and not vision[image:].any()  # codes and <eov>
    assert not weights[:image].any() and (weights[image:] > 0).all()


@pytest.mark.parametrize("source, message", [
    ({"fields": "[vision],caption", "fields_index": 1}, "both choose the spec"),
    ({"fields": "[vision,caption"}, "malformed item"),
    ({"default_fields": "<|pad|>,text"}, "unknown special item"),
])
def test_a_bad_source_spec_fails_at_start_up(tiny_lwm_data, source, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    _config([{"name": "image", "files": str(tiny_lwm_data / "image.jsonl"), **source}])


def test_overlong_error_in_the_pipeline_names_the_line(tiny_lwm_data, vocab):
  config = _config([{"name": "video", "files": str(tiny_lwm_data / "video.jsonl")}], seq_len=256, shuffle=False)
  with pytest.raises(ValueError, match=r"video.jsonl:1: example of \d+ tokens is longer than a row"):
    next(iter(build_dataset(config, vocab)))


@pytest.mark.parametrize("file_format", ["arrayrecord", "parquet"])
def test_pretokenized_files_give_the_jsonl_batches(tmp_path, tiny_lwm_data, vocab, file_format):
  out = pretokenize_jsonl(tiny_lwm_data / "image.jsonl", tmp_path / f"image.{file_format}", vocab,
                          file_format=file_format)
  jsonl = _batches(_config([{"name": "i", "files": str(tiny_lwm_data / "image.jsonl")}], seq_len=320), vocab, 4)
  pre = _batches(_config([{"name": "i", "files": str(out), "format": file_format}], seq_len=320), vocab, 4)
  for x, y in zip(jsonl, pre):
    for key in ROW_KEYS:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)
