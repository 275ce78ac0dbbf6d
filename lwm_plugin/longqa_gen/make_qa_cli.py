"""`lwm-make-qa`: the long-context QA sets of the chat stages (paper Sec. 3.3), made with a model on Apache Beam.

  lwm-make-qa --books BOOKS.jsonl --generator-config CFG.yml --generator CKPT_OR_HF_DIR [--set key=value ...]
              --lengths 32768,131072 --output DIR [options] [BEAM OPTIONS ...]
  lwm-make-qa --books BOOKS.jsonl --endpoint URL --tokenizer TOKENIZER.model --lengths 32768 --output DIR ...

BOOKS.jsonl has one book per line, `{"text": "...", "id": optional}`. Each book is cut into chunks of
at most --chunk-tokens tokens of the training tokenizer (--tokenizer; default: the generator config's
`lwm_tokenizer_path`), the generator is asked for one question and its answer per chunk (the prompt is
--template FILE, with `{paragraph}` where the chunk goes; default `data_loaders.longqa.DEFAULT_TEMPLATE`),
a generation that is not one "Question: ... Answer: ..." pair is sampled again with another seed up to
--retries times and then listed in DIR/rejects.jsonl; for each target length, adjacent chunks of one book
become one chat example (the document, then the QA pairs of its chunks as user/assistant turns, 90-100 %
of the target by the loader's chat template), written as DIR/longqa-32k/part-SSSSS-of-NNNNN.jsonl.

The generator is a MaxText checkpoint or Hugging Face directory (--generator, described by
--generator-config as for `lwm-train`, `--set key=value` overriding it; decoded in each worker with the
KV cache, loaded once per worker) or any OpenAI-compatible completions endpoint (--endpoint, e.g. vLLM
serving a larger model). Options lwm-make-qa does not know go to Beam (`--runner DataflowRunner
--project P --region R ...`, `--runner FlinkRunner --flink_master HOST:PORT`, `--runner SparkRunner`);
without a runner the DirectRunner runs one process per core. A rerun into the same DIR with the same
settings skips completed shards. Every usage error is caught before JAX or MaxText is imported (but an
unknown key of --generator-config or --set: that check needs MaxText's config types, so it runs just after
the launcher has set the platform): `lwm-make-qa: error: ...`, exit 2, nothing written; a generator that
fails while running exits 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Sequence


from data_loaders import longqa
from lwm_plugin import launch
from lwm_plugin.beam_cli import beam_args
from lwm_plugin.config.files import ConfigError, resolve_config_file
from lwm_plugin.longqa_gen.qa_endpoint import CompletionsClient
from lwm_plugin.model_source import UsageError, locate_model

PROG = "lwm-make-qa"


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n", 1)[0], formatter_class=argparse.RawDescriptionHelpFormatter,
              epilog=__doc__.split("\n\n", 1)[1], allow_abbrev=False)
  p.add_argument("--books", required=True, help="books JSONL: {\"text\": ..., \"id\": optional} per line")
  p.add_argument("--output", required=True, help="output directory (local or any Beam file system)")
  p.add_argument("--lengths", required=True, help="target lengths in tokens, comma-separated (e.g. 32768,131072)")
  p.add_argument("--generator-config", help="the generator model's config (.yml), as for lwm-train")
  p.add_argument("--generator", help="the generator: a MaxText items directory or a Hugging Face directory")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override of --generator-config")
  p.add_argument("--endpoint", help="an OpenAI-compatible server (POST URL/v1/completions) instead of --generator")
  p.add_argument("--endpoint-model", help="the 'model' field of each request (default: none)")
  p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for an endpoint's answer")
  p.add_argument("--tokenizer", help="the training tokenizer (default: --generator-config's lwm_tokenizer_path)")
  p.add_argument("--chunk-tokens", type=int, default=longqa.DEFAULT_CHUNK_TOKENS)
  p.add_argument("--template", help="prompt template file with one {paragraph} (default: the built-in one)")
  p.add_argument("--retries", type=int, default=2, help="generations after the first for a chunk that fails to parse")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--batch-size", type=int, default=16, help="prompts per generator call")
  p.add_argument("--books-per-shard", type=int, default=100)
  p.add_argument("--max-new-tokens", type=int, default=256, help="longest generation")
  p.add_argument("--temperature", type=float, default=0.7)
  p.add_argument("--top-p", type=float, default=None)
  return p


@dataclasses.dataclass(frozen=True)
class MakeQARequest:
  """A checked command line (no JAX, MaxText or model touched yet)."""
  books: str
  output: str
  lengths: tuple[int, ...]
  config_file: str | None        # --generator-config, resolved (None with --endpoint)
  generator: str | None
  overrides: tuple[str, ...]
  endpoint: CompletionsClient | None
  tokenizer: str | None          # None: the generator config's
  template: str
  chunk_tokens: int
  retries: int
  seed: int
  batch_size: int
  books_per_shard: int
  max_new_tokens: int
  temperature: float
  top_p: float | None
  beam_args: tuple[str, ...]


def _lengths(text: str) -> tuple[int, ...]:
  try:
    lengths = tuple(int(x) for x in text.split(","))
  except ValueError:
    raise UsageError(f"--lengths {text!r}: expected comma-separated token counts such as 32768,131072") from None
  if any(n < 1 for n in lengths) or len(set(lengths)) != len(lengths):
    raise UsageError(f"--lengths {text!r}: expected distinct positive token counts")
  return lengths


def build_request(args: argparse.Namespace, extra: Sequence[str]) -> MakeQARequest:
  """Every check that needs no JAX or MaxText; raises UsageError (or ConfigError/ValueError). The config's
  keys are checked in `main`, after the launcher has set the platform (the check needs MaxText's types)."""
  if (args.endpoint is None) == (args.generator is None):
    raise UsageError("give the generator as --generator-config CFG.yml --generator CKPT, or as --endpoint URL")
  config_file = None
  if args.generator is not None:
    if args.generator_config is None:
      raise UsageError("--generator needs --generator-config (the generator model's config .yml)")
    config_file = resolve_config_file(args.generator_config)
    locate_model(args.generator)
  else:
    for option in ("generator_config", "set"):
      if getattr(args, option):
        raise UsageError(f"--{option.replace('_', '-')} goes with --generator, not --endpoint")
    if args.tokenizer is None:
      raise UsageError("--endpoint needs --tokenizer (the training tokenizer: chunks and lengths are counted in it)")
  if args.tokenizer is not None and not Path(args.tokenizer).is_file():
    raise UsageError(f"--tokenizer {args.tokenizer!r}: no such file")
  if "://" not in args.books and not Path(args.books).is_file():
    raise UsageError(f"--books {args.books!r}: no such file")
  if "://" not in args.output and Path(args.output).exists() and not Path(args.output).is_dir():
    raise UsageError(f"--output {args.output!r} exists and is not a directory")
  for name, low in (("chunk_tokens", 8), ("retries", 0), ("batch_size", 1), ("books_per_shard", 1),
                    ("max_new_tokens", 1)):
    if getattr(args, name) < low:
      raise UsageError(f"--{name.replace('_', '-')} {getattr(args, name)}: expected >= {low}")
  if not args.temperature >= 0 or (args.top_p is not None and not 0 < args.top_p <= 1):
    raise UsageError(f"--temperature {args.temperature} must be >= 0 and --top-p {args.top_p} in (0, 1]")
  template = longqa.load_template(args.template) if args.template else longqa.DEFAULT_TEMPLATE
  endpoint = None
  if args.endpoint is not None:
    endpoint = CompletionsClient(args.endpoint, max_tokens=args.max_new_tokens, temperature=args.temperature,
                                 top_p=args.top_p, model=args.endpoint_model, timeout_s=args.timeout)
  return MakeQARequest(args.books, args.output, _lengths(args.lengths), config_file, args.generator, tuple(args.set),
                       endpoint, args.tokenizer, template, args.chunk_tokens, args.retries, args.seed, args.batch_size,
                       args.books_per_shard, args.max_new_tokens, args.temperature, args.top_p, beam_args(extra, PROG))


def main(argv: Sequence[str] | None = None) -> int:
  """`lwm-make-qa`; returns the exit code (2 for every usage error, with nothing written)."""
  try:
    args, extra = _parser().parse_known_args(argv)
  except SystemExit as e:  # argparse: --help (0) or a usage error (2), already printed
    return int(e.code or 0)
  try:
    request = build_request(args, extra)
    # No generator config (an endpoint): the host CPU. The Beam workers inherit JAX_PLATFORMS.
    apps = launch.decode_apps(request.config_file, request.overrides)
    if request.config_file is not None:
      apps.check_keys(request.config_file, request.overrides)
  except (ConfigError, ValueError) as e:  # UsageError is a ValueError
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return 2
  return apps.qa_run.run(request, log=lambda line: print(f"{PROG}: {line}", file=sys.stderr))


if __name__ == "__main__":
  sys.exit(main())
