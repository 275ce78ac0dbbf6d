"""Pre-tokenized example files (ArrayRecord, Parquet): writers, and a JSONL converter.

Tokenizing LWM JSONL (SentencePiece on text, parsing long lists of VQGAN codes) costs more than
packing; for large corpora tokenize once and train from pre-tokenized files. The loader reads both
formats (`format: arrayrecord` / `format: parquet` in `lwm_data_sources`):

* ArrayRecord: one record per example, a msgpack map `{"tokens": int32 little-endian bytes,
  "loss_mask": uint8 bytes}`. True random access (global shuffle is cheap).
* Parquet: columns `tokens` (list<int32>) and `loss_mask` (list<uint8>), one row per example.

`is_vision` is not stored: the vocabulary derives it from the ids. Every file is written
atomically (a temporary file in the same directory, then a rename).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

import msgpack
import numpy as np

from data_loaders.atomic_file import atomic_path
from data_loaders.lwm_format import FormatOptions
from data_loaders.sources import LWMJsonlReader
from data_loaders.vocab import MultimodalVocab


def _arrays(example: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  tokens = np.asarray(example["tokens"])
  loss = np.asarray(example["loss_mask"])
  if tokens.ndim != 1 or loss.shape != tokens.shape:
    raise ValueError(f"tokens {tokens.shape} and loss_mask {loss.shape} must be 1-D and of one length")
  if tokens.size and (tokens.min() < 0 or tokens.max() > np.iinfo(np.int32).max):
    raise ValueError("token ids must fit in int32")
  return tokens.astype("<i4"), loss.astype(np.uint8)


def encode_record(example: Mapping[str, np.ndarray]) -> bytes:
  """One example -> the ArrayRecord payload (msgpack of raw little-endian arrays)."""
  tokens, loss = _arrays(example)
  return msgpack.packb({"tokens": tokens.tobytes(), "loss_mask": loss.tobytes()})


def write_arrayrecord(path: str | os.PathLike, examples: Iterable[Mapping[str, np.ndarray]]) -> Path:
  from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
  with atomic_path(path) as tmp:
    writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
    try:
      for example in examples:
        writer.write(encode_record(example))
    finally:
      writer.close()
  return Path(path)


def write_parquet(path: str | os.PathLike, examples: Iterable[Mapping[str, np.ndarray]], *,
                  row_group_size: int = 1024) -> Path:
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  pairs = [_arrays(e) for e in examples]
  table = pa.table({"tokens": pa.array([t for t, _ in pairs], pa.list_(pa.int32())),
                    "loss_mask": pa.array([m for _, m in pairs], pa.list_(pa.uint8()))})
  with atomic_path(path) as tmp:
    pq.write_table(table, tmp, row_group_size=row_group_size)
  return Path(path)


def pretokenize_jsonl(jsonl_path: str | os.PathLike, out_path: str | os.PathLike, vocab: MultimodalVocab, *,
                      file_format: str = "arrayrecord", options: FormatOptions = FormatOptions(),
                      skip_invalid: bool = False) -> Path:
  """LWM JSONL -> pre-tokenized file. The spec choice per line is the one the JSONL loader makes."""
  writers = {"arrayrecord": write_arrayrecord, "parquet": write_parquet}
  if file_format not in writers:
    raise ValueError(f"file_format={file_format!r}; expected one of {sorted(writers)}")
  reader = LWMJsonlReader(jsonl_path, vocab, options=options, skip_invalid=skip_invalid)
  return writers[file_format](out_path, (example for example, _ in reader))
