"""lwm_plugin/beam_shards.py: Beam options, atomic publishing, done-records, merged rejects, the progress line."""

import json
import os

from lwm_plugin import beam_shards as bs


def test_beam_options_default_to_the_multiprocess_direct_runner():
  options = bs.beam_options([]).get_all_options()
  assert options["runner"] == "DirectRunner" and options["direct_running_mode"] == "multi_processing"
  assert options["direct_num_workers"] == (os.cpu_count() or 1)
  passed = bs.beam_options(["--runner", "DataflowRunner", "--project", "p", "--region", "r"]).get_all_options()
  assert (passed["runner"], passed["project"], passed["region"], passed["direct_running_mode"]) == (
      "DataflowRunner", "p", "r", "in_memory")
  assert bs.beam_options(["--direct_num_workers=1"]).get_all_options()["direct_running_mode"] == "in_memory"


def test_done_records_and_merged_rejects(tmp_path):
  out = str(tmp_path)
  assert bs.completed_shards(out) == set()
  bs.publish_text(bs.done_path(out, "part-1"), json.dumps({"rejects": [{"k": 3}, {"k": 1}]}))
  bs.publish_text(bs.done_path(out, "part-0"), json.dumps({"rejects": [{"k": 2}]}))
  (tmp_path / bs.DONE_DIR / "notes.json").write_text("{}")  # not a shard's done-record
  assert bs.completed_shards(out) == {"part-0", "part-1"}
  assert bs.merge_rejects(out, key=lambda r: r["k"]) == 3
  assert [json.loads(x)["k"] for x in (tmp_path / bs.REJECTS).read_text().splitlines()] == [1, 2, 3]
  assert sorted(p.name for p in tmp_path.iterdir()) == [bs.DONE_DIR, bs.REJECTS]  # no temporary left


def test_progress_sums_the_workers_marks(tmp_path):
  out = str(tmp_path)
  progress = bs.Progress(out, 10, "books done", log=lambda _: None)
  bs.mark_progress(out, 3)
  bs.mark_progress(out, 4)
  line = progress.line()
  assert line.startswith("7/10 books done, ") and "/s, ETA " in line and "unknown" not in line
  progress.clear()
  assert progress.line().startswith("0/10 books done, ") and progress.line().endswith("ETA unknown")
