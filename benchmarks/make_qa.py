"""`lwm-make-qa` generation speed on this CPU with the tiny model, and the cost model of a 7B generator.

    .venv/bin/python benchmarks/make_qa.py [--chunks 16] [--batch 4] [--new-tokens 32] [--rounds 3] [--out make_qa.json]

Part 1, measured. The demo chat stage's model shapes (`tiny_text_chat_4k.yml`: 2 layers, 64 wide, the
tiny corpus's 1024-piece tokenizer; random weights, written as a Hugging Face directory and imported),
one device, dot-product attention. Books of tiny-corpus sentences are chunked at 200 tokens and every
chunk's prompt (`longqa.chunk_prompt`, default template) is generated --new-tokens tokens (a random
model seldom stops early, so nearly every chunk costs the full --new-tokens), after one untimed compiling
call of a full batch per path, the median of --rounds rounds with the paths interleaved:

  in-process batched   `DecoderGenerator.generate`, decode batch --batch (`per_device_batch_size`)
  in-process batch 1   the same model with a decode batch of 1 (a second decoder)
  endpoint             `CompletionsClient` -> a loopback HTTP server (stdlib, tests/helpers) serving the
                       batched decoder's `complete`: the endpoint path's overhead over in-process
  pipeline             `qa_pipeline.make_qa` end to end (in-memory DirectRunner, retries 0): chunking,
                       model load and compile in the worker, generation, parse, assembly, shards

Printed: chunks/s of each, batched / batch 1 and endpoint / in-process (measured in the same run).

Part 2, the cost model of a 7B generator for a 1M-token example (LLaMA-2's tokenizer, 1000-token
chunks): tokens per chunk and the QA turn cost measured on synthetic text and a QA pair of
--question-words / --answer-words words (assumed: no real generations here), chunks per example
= (target - template overhead) / (chunk tokens + turn tokens), checked against `assemble_book` at 32K;
then prompt tokens (prefill) and generated tokens per example, x (1 + expected retries).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # before JAX is imported

from helpers.completions_server import CompletionsServer, serve_texts  # noqa: E402  (tests/helpers)
from helpers.random_llama import write_random_llama  # noqa: E402

from data_loaders import longqa  # noqa: E402
from data_loaders import synthetic_corpus as sc  # noqa: E402
from data_loaders.chat_template import chat_example  # noqa: E402
from data_loaders.vocab import MultimodalVocab, llama2_tokenizer_path  # noqa: E402


def _books(n_books: int, sentences: int, seed: int = 0) -> list[str]:
  rng = np.random.default_rng(seed)
  return [" ".join(sc.filler_sentences(rng, sentences)) for _ in range(n_books)]


def _interleaved(paths: dict, rounds: int) -> dict[str, dict[str, float]]:
  """`paths`: name -> (generate, prompts, batch). Each is warmed up with one full batch (compiling the prefill
  bucket, the step and the sampling), then timed once per round, the paths interleaved: the median round."""
  for generate, prompts, batch in paths.values():
    generate(prompts[:batch], 0)
  times = {name: [] for name in paths}
  for r in range(rounds):
    for name, (generate, prompts, _) in paths.items():
      start = time.perf_counter()
      texts = generate(prompts, 1 + r)
      times[name].append(time.perf_counter() - start)
      assert len(texts) == len(prompts)
  return {name: {"chunks": len(paths[name][1]), "seconds": statistics.median(t),
                 "chunks_per_s": len(paths[name][1]) / statistics.median(t)} for name, t in times.items()}


def measure(args, tmp: Path) -> dict:
  import jax  # pylint: disable=import-outside-toplevel

  from data_loaders import tiny_data  # pylint: disable=import-outside-toplevel
  from lwm_plugin.longqa_gen import qa_pipeline  # pylint: disable=import-outside-toplevel
  from lwm_plugin.longqa_gen.qa_decoder import DecoderSpec  # pylint: disable=import-outside-toplevel
  from lwm_plugin.longqa_gen.qa_endpoint import CompletionsClient  # pylint: disable=import-outside-toplevel

  tiny_data.generate(tmp / "data")
  hf = write_random_llama(tmp / "hf", 1024, seed=0)
  vocab = MultimodalVocab.from_tokenizer(tmp / "data" / "tokenizer.model")
  books = _books(4, 80)
  chunks = [c for k, b in enumerate(books) for c in longqa.chunk_book(vocab, f"b{k}", b, 200)][:args.chunks]
  prompts = [longqa.chunk_prompt(c) for c in chunks]

  def spec(batch):
    overrides = (f"lwm_data_dir={tmp / 'data'}", "attention=dot_product", "ici_context_parallelism=1",
                 f"per_device_batch_size={batch}", "max_target_length=448")
    return DecoderSpec("tiny_text_chat_4k.yml", str(hf), overrides, max_new_tokens=args.new_tokens, temperature=1.0)

  with jax.numpy_rank_promotion("allow"):
    batched, single = spec(args.batch)(), spec(1)()
    with CompletionsServer(serve_texts(lambda texts, seed, _: batched.complete(texts, seed))) as server:
      client = CompletionsClient(server.url, max_tokens=args.new_tokens, temperature=1.0)

      def endpoint(p, seed):
        return [t for i in range(0, len(p), args.batch) for t in client.generate(p[i:i + args.batch], seed)]

      results = _interleaved({"in-process batched": (batched.generate, prompts, args.batch),
                              "in-process batch 1": (single.generate, prompts[:max(2, args.chunks // 4)], 1),
                              "endpoint": (endpoint, prompts, args.batch)}, args.rounds)
    (tmp / "books.jsonl").write_text("".join(json.dumps({"text": b}) + "\n" for b in books))
    options = qa_pipeline.MakeQAOptions(output=str(tmp / "out"), generator_factory=spec(args.batch),
                                        generator="bench", tokenizer_proto=vocab.model_proto, lengths=(4096,),
                                        chunk_tokens=200, retries=0, batch_size=args.batch)
    start = time.perf_counter()
    made = qa_pipeline.make_qa(str(tmp / "books.jsonl"), options, ["--direct_running_mode=in_memory"],
                               log=lambda _: None)
    seconds = time.perf_counter() - start
  results["pipeline"] = {"chunks": made.chunks, "seconds": seconds, "chunks_per_s": made.chunks / seconds}
  return results


def cost_model(args) -> dict:
  """Chunks per 1M-token example and tokens per example for a 7B generator (LLaMA-2 tokenizer)."""
  vocab = MultimodalVocab.from_tokenizer(llama2_tokenizer_path())
  rng = np.random.default_rng(1)
  text = " ".join(sc.filler_sentences(rng, 8000))  # ~85K tokens: two 32K examples
  chunks = longqa.chunk_book(vocab, "b", text, args.chunk_tokens)[:-1]  # the last one is a remainder
  chunk_tokens = float(np.mean([c.n_tokens for c in chunks]))
  words = sc.filler_sentences(rng, 20)
  question = " ".join(" ".join(words).split()[:args.question_words]) + "?"
  answer = " ".join(" ".join(words[10:]).split()[:args.answer_words]) + "."
  pair = longqa.QAPair(question, answer)
  base = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
  turn = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
  turn_tokens = len(chat_example(vocab, base + turn)["tokens"]) - len(chat_example(vocab, base)["tokens"])
  generated = len(vocab.encode_text(f"Question: {question}\nAnswer: {answer}")) + 1  # + EOS
  chat = [{"role": "user", "content": longqa.chunk_prompt(chunks[0])}]
  prompt = len(chat_example(vocab, chat)["tokens"])  # up to "ASSISTANT:"
  prompt_overhead = prompt - chunks[0].n_tokens

  def per_example(target):
    return (target - 20) / (chunk_tokens + turn_tokens)  # 20: BOS, system prompt, the first "\n\n"

  records, _ = longqa.assemble_book(vocab, chunks, {c.index: pair for c in chunks}, 32768)
  actual_32k = float(np.mean([r["longqa"]["chunks"][1] - r["longqa"]["chunks"][0] for r in records]))
  n_1m = per_example(2**20)
  tries = 1 + args.retry_rate
  return {"chunk_tokens": chunk_tokens, "turn_tokens": turn_tokens, "generated_tokens_per_chunk": generated,
          "prompt_tokens_per_chunk": chunk_tokens + prompt_overhead, "chunks_per_32k_model": per_example(32768),
          "chunks_per_32k_assembled": actual_32k, "chunks_per_1m": n_1m, "retry_rate": args.retry_rate,
          "prefill_tokens_per_1m_example": n_1m * (chunk_tokens + prompt_overhead) * tries,
          "generated_tokens_per_1m_example": n_1m * generated * tries,
          "flops_per_1m_example_7b": 2 * 6.74e9 * n_1m * (chunk_tokens + prompt_overhead + generated) * tries}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--chunks", type=int, default=16)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--new-tokens", type=int, default=32)
  parser.add_argument("--rounds", type=int, default=3, help="timed rounds (median), the paths interleaved")
  parser.add_argument("--chunk-tokens", type=int, default=1000, help="cost model: chunk size")
  parser.add_argument("--question-words", type=int, default=15, help="cost model: assumed question length")
  parser.add_argument("--answer-words", type=int, default=30, help="cost model: assumed answer length")
  parser.add_argument("--retry-rate", type=float, default=0.1, help="cost model: expected retries per chunk")
  parser.add_argument("--out", default="make_qa.json")
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    results = measure(args, Path(tmp))
  for name, r in results.items():
    print(f"{name:20s} {r['chunks']:3d} chunks in {r['seconds']:6.1f} s = {r['chunks_per_s']:.2f} chunks/s "
          f"(<= {args.new_tokens} new tokens each)")
  ratios = {"batched / batch 1": results["in-process batched"]["chunks_per_s"] /
                                 results["in-process batch 1"]["chunks_per_s"],
            "endpoint / in-process": results["endpoint"]["chunks_per_s"] /
                                     results["in-process batched"]["chunks_per_s"]}
  for name, value in ratios.items():
    print(f"{name}: {value:.2f}x")
  cost = cost_model(args)
  print(f"7B cost model: {cost['chunk_tokens']:.0f} tokens per chunk + a {cost['turn_tokens']}-token QA turn -> "
        f"{cost['chunks_per_1m']:.0f} chunks per 1M-token example (model at 32K: {cost['chunks_per_32k_model']:.1f}, "
        f"assembled: {cost['chunks_per_32k_assembled']:.1f}); per chunk {cost['prompt_tokens_per_chunk']:.0f} prompt "
        f"+ {cost['generated_tokens_per_chunk']} generated tokens; per 1M example x {1 + cost['retry_rate']:.1f} "
        f"tries: {cost['prefill_tokens_per_1m_example'] / 1e6:.2f}M prefill + "
        f"{cost['generated_tokens_per_1m_example'] / 1e3:.0f}K generated tokens, "
        f"{cost['flops_per_1m_example_7b']:.2e} FLOPs")
  Path(args.out).write_text(json.dumps({"cpus": os.cpu_count(), "args": vars(args), "measured": results,
                                        "ratios": ratios, "cost_model_7b": cost}, indent=1) + "\n")


if __name__ == "__main__":
  main()
