"""`lwm-make-qa` (lwm_plugin/longqa_gen/make_qa_cli.py, qa_run.py): usage errors, the endpoint path through the
command line against a loopback server, and (slow) the end-to-end test of issue 18 item 4.

End to end: the demo's tiny text-chat model shapes with the tiny corpus's tokenizer (a random model:
no training here) generate through the project's KV-cache decoder, which checks the plumbing (prompts
reach the model, every chunk's outcome is recorded, retries and rejects); parseable QA comes from a
scripted completions endpoint (tests/helpers/scripted_qa.py), whose output is read back by the loader
and trains one `tiny_text_chat_4k.yml` step. Then the same with a model trained on the corpus's
QA-writing chats as the generator (its own QA pairs, read back and trained on). The demo's trained
chat model does this in `make demo` (lwm_plugin/demo/qa_data.py, figures in BENCHMARKS.md).
"""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from helpers.completions_server import CompletionsServer, serve_texts
from helpers.random_llama import write_random_llama
from helpers.scripted_qa import scripted_completion

from conftest import REPO, read_metrics, run_lwm_train, subprocess_env
from data_loaders.pipeline import LoaderConfig
from data_loaders import synthetic_corpus as sc
from data_loaders.batch import WEIGHTS
from data_loaders.pipeline import source_stream
from data_loaders.vocab import MultimodalVocab
from lwm_plugin.beam_cli import beam_args
from lwm_plugin.longqa_gen import make_qa_cli

IN_MEMORY = "--direct_running_mode=in_memory"


def _books(path, sizes, seed=0):
  rng = np.random.default_rng(seed)
  lines = [json.dumps({"id": f"b{k}", "text": " ".join(sc.filler_sentences(rng, n))}) for k, n in enumerate(sizes)]
  path.write_text("\n".join(lines) + "\n")
  return path


def _scripted_server():
  return CompletionsServer(serve_texts(lambda texts, seed, _: [scripted_completion(t, seed) for t in texts]))


@pytest.fixture(name="work", scope="module")
def fixture_work(tiny_lwm_data, tmp_path_factory):
  d = tmp_path_factory.mktemp("make_qa")
  _books(d / "books.jsonl", [600, 30, 260])
  return d, tiny_lwm_data


def _usage(capsys, argv):
  rc = make_qa_cli.main(argv)
  err = capsys.readouterr().err
  assert rc == 2, err
  return err.strip().splitlines()[-1]


def test_usage_errors(work, capsys, tmp_path):
  d, data = work
  base = ["--books", str(d / "books.jsonl"), "--output", str(tmp_path / "o"), "--lengths", "1024"]
  tok = ["--tokenizer", str(data / "tokenizer.model")]
  cases = [
      (base, "give the generator as --generator-config CFG.yml --generator CKPT, or as --endpoint URL"),
      (base + ["--endpoint", "http://h", "--generator", "x"], "or as --endpoint URL"),
      (base + ["--generator", str(d)], "--generator needs --generator-config"),
      (base + ["--endpoint", "http://h"], "--endpoint needs --tokenizer"),
      (base + ["--endpoint", "http://h", "--set", "a=1"] + tok, "--set goes with --generator, not --endpoint"),
      (base + ["--endpoint", "h:80"] + tok, "expected an http:// or https:// URL"),
      (base + ["--endpoint", "http://h", "--lengths", "1k"] + tok, "--lengths '1k': expected comma-separated"),
      (base + ["--endpoint", "http://h", "--retries", "-1"] + tok, "--retries -1: expected >= 0"),
      (base + ["--endpoint", "http://h", "--lenghts", "5"] + tok, "unrecognized option --lenghts"),
      (base + ["--endpoint", "http://h", "--tokenizer", str(d / "none")], "no such file"),
      (["--books", str(d / "none.jsonl")] + base[2:] + ["--endpoint", "http://h"] + tok, "--books"),
      (base + ["--generator-config", "nope.yml", "--generator", str(d)], "nope.yml"),
      (base + ["--generator-config", "tiny_text_chat_4k.yml", "--generator", str(d), "--set", "no_such_key=1"],
       "no_such_key"),
  ]
  (d / "bad.yml").write_text("steps: 2\nhardware: [cpu\n")
  cases.append((base + ["--generator-config", str(d / "bad.yml"), "--generator", str(d)],
                f"{d}/bad.yml:2: not valid YAML: "))
  (d / "bad_template.txt").write_text("no placeholder")
  cases.append((base + ["--endpoint", "http://h", "--template", str(d / "bad_template.txt")] + tok, "exactly once"))
  for argv, message in cases:
    line = _usage(capsys, argv)
    assert line.startswith("lwm-make-qa: error: ") and message in line, (argv, line)
  assert not (tmp_path / "o").exists()


def test_the_endpoint_path_writes_shards_and_a_broken_server_is_exit_1(work, capsys, tmp_path):
  d, data = work
  argv = ["--books", str(d / "books.jsonl"), "--tokenizer", str(data / "tokenizer.model"), "--lengths", "1024,2048",
          "--chunk-tokens", "100", "--retries", "4", "--output", str(tmp_path / "o"), IN_MEMORY]
  with _scripted_server() as server:
    assert make_qa_cli.main(argv + ["--endpoint", server.url]) == 0, capsys.readouterr().err
  err = capsys.readouterr().err
  assert "lwm-make-qa: 3 books to do in 1 shards" in err and "3/3 books done" in err
  assert (tmp_path / "o" / "longqa-1k" / "part-00000-of-00001.jsonl").is_file()
  assert (tmp_path / "o" / "longqa-2k" / "part-00000-of-00001.jsonl").is_file()
  settings = json.loads((tmp_path / "o" / "make_qa.json").read_text())
  assert settings["generator"].startswith(f"endpoint {server.url}/v1/completions, max_new_tokens 256")
  with CompletionsServer(lambda _: (503, b"overloaded")) as broken:
    rc = make_qa_cli.main(argv[:-2] + [str(tmp_path / "o2"), IN_MEMORY, "--endpoint", broken.url])
  err = capsys.readouterr().err
  assert rc == 1 and "the generator failed: " in err and "HTTP 503" in err, err[-2000:]


def test_the_readme_commands_parse():
  """Every `lwm-make-qa` command in README.md: our options and Beam's, nothing unknown."""
  text = (REPO / "README.md").read_text().replace("\\\n", " ")
  commands = [line.split("lwm-make-qa", 1)[1].split() for line in text.splitlines()
              if line.startswith("lwm-make-qa ") and " ... " not in line]
  assert len(commands) == 3
  for argv in commands:
    args, extra = make_qa_cli._parser().parse_known_args(argv)
    beam_args(extra, make_qa_cli.PROG)
    assert (args.endpoint is None) != (args.generator is None) and args.lengths


def _cli(args, tmp_path, timeout=900):
  """`python -m lwm_plugin.longqa_gen.make_qa_cli ARGS` in a subprocess (1 CPU device, the default JAX settings)."""
  return subprocess.run([sys.executable, "-m", "lwm_plugin.longqa_gen.make_qa_cli", *args], env=subprocess_env(),
                        cwd=tmp_path, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.slow  # a MaxText model built and sampled in a Beam worker, then a 4-device training step: ~2-3 min
def test_end_to_end_with_the_tiny_chat_model_and_one_training_step(work, tmp_path):
  d, data = work
  # The real-model path: the demo chat stage's model (random weights) through the KV-cache decoder.
  hf = write_random_llama(tmp_path / "hf", 1024, seed=2)
  _books(tmp_path / "small.jsonl", [40, 12], seed=3)
  sets = [f"lwm_data_dir={data}", "attention=dot_product", "ici_context_parallelism=1", "per_device_batch_size=4",
          "max_target_length=384"]
  proc = _cli(["--books", str(tmp_path / "small.jsonl"), "--generator-config", "tiny_text_chat_4k.yml",
               "--generator", str(hf), *[a for s in sets for a in ("--set", s)], "--lengths", "512",
               "--chunk-tokens", "100", "--retries", "1", "--max-new-tokens", "24", "--batch-size", "4",
               "--output", str(tmp_path / "real"), IN_MEMORY], tmp_path)
  assert proc.returncode == 0, proc.stderr[-4000:]
  done = json.loads((tmp_path / "real" / "_shards" / "part-00000-of-00001.json").read_text())
  rejects = [json.loads(x) for x in (tmp_path / "real" / "rejects.jsonl").read_text().splitlines()]
  assert done["books"] == 2 and done["chunks"] >= 4
  assert len(rejects) == done["chunks"] - done["qa_pairs"] >= done["chunks"] - 1  # a random model writes no QA
  assert {r["book_id"] for r in rejects} == {"b0", "b1"} and all(r["attempts"] == 2 for r in rejects)
  assert len({r["generation"] for r in rejects}) > len(rejects) // 2  # the model's own (varied) texts
  assert f"model {hf} (" in json.loads((tmp_path / "real" / "make_qa.json").read_text())["generator"]

  # The parse path: a scripted endpoint, then the loader and one tiny_text_chat_4k step on the output.
  out = tmp_path / "qa"
  with _scripted_server() as server:
    proc = _cli(["--books", str(d / "books.jsonl"), "--endpoint", server.url, "--tokenizer",
                 str(data / "tokenizer.model"), "--lengths", "2048,4096", "--chunk-tokens", "200",
                 "--output", str(out)], tmp_path)  # the default runner: DirectRunner, one process per core
  assert proc.returncode == 0, proc.stderr[-4000:]
  vocab = MultimodalVocab.from_tokenizer(data / "tokenizer.model")

  def quotes_its_chunk(document, question, answer):  # the scripted answer quotes the end of its chunk
    assert answer[len("The one ending "):] in document, (question, answer)

  loss_tokens = _read_back(out, (2048, 4096), vocab, quotes_its_chunk)[4096]
  _one_training_step(out / "longqa-4k", data, 4096, loss_tokens, tmp_path)


def _read_back(out, targets, vocab, check_pair):
  """Every example of each target length as the loader reads it: 90-100 % of the target, user/assistant turns,
  each pair passes `check_pair(document, question, answer)`, the loss exactly on the answers and their EOS.
  Returns, per target, the examples' loss-token counts."""
  loss_tokens = {}
  for target in targets:
    name = f"longqa-{target // 1024}k" if target % 1024 == 0 else f"longqa-{target}"
    records = [json.loads(x) for p in sorted(out.glob(f"{name}/*.jsonl")) for x in p.read_text().splitlines()]
    config = LoaderConfig(sources=[{"name": "qa", "files": f"{out}/{name}/*.jsonl"}], seq_len=target, batch_size=1,
                          shuffle=False, num_epochs=1)
    examples = list(source_stream(config, config.sources[0], vocab, shard_index=0, shard_count=1))
    assert len(examples) == len(records) >= 1, name
    loss_tokens[target] = set()
    for record, ex in zip(records, examples):
      messages = record["messages"]
      assert 0.9 * target <= len(ex["inputs"]) + 1 <= target
      assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2)
      first, end = record["longqa"]["chunks"]
      assert len(record["longqa"]["qa_chunks"]) == len(messages) // 2
      assert all(first <= c < end for c in record["longqa"]["qa_chunks"])
      document, question = messages[0]["content"].rsplit("\n\n", 1)
      for k, m in enumerate(messages[1::2]):
        check_pair(document, question if k == 0 else messages[2 * k]["content"], m["content"])
      answers = [i for m in messages[1::2] for i in [*vocab.sp.encode(m["content"]), vocab.eos_id]]
      assert ex["targets"][ex[WEIGHTS] > 0].tolist() == answers
      loss_tokens[target].add(len(answers))
  return loss_tokens


def _one_training_step(length_dir, data, target, loss_tokens, tmp_path):
  """One `tiny_text_chat_4k.yml` step on the examples of `length_dir`, one example per row of `target` tokens:
  its loss falls on exactly one example's answer tokens (one of `loss_tokens`)."""
  sources = f"lwm_data_sources=[{{name: longqa, files: '{length_dir}/*.jsonl', group: longqa}}]"
  train = run_lwm_train(["tiny_text_chat_4k.yml", f"lwm_data_dir={data}", f"base_output_directory={tmp_path / 'o'}",
                         "load_parameters_path=''", "enable_checkpointing=false", "steps=1", sources,
                         f"max_target_length={target}", "per_device_batch_size=0.25", "run_name=qa-step",
                         f"metrics_file={tmp_path}/metrics.jsonl"], devices=4, cwd=tmp_path)
  assert train.returncode == 0, train.stderr[-4000:]
  (row,) = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "learning/loss" in r]
  assert np.isfinite(row["learning/loss"]) and row["learning/loss"] > 0, row
  # One row holds one example (truncated if longer: none is): its loss falls on exactly its answer tokens.
  assert row["lwm/text_examples"] == 1 and row["lwm/text_tokens"] in loss_tokens, (row, loss_tokens)


_ASKED = re.compile(r"What is the special magic \w+ number\?")
_FACT = re.compile(r"The special magic \w+ number is: \d+\.")


@pytest.mark.slow  # 150 training steps, the model sampled in a Beam worker, one training step: ~3 min
def test_a_chat_model_trained_on_the_qa_writing_chats_writes_qa_the_chat_stage_trains_on(work, tmp_path):
  """Issue 18 item 4 with a model that writes QA: the chat stage's config trained from scratch on the corpus's
  QA-writing chats only (`qa_writing.jsonl`, 150 steps at 1K), then `lwm-make-qa` with it as the generator on
  books with facts. Most of its pairs have the trained form (a question about a city's number, answered by a
  fact sentence; the 2-layer model made in 150 steps copies the form, not yet the facts: the demo's chain, whose
  chat model has learned retrieval first, grounds them, BENCHMARKS.md); the loader reads the examples back
  and one step trains on them."""
  _, data = work
  train = run_lwm_train(["tiny_text_chat_4k.yml", f"lwm_data_dir={data}", f"base_output_directory={tmp_path / 'o'}",
                         "load_parameters_path=''", "steps=150", "max_target_length=1024", "per_device_batch_size=1",
                         "learning_rate=3e-3", "run_name=qa-writer",
                         f"lwm_data_sources=[{{name: qa_writing, files: '{data}/qa_writing.jsonl', group: longqa}}]"],
                        devices=4, cwd=tmp_path)
  assert train.returncode == 0, train.stderr[-4000:]
  items = tmp_path / "o" / "qa-writer" / "checkpoints" / "149" / "items"
  rng = np.random.default_rng(11)
  sc.write_jsonl(tmp_path / "books.jsonl", [sc.needle_book(rng, f"b{k}", n, 12) for k, n in enumerate([90, 120])])
  sets = [f"lwm_data_dir={data}", "attention=dot_product", "ici_context_parallelism=1", "per_device_batch_size=4",
          "max_target_length=512"]
  out = tmp_path / "qa"
  proc = _cli(["--books", str(tmp_path / "books.jsonl"), "--generator-config", "tiny_text_chat_4k.yml",
               "--generator", str(items), *[a for s in sets for a in ("--set", s)], "--lengths", "1024",
               "--chunk-tokens", "100", "--max-new-tokens", "48", "--output", str(out), IN_MEMORY], tmp_path)
  assert proc.returncode == 0, proc.stderr[-4000:]
  done = json.loads((out / "_shards" / "part-00000-of-00001.json").read_text())
  assert done["books"] == 2 and done["chunks"] >= 8 and done["qa_pairs"] >= 0.75 * done["chunks"], done

  pairs = []
  vocab = MultimodalVocab.from_tokenizer(data / "tokenizer.model")
  loss_tokens = _read_back(out, (1024,), vocab, lambda document, q, a: pairs.append((q, a)))[1024]
  trained = [bool(_ASKED.fullmatch(q) and _FACT.fullmatch(a)) for q, a in pairs]
  assert sum(trained) >= 0.5 * len(pairs) >= 1, pairs
  _one_training_step(out / "longqa-1k", data, 1024, loss_tokens, tmp_path)
