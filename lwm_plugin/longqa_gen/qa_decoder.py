"""The in-process QA generator: a MaxText checkpoint or Hugging Face directory, decoded with the KV cache.

`DecoderSpec` is what a pipeline worker needs (picklable: paths and settings); calling it builds a
`DecoderGenerator` once per worker (`DoFn.setup`): the Hugging Face weights imported if needed
(`checkpoints.import_for_inference`, into a temporary directory removed once the model is loaded),
the config resolved with its cache split between prompt and new tokens as `lwm-generate` does
(`generation.engine.cache_split`), the seam installed and `inference.CachedDecoder` built.

`generate(prompts, seed)` wraps each prompt in the chat template (`vision_prompts.chat_prompt_ids`,
the token layout of `data_loaders.chat_template`), decodes all of them through
`generation.loop.generate_text` (batches of the decoder's decode batch, `per_device_batch_size` x
devices; text ids only; stop at EOS; `Sampling(temperature, top_p, seed)`) and returns the answers'
text. `complete(texts, seed)` is the same without the template (`<s>` + the text): what a
completions endpoint serving this model does with the chat text it is sent.

Imports MaxText (through `lwm_plugin.integration`): import it after choosing the JAX platform.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from data_loaders import vision_prompts as vp
from lwm_plugin import checkpoints, integration
from lwm_plugin.config.files import resolve_config_file
from lwm_plugin.config.lwm_config import check_keys
from lwm_plugin.config.settings import model_vocab
from lwm_plugin.generation import engine, loop
from lwm_plugin.generation.sampling_params import Sampling
from lwm_plugin.integration import inference
from lwm_plugin.model_source import UsageError, locate_model


@dataclasses.dataclass(frozen=True)
class DecoderSpec:
  """A model to generate QA with: `config_file` describes it as for `lwm-train` (plus `overrides`),
  `model` is a MaxText items directory or a Hugging Face directory."""
  config_file: str
  model: str
  overrides: tuple[str, ...] = ()
  max_new_tokens: int = 256
  temperature: float = 0.7
  top_p: float | None = None

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens {self.max_new_tokens}: expected >= 1")
    Sampling(self.temperature, None, self.top_p, 0)  # checks them

  def __call__(self) -> DecoderGenerator:
    return DecoderGenerator.load(self)


class DecoderGenerator:
  """`TextGenerator` (see `qa_endpoint`) over a `CachedDecoder`."""

  def __init__(self, decoder: Any, vocab: Any, max_prompt_length: int, spec: DecoderSpec):
    self.decoder, self.vocab, self.max_prompt_length, self.spec = decoder, vocab, max_prompt_length, spec

  @classmethod
  def load(cls, spec: DecoderSpec) -> DecoderGenerator:
    config_file = resolve_config_file(spec.config_file)
    check_keys(config_file, spec.overrides)
    total, max_prompt = engine.cache_split(config_file, spec.overrides, spec.max_new_tokens)
    source = locate_model(spec.model)
    scratch = Path(tempfile.mkdtemp(prefix="lwm-make-qa-")) if source.is_hf else None
    try:
      items = (checkpoints.import_for_inference(config_file, source, scratch / "import", overrides=spec.overrides)
               if scratch is not None else source.path)
      integration.install()
      config = inference.decode_config("lwm-make-qa", config_file, items, spec.overrides, total=total,
                                       prompt=max_prompt)
      vocab, _ = model_vocab(config)
      decoder = inference.CachedDecoder(config)  # the weights are in memory from here on
    finally:
      if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
    return cls(decoder, vocab, max_prompt, spec)

  def _decode(self, prompts_ids: list[np.ndarray], seed: int) -> list[str]:
    for k, ids in enumerate(prompts_ids):
      if len(ids) > self.max_prompt_length:
        raise UsageError(f"prompt {k + 1} has {len(ids)} tokens; the generator's cache holds {self.max_prompt_length} "
                         f"prompt tokens (max_target_length minus {self.spec.max_new_tokens} new tokens): raise "
                         "max_target_length or lower --chunk-tokens")
    stops = (self.vocab.eos_id,)
    sampling = Sampling(self.spec.temperature, None, self.spec.top_p, int(seed))
    gens = loop.generate_text(self.decoder, prompts_ids, max_new_tokens=self.spec.max_new_tokens, sampling=sampling,
                              stop_ids=stops, allowed_V=vp.text_mask(self.vocab, self.decoder.vocab_size))
    return [engine.answer_text(self.vocab, g, stops) for g in gens]

  def generate(self, prompts: Sequence[str], seed: int) -> list[str]:
    """One answer per prompt (user content, wrapped in the chat template)."""
    if not prompts:
      return []
    return self._decode([vp.chat_prompt_ids(self.vocab, p) for p in prompts], seed)

  def complete(self, texts: Sequence[str], seed: int) -> list[str]:
    """One continuation per text (`<s>` + the text's ids, no template)."""
    if not texts:
      return []
    return self._decode([vp.raw_prompt_ids(self.vocab, t) for t in texts], seed)
