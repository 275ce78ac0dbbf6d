"""The work of `lwm-make-qa`: a checked request (`make_qa_cli.MakeQARequest`) -> generator, tokenizer, pipeline.

The generator is a picklable factory the workers call in `DoFn.setup`: a `qa_decoder.DecoderSpec`
(the model loaded once per worker) or the endpoint client itself. The training tokenizer is
`--tokenizer`, or the generator config's `lwm_tokenizer_path` as `lwm-train` resolves it. Each setting
that decides the output is written to `DIR/make_qa.json` by the pipeline, the generator named by its
model or URL and sampling settings.

Imports MaxText (through `qa_decoder` and `lwm_plugin.checkpoints`): import it after choosing the JAX platform.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from data_loaders.vocab import MultimodalVocab
from lwm_plugin import checkpoints
from lwm_plugin.config.files import ConfigError
from lwm_plugin.longqa_gen import qa_pipeline
from lwm_plugin.longqa_gen.qa_decoder import DecoderSpec
from lwm_plugin.longqa_gen.qa_endpoint import GeneratorError
from lwm_plugin.model_source import UsageError


def generator_of(request: Any) -> tuple[Callable[[], Any], str]:
  """(the workers' generator factory, its description for the settings file)."""
  sampling = f"max_new_tokens {request.max_new_tokens}, temperature {request.temperature}, top_p {request.top_p}"
  if request.endpoint is not None:
    model = f" model {request.endpoint.model}" if request.endpoint.model else ""
    return request.endpoint, f"endpoint {request.endpoint.url}{model}, {sampling}"
  spec = DecoderSpec(request.config_file, str(Path(request.generator).resolve()), request.overrides,
                     max_new_tokens=request.max_new_tokens, temperature=request.temperature, top_p=request.top_p)
  overrides = " ".join(request.overrides)
  return spec, f"model {spec.model} ({request.config_file}{' ' + overrides if overrides else ''}), {sampling}"


def tokenizer_of(request: Any) -> bytes:
  """The SentencePiece model of `--tokenizer`, else of the generator config's `lwm_tokenizer_path` (resolved as
  lwm-train does), checked by loading it."""
  path = request.tokenizer
  if path is None:
    path = checkpoints.resolve(request.config_file, request.overrides).lwm_tokenizer_path
    if not path or not Path(path).is_file():
      raise UsageError(f"{request.config_file}: lwm_tokenizer_path {path!r} is not a file; pass --tokenizer")
  return MultimodalVocab.from_tokenizer(path).model_proto


def run(request: Any, log: Callable[[str], None] = print) -> int:
  """Runs the pipeline; returns the exit code (2: usage error, nothing written; 1: the generator failed)."""
  try:
    factory, description = generator_of(request)
    options = qa_pipeline.MakeQAOptions(
        output=request.output, generator_factory=factory, generator=description, tokenizer_proto=tokenizer_of(request),
        lengths=request.lengths, chunk_tokens=request.chunk_tokens, template=request.template,
        retries=request.retries, seed=request.seed, batch_size=request.batch_size,
        books_per_shard=request.books_per_shard)
  except (ConfigError, ValueError, OSError) as e:  # UsageError is a ValueError
    log(f"error: {e}")
    return 2
  try:
    result = qa_pipeline.make_qa(request.books, options, request.beam_args, log=log)
  except qa_pipeline.SettingsError as e:
    log(f"error: {e}")
    return 2
  except GeneratorError as e:
    log(f"the generator failed: {e}")
    return 1
  per_length = ", ".join(f"{n} in longqa-{qa_pipeline.length_name(t)}" for t, n in result.records.items())
  dropped = ", ".join(f"{n} {reason}" for reason, n in sorted(result.dropped.items())) or "none"
  log(f"{result.books} books, {result.chunks} chunks, {result.qa_pairs} QA pairs -> {per_length} "
      f"({result.shards_written} new shards, {result.shards_skipped} complete before); chunk ranges in no example: "
      f"{dropped}; {result.rejects} rejects listed in {request.output}/rejects.jsonl; {result.seconds:.1f} s")
  return 0
