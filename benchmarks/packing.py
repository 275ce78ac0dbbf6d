"""Throughput of the LWM Grain loader on one core, against what the tiny model consumes in training.

    python benchmarks/packing.py [--seconds 10] [--seq-len 2048] [--skip-train]

Data: the synthetic corpus (`data_loaders.synthetic_corpus`) with LWM's real vocabulary (LLaMA-2
SentencePiece from the maxtext wheel + 8192 VQGAN codes), generated into a temporary directory.
Measured, single process pinned to one core, no Grain workers, one read thread:

  jsonl text     LWM JSONL text documents -> tokenize -> split -> pack -> batch
  jsonl mixed    text 16% + image-caption 50% + video 34% (both modality orders) -> ... -> batch
  arrayrecord    the same mixture pre-tokenized (data_loaders.pretokenized): decode -> pack -> batch
  grain plain    peer: Grain's FirstFitPackIterDataset on the same pre-tokenized examples with only
                 inputs/targets (no weights, no vision mask, no overlong policy): MaxText's packing

Figures are target tokens (non-padding) per second after a warm-up, and the fill (non-padding
share of the rows). The ratio to training is loader tokens/s over the tokens/s that
`lwm-train tiny_cpu_lwm_data.yml` consumes on this machine (MaxText's `perf/per_device_tokens_per_sec`,
median over steps 3..; measured in the same run unless --skip-train).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grain
import numpy as np

from data_loaders.lwm_format import FormatOptions
from data_loaders.sources import LWMJsonlReader
from data_loaders.packing import example_features
from data_loaders.pipeline import LoaderConfig, build_dataset
from data_loaders.pretokenized import write_arrayrecord
from data_loaders.synthetic_corpus import CorpusSpec, generate_corpus
from data_loaders.vocab import MultimodalVocab

REPO = Path(__file__).resolve().parents[1]


def _measure(batches, seconds: float, warmup: int = 3) -> tuple[float, float]:
  """(target tokens per second, fill) over `seconds` after `warmup` batches."""
  it = iter(batches)
  for _ in range(warmup):
    next(it)
  tokens = slots = 0
  start = time.perf_counter()
  while time.perf_counter() - start < seconds:
    batch = next(it)
    real = int(np.sum(batch["targets_segmentation"] > 0)) if "targets_segmentation" in batch else int(
        np.sum(batch["targets_segment_ids"] > 0))
    tokens += real
    slots += batch["targets"].size
  return tokens / (time.perf_counter() - start), tokens / slots


def _config(sources, seq_len):
  return LoaderConfig(sources=sources, seq_len=seq_len, batch_size=8, overlong="split", read_threads=1,
                      read_buffer_size=64, worker_count=0, seed=0)


def _grain_plain(examples, seq_len):
  """MaxText's packing: Grain first fit over inputs/targets, batch_size bins."""
  features = [{k: f[k] for k in ("inputs", "targets")} for f in examples]
  ds = grain.MapDataset.source(features).shuffle(seed=0).repeat(None).to_iter_dataset(
      grain.ReadOptions(num_threads=1, prefetch_buffer_size=64))
  ds = grain.experimental.FirstFitPackIterDataset(ds, length_struct={"inputs": seq_len, "targets": seq_len},
                                                  num_packing_bins=8)
  return ds.batch(8)


def train_tokens_per_second(workdir: Path) -> float:
  """Median tokens/s/device of `lwm-train tiny_cpu_lwm_data.yml` (steps 3..) on this machine."""
  from data_loaders import tiny_data  # pylint: disable=import-outside-toplevel
  tiny_data.generate(workdir / "tiny_lwm_data")
  metrics = workdir / "metrics.jsonl"
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  subprocess.run([sys.executable, "-m", "lwm_plugin.train", "tiny_cpu_lwm_data.yml", "steps=15",
                  f"base_output_directory={workdir}/out", "run_name=bench", f"metrics_file={metrics}"],
                 cwd=workdir, env=env, check=True, capture_output=True)
  rows = [json.loads(line) for line in metrics.read_text().splitlines()]
  return statistics.median(r["perf/per_device_tokens_per_sec"] for r in rows[3:])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--seconds", type=float, default=10.0)
  parser.add_argument("--seq-len", type=int, default=2048)
  parser.add_argument("--skip-train", action="store_true")
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    work = Path(tmp)
    train_tps = None if args.skip_train else train_tokens_per_second(work)  # before pinning: MaxText's own setup
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    files = generate_corpus(work / "corpus", CorpusSpec(seed=0, text_documents=300, images=500, videos=150,
                                                        video_frames=4))
    vocab = MultimodalVocab.default()
    mixed = [{"name": "text", "files": str(files["text"]), "weight": 0.16},
             {"name": "image", "files": str(files["image"]), "weight": 0.5},
             {"name": "video", "files": str(files["video"]), "weight": 0.34}]
    examples = [example_features(e) for name in ("text", "image", "video")
                for e, _ in LWMJsonlReader(files[name], vocab, options=FormatOptions())]
    examples = [f for f in examples if len(f["inputs"]) <= args.seq_len]
    pre = write_arrayrecord(work / "mixed.arrayrecord",
                            ({"tokens": np.r_[f["inputs"], f["targets"][-1:]],
                              "loss_mask": np.r_[0, (f["targets_weights"] > 0).astype(np.int32)]} for f in examples))
    cases = {
        "jsonl text": build_dataset(_config(mixed[:1], args.seq_len), vocab),
        "jsonl mixed": build_dataset(_config(mixed, args.seq_len), vocab),
        "arrayrecord mixed": build_dataset(_config([{"name": "pre", "files": str(pre), "format": "arrayrecord"}],
                                                   args.seq_len), vocab),
        "grain plain (peer)": _grain_plain(examples, args.seq_len),
    }
    results = {name: _measure(ds, args.seconds) for name, ds in cases.items()}
  print(f"seq_len {args.seq_len}, batch 8, one core ({os.cpu_count()} on the machine), {args.seconds:g} s per case")
  if train_tps is not None:
    print(f"tiny model training consumes {train_tps:,.0f} tokens/s (lwm-train tiny_cpu_lwm_data.yml, CPU)")
  peer = results["grain plain (peer)"][0]
  for name, (tps, fill) in results.items():
    ratio = f", {tps / train_tps:6.1f}x training" if train_tps else ""
    print(f"  {name:20s} {tps:12,.0f} target tokens/s, fill {fill:5.1%}, {tps / peer:5.2f}x grain plain{ratio}")


if __name__ == "__main__":
  main()
