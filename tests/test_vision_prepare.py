"""`lwm-vision prepare` on Beam's DirectRunner: a mixed manifest with broken inputs -> shards the loader reads.

The VQGAN is a stand-in here (code = mean grey level of a 16x16 patch // 4: 64 codes), so the expected
codes of the solid-grey inputs are known by hand; the real VQGAN runs in the end-to-end test.
"""

import io
import json
import shutil
import subprocess
import sys
import tarfile

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import REPO, read_metrics, run_lwm_train, subprocess_env
from data_loaders.pipeline import LoaderConfig
from data_loaders.pipeline import source_stream
from helpers.vqgan_files import TINY_GRID, write_random_vqgan
from lwm_plugin.vision import manifest, prepare

IN_MEMORY = ["--direct_running_mode=in_memory"]


class StandInCodec:
  def encode(self, pixels_BxHxWx3):
    u8 = (pixels_BxHxWx3 + 1) * 127.5
    return (u8.reshape(-1, 16, 16, 16, 16, 3).mean(axis=(2, 4, 5)) // 4).astype(np.int32)


class Const:
  def __init__(self, value):
    self.value = value

  def __call__(self):
    return self.value


def _grey(b):
  """A grey level whose stand-in code is b (the middle of its bin: resampling cannot move it out)."""
  return 4 * b + 2


def _image(path, b, size=(300, 260), fmt=None):
  Image.fromarray(np.full((*size, 3), _grey(b), np.uint8)).save(path, format=fmt)
  return path


def _video(path, codes):
  with av.open(str(path), "w") as c:
    s = c.add_stream("libx264", rate=4)
    s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
    for b in codes:
      c.mux(s.encode(av.VideoFrame.from_ndarray(np.full((64, 96, 3), _grey(b), np.uint8), format="rgb24")))
    c.mux(s.encode(None))
  return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  """Manifests of every kind; returns (manifest paths, {caption: expected codes per frame}, expected rejects)."""
  d = tmp_path_factory.mktemp("inputs")
  (d / "media").mkdir()
  expected = {}
  for b in range(5):
    _image(d / "media" / f"img{b}.png", 10 + b)
    expected[f"image {b}"] = [10 + b]
  _video(d / "media" / "clip.mp4", [20, 30, 40])
  expected["a video"] = [20, 30, 40]
  (d / "media" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
  rows = [{"image": f"media/img{b}.png", "caption": f"image {b}"} for b in range(3)]
  rows += [{"video": "media/clip.mp4", "caption": "a video"}, {"image": "media/broken.jpg", "caption": "broken"},
           {"image": "media/missing.png", "caption": "missing"}, {"caption": "no media"}]
  (d / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "{oops\n")
  (d / "pairs.csv").write_text(f"image,caption\n{d}/media/img3.png,image 3\n")
  pq.write_table(pa.table({"image": [f"{d}/media/img4.png"], "video": [None], "caption": ["image 4"]}),
                 d / "pairs.parquet")
  with tarfile.open(d / "shard-0000.tar", "w") as tar:
    def add(name, data):
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
    add("a/000.webp", (_image(d / "w.webp", 50, fmt="WEBP")).read_bytes())
    add("a/000.txt", b"a webp\n")
    add("a/001.png", (_image(d / "x.png", 51)).read_bytes())                   # no caption
    add("a/002.jpg", b"\xff\xd8 broken")
    add("a/002.txt", b"broken jpeg")
    add("a/003.mp4", _video(d / "v.mp4", [60, 61]).read_bytes())
    add("a/003.txt", b"a tar video")
  expected.update({"a webp": [50], "a tar video": [60, 61]})
  rejects = {(0, 4): "corrupt", (0, 5): "missing", (0, 6): "manifest", (0, 7): "manifest",
             (3, 1): "manifest", (3, 2): "corrupt"}
  return [str(d / n) for n in ("pairs.jsonl", "pairs.csv", "pairs.parquet", "shard-0000.tar")], expected, rejects


def _options(out, **kwargs):
  return prepare.PrepareOptions(output=str(out), codec_factory=StandInCodec, shard_size=3, batch_size=4, **kwargs)


def _loader_examples(out, pattern, fmt, vocab):
  """The loader's per-example features (inputs = tokens[:-1], targets = tokens[1:], weights), file order."""
  config = LoaderConfig(sources=[{"name": "v", "files": f"{out}/{pattern}", "format": fmt}], seq_len=4096,
                        batch_size=1, shuffle=False, num_epochs=1)
  return list(source_stream(config, config.sources[0], vocab, shard_index=0, shard_count=1))


def _tokens(features):
  return np.r_[features["inputs"], features["targets"][-1:]]


@pytest.fixture(scope="module")
def prepared(inputs, tmp_path_factory):
  manifests, _, _ = inputs
  out = tmp_path_factory.mktemp("out") / "prepared"
  lines = []
  result = prepare.prepare(manifests, _options(out), IN_MEMORY, log=lines.append)
  return out, result, lines


def test_every_input_is_a_record_or_a_listed_reject(inputs, prepared):
  _, expected, rejects = inputs
  out, result, lines = prepared
  assert lines[0].startswith("14 inputs to prepare (0 shards already complete)")
  assert lines[-1].startswith("14/14 inputs read and encoded, ") and not list((out / "_progress").iterdir())
  assert (result.records, result.rejects, result.shards_skipped) == (len(expected), len(rejects), 0)
  listed = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
  assert {(r["manifest"], r["row"]): r["reason"] for r in listed} == rejects
  assert all(r["detail"] and r["source"] for r in listed)
  # Shards by (manifest, row // 3): rows 0-2 and 3-5 of the JSONL (row 6-7: all rejects, no data file), one each.
  assert sorted(p.name for p in out.glob("part-*")) == ["part-00000-00000.jsonl", "part-00000-00001.jsonl",
                                                         "part-00001-00000.jsonl", "part-00002-00000.jsonl",
                                                         "part-00003-00000.jsonl", "part-00003-00001.jsonl"]
  assert len(list((out / "_shards").glob("*.json"))) == 7 and not list(out.glob(".*tmp"))


def test_the_loader_reads_the_shards_unchanged(inputs, prepared, corpus_vocab):
  _, expected, _ = inputs
  out, _, _ = prepared
  records = [json.loads(line) for p in sorted(out.glob("part-*.jsonl")) for line in p.read_text().splitlines()]
  assert all(r["fields"] == ["[caption],vision", "vision,caption"] for r in records)
  examples = _loader_examples(out, "part-*.jsonl", "jsonl", corpus_vocab)
  assert len(examples) == len(expected)
  seen = {}
  for example in examples:
    parts = corpus_vocab.decode(_tokens(example))
    (codes,) = [p for p in parts if not isinstance(p, str)]
    (text,) = [p for p in parts if isinstance(p, str)]
    assert np.all(codes == codes[:, :1]), "solid frames give one code per frame"
    seen[text.strip()] = codes[:, 0].tolist()
  assert seen == expected
  orders = {tuple(isinstance(p, str) for p in corpus_vocab.decode(_tokens(e))) for e in examples}
  assert orders == {(True, False), (False, True)}  # LWM's modality swap: both orders occur


def test_arrayrecord_shards_hold_what_the_loader_makes_of_the_jsonl(inputs, prepared, corpus_vocab, tmp_path):
  manifests, _, _ = inputs
  jsonl_out, _, _ = prepared
  out = tmp_path / "ar"
  prepare.prepare(manifests, _options(out, file_format="arrayrecord", vocab_factory=Const(corpus_vocab)), IN_MEMORY,
                  log=lambda _: None)
  pre = _loader_examples(out, "part-*.arrayrecord", "arrayrecord", corpus_vocab)
  ref = _loader_examples(jsonl_out, "part-*.jsonl", "jsonl", corpus_vocab)
  assert len(pre) == len(ref) == 8
  for a, b in zip(pre, ref):
    assert sorted(a) == sorted(b)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_a_rerun_skips_complete_shards_and_redoes_the_rest(inputs, prepared, tmp_path):
  manifests, _, _ = inputs
  out = tmp_path / "again"
  prepare.prepare(manifests, _options(out), IN_MEMORY, log=lambda _: None)
  before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.glob("part-*")}
  rejects = (out / "rejects.jsonl").read_text()
  (out / "part-00000-00001.jsonl").unlink()        # an interrupted run: a shard without its done-record
  (out / "_shards" / "part-00000-00001.json").unlink()
  (out / "_shards" / "part-00003-00000.json").unlink()
  lines = []
  result = prepare.prepare(manifests, _options(out), IN_MEMORY, log=lines.append)
  assert (result.shards_written, result.shards_skipped) == (2, 5)
  assert lines[0].startswith("6 inputs to prepare (5 shards already complete)")  # rows 3-5 and tar rows 0-2
  after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.glob("part-*")}
  assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}
  changed = sorted(k for k in after if after[k][1] != before[k][1])
  assert changed == ["part-00000-00001.jsonl", "part-00003-00000.jsonl"]
  assert (out / "rejects.jsonl").read_text() == rejects


def test_manifest_errors_and_option_checks(tmp_path):
  (tmp_path / "bad.csv").write_text("path,text\nx.png,hi\n")
  with pytest.raises(manifest.ManifestError, match="CSV header"):
    prepare.prepare([str(tmp_path / "bad.csv")], _options(tmp_path / "o"), IN_MEMORY, log=lambda _: None)
  (tmp_path / "m.txt").write_text("")
  with pytest.raises(manifest.ManifestError, match="unknown suffix"):
    prepare.prepare([str(tmp_path / "m.txt")], _options(tmp_path / "o"), IN_MEMORY, log=lambda _: None)
  with pytest.raises(manifest.ManifestError, match="matches no file"):
    prepare.prepare([str(tmp_path / "none-*.jsonl")], _options(tmp_path / "o"), IN_MEMORY, log=lambda _: None)
  assert not (tmp_path / "o").exists()
  with pytest.raises(ValueError, match="vocab_factory"):
    _options(tmp_path, file_format="arrayrecord")
  with pytest.raises(ValueError, match="malformed item"):
    _options(tmp_path, fields=("[caption,vision",))


@pytest.mark.slow  # a multi-process Beam run with the real VQGAN, then MaxText compiles a train step: ~2-3 min
def test_generated_images_and_a_video_train_one_tiny_vision_step(tmp_path, tiny_lwm_data):
  """Item 5 of the issue: media -> `lwm-vision prepare` (CLI, default DirectRunner, a small random VQGAN
  with the tiny vocabulary's 64 codes) -> the Grain loader -> one `tiny_vision_1k.yml` training step."""
  write_random_vqgan(tmp_path / "vq", "diffusers", TINY_GRID, seed=1)
  rng = np.random.default_rng(0)
  rows = []
  for k in range(6):
    Image.fromarray(rng.integers(0, 256, (200 + 20 * k, 300, 3), np.uint8)).save(tmp_path / f"img{k}.png")
    rows.append({"image": f"img{k}.png", "caption": f"a red circle {k}"})
  _video(tmp_path / "clip.mp4", [5, 25, 45, 60])
  rows.append({"video": "clip.mp4", "caption": "a blue square moving"})
  (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  proc = subprocess.run([sys.executable, "-m", "lwm_plugin.vision.vision_cli", "prepare", "--vqgan", str(tmp_path / "vq"),
                         "--manifest", str(tmp_path / "m.jsonl"), "--output", str(tmp_path / "laion"),
                         "--max-frames", "3", "--shard-size", "4", "--platform", "cpu"],
                        env=subprocess_env(), cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "7 records in 2 new shards (0 complete before), 0 rejects" in proc.stderr
  records = [json.loads(line) for p in sorted((tmp_path / "laion").glob("part-*.jsonl"))
             for line in p.read_text().splitlines()]
  assert [len(r["vision"]) // 256 for r in records] == [1] * 6 + [3]
  assert len({tuple(r["vision"]) for r in records}) == 7 and max(max(r["vision"]) for r in records) < 64
  data = tmp_path / "data"
  shutil.copytree(tiny_lwm_data, data)
  sources = (f"lwm_data_sources=[{{name: image, files: '{tmp_path}/laion/part-*.jsonl', weight: 0.84, group: vision}}, "
             f"{{name: text, files: '{data}/text.jsonl', weight: 0.16, group: text}}]")
  train = run_lwm_train(["tiny_vision_1k.yml", f"lwm_data_dir={data}", f"base_output_directory={tmp_path / 'out'}",
                         "load_parameters_path=''", "enable_checkpointing=false", "steps=1", sources,
                         f"metrics_file={tmp_path}/metrics.jsonl"], devices=4, cwd=tmp_path)
  assert train.returncode == 0, train.stderr[-4000:]
  (row,) = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "learning/loss" in r]
  assert row["lwm/vision_examples"] >= 1 and row["lwm/vision_tokens"] > 0
  assert all(np.isfinite(row[k]) for k in ("learning/loss", "lwm/vision_loss", "lwm/text_loss"))
