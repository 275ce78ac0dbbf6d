"""Streaming sharded safetensors writer and reader, checked against the safetensors library."""

import json
import re

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conversion import atomic
from damage import named_errors
from conversion.safetensors_io import INDEX_FILE, Entry, ShardedReader, ShardedWriter, plan_shards
from conversion.spec import ConversionError

RNG = np.random.default_rng(1)


def _tensors():
  return {
      "a": RNG.standard_normal((4, 6)).astype(np.float32),
      "b": RNG.standard_normal((3,)).astype(ml_dtypes.bfloat16),
      "c": RNG.standard_normal((5, 2)).astype(np.float16),
      "d": RNG.standard_normal((2, 2, 2)).astype(np.float32),
  }


def _write(out, tensors, max_bytes):
  writer = ShardedWriter(out, [Entry(k, v.shape, v.dtype) for k, v in tensors.items()], max_bytes)
  for k, v in tensors.items():
    writer.write(k, v)
  writer.close()


def test_shards_and_index_read_back_with_the_safetensors_library(tmp_path):
  tensors = _tensors()
  _write(tmp_path, tensors, max_bytes=30)  # a (96 B) | b, c (26 B) | d (32 B)
  index = json.loads((tmp_path / INDEX_FILE).read_text())
  files = sorted(set(index["weight_map"].values()))
  assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
  assert index["metadata"]["total_size"] == sum(v.nbytes for v in tensors.values())
  assert index["metadata"]["total_parameters"] == sum(v.size for v in tensors.values())
  loaded = {}
  for file in files:
    loaded.update(load_file(tmp_path / file))
  assert set(loaded) == set(tensors)
  for k, v in tensors.items():
    assert loaded[k].dtype == v.dtype
    np.testing.assert_array_equal(loaded[k], v)
  reader = ShardedReader(tmp_path)
  assert reader.shapes() == {k: v.shape for k, v in tensors.items()}
  np.testing.assert_array_equal(reader.get("b"), tensors["b"])


def test_one_shard_is_model_safetensors_with_format_metadata(tmp_path):
  _write(tmp_path, _tensors(), max_bytes=10**9)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
  from safetensors import safe_open
  with safe_open(str(tmp_path / "model.safetensors"), "np") as f:
    assert f.metadata() == {"format": "pt"}


def test_reader_opens_a_library_written_file(tmp_path):
  save_file({"x": np.arange(6, dtype=np.float32).reshape(2, 3)}, tmp_path / "model.safetensors")
  np.testing.assert_array_equal(ShardedReader(tmp_path).get("x"), np.arange(6).reshape(2, 3))


def test_plan_gives_an_oversized_tensor_its_own_shard():
  e = [Entry("a", (10,), np.dtype(np.float32)), Entry("b", (100,), np.dtype(np.float32)), Entry("c", (1,), np.dtype(np.float32))]
  assert [[x.name for x in s] for s in plan_shards(e, 64)] == [["a"], ["b"], ["c"]]


def test_writer_refuses_wrong_order_shape_dtype_and_early_close(tmp_path):
  tensors = _tensors()
  writer = ShardedWriter(tmp_path, [Entry(k, v.shape, v.dtype) for k, v in tensors.items()])
  with pytest.raises(ConversionError, match="out of order"):
    writer.write("b", tensors["b"])
  with pytest.raises(ConversionError, match="planned"):
    writer.write("a", tensors["a"].astype(np.float16))
  writer.write("a", tensors["a"])
  with pytest.raises(ConversionError, match="only 1 of 4"):
    writer.close()


def test_reader_errors_name_the_problem(tmp_path):
  with pytest.raises(ConversionError, match="no model.safetensors.index.json or model.safetensors"):
    ShardedReader(tmp_path)
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "model-1.safetensors"}}))
  with pytest.raises(ConversionError, match="shard model-1.safetensors named in"):
    ShardedReader(tmp_path)


def test_atomic_output_leaves_nothing_on_failure_and_refuses_existing(tmp_path):
  out = tmp_path / "out"
  with pytest.raises(RuntimeError):
    with atomic.output_dir(out) as tmp:
      (tmp / "half.bin").write_bytes(b"x")
      raise RuntimeError("interrupted")
  assert list(tmp_path.iterdir()) == []
  with atomic.output_dir(out) as tmp:
    (tmp / "done").write_text("ok")
  assert (out / "done").read_text() == "ok" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
  with pytest.raises(ConversionError, match="already exists"):
    with atomic.output_dir(out):
      pass



@pytest.mark.parametrize("cut", [-100, 50, 4, 0])
def test_truncated_shard_is_named(tmp_path, cut):
  save_file({"a": np.ones((64, 64), np.float32), "b": np.ones(3, np.float32)}, tmp_path / "model.safetensors")
  data = (tmp_path / "model.safetensors").read_bytes()
  (tmp_path / "model.safetensors").write_bytes(data[:cut])
  with pytest.raises(ConversionError, match=rf"^{re.escape(str(tmp_path / 'model.safetensors'))}: not a readable safetensors file"):
    ShardedReader(tmp_path)


@pytest.mark.parametrize("index, message", [
    ("{not json", "not a weights index with a weight_map"),
    (json.dumps({"metadata": {}}), "not a weights index with a weight_map"),
    (json.dumps({"weight_map": {"x": "../model.safetensors"}}), r"weight_map puts 'x' in '../model.safetensors', not a file name"),
])
def test_bad_index_is_named(tmp_path, index, message):
  (tmp_path / INDEX_FILE).write_text(index)
  with pytest.raises(ConversionError, match=f"^{re.escape(str(tmp_path / INDEX_FILE))}: {message}"):
    ShardedReader(tmp_path)


def test_damaged_files_fail_with_conversion_errors_only(tmp_path):
  save_file({"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(5, np.float32)}, tmp_path / "src")
  source = (tmp_path / "src").read_bytes()
  assert named_errors(source, tmp_path / "model.safetensors", ShardedReader, ConversionError) > 300
