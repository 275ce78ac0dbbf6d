"""The work of `lwm-generate`: a checked request (`request.GenerateRequest`) -> prompts -> tokens -> files.

`prepare` resolves the config (with the KV cache split between prompt and new tokens), reads the
model's vocabulary, builds every prompt (`data_loaders.vision_prompts`) and checks each against the
cache, writing nothing. `run` imports a Hugging Face model if needed, builds the KV-cache decoder
(`inference.CachedDecoder`) and decodes through `lwm_plugin.generation.loop`; answers are printed
and, with `--output`, written as `{"results": [...]}`; generated frames go to `--codes-output`.

The cache: MaxText's decode state holds `max_prefill_predict_length` prompt tokens and
`max_target_length - max_prefill_predict_length` new ones, each a multiple of the context
parallelism (the cache is split over that axis). The new part is the answer budget (text) or
F x (tokens per frame + 1) (generation), rounded up to that multiple; the prompt part is the rest of
the config's `max_target_length`.

Imports MaxText (through `lwm_plugin.integration`): import it after choosing the JAX platform.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from data_loaders import vision_prompts as vp
from data_loaders.atomic_file import atomic_path
from data_loaders.examples import LWMFormatError, vision_frames
from lwm_plugin import checkpoints, integration
from lwm_plugin.config.files import peek
from lwm_plugin.config.lwm_config import check_keys
from lwm_plugin.config.settings import LWMSettings, model_vocab
from lwm_plugin.generation import loop
from lwm_plugin.generation.request import GenerateRequest
from lwm_plugin.integration import aot_decode, inference
from lwm_plugin.model_source import UsageError, imported_items
from lwm_plugin.vision import media
from lwm_plugin.vision.commands import VisionError, decode_file
from lwm_plugin.vision.vqgan import load_vqgan
from lwm_plugin.vision.vqgan_weights import VQGANWeightsError


@dataclasses.dataclass
class Prepared:
  """A request with its resolved config, vocabulary and prompt ids (one per prompt; none for a chat loop)."""
  request: GenerateRequest
  config: Any
  vocab: Any
  prompts: list[np.ndarray]
  labels: list[str]            # the prompt text (caption, question) of each entry, for the codes file
  max_prompt_length: int
  import_dir: Path | None      # where a Hugging Face model is imported
  temporary_import: bool
  codec: Any = None            # the VQGAN (`--vqgan`), loaded and checked before any decoding


def _int_key(config_file: str, overrides: Sequence[str], key: str) -> int:
  """An int key read before resolution (the YAML chain and overrides; an `lwm_*` key not set: its default)."""
  value = peek(config_file, overrides, key)
  if value is None and key in LWMSettings.model_fields:
    value = LWMSettings.model_fields[key].default
  try:
    return int(value)
  except (TypeError, ValueError) as e:
    raise UsageError(f"{config_file}: {key} {value!r} is not an int") from e


def cache_split(config_file: str, overrides: Sequence[str], new_tokens: int) -> tuple[int, int]:
  """(max_target_length, max_prefill_predict_length) of the decode cache for `new_tokens` new tokens."""
  total = _int_key(config_file, overrides, "max_target_length")
  cp = max(1, _int_key(config_file, overrides, "ici_context_parallelism")) * max(
      1, _int_key(config_file, overrides, "dcn_context_parallelism"))
  new = -(-new_tokens // cp) * cp
  prompt = (total - new) // cp * cp
  if prompt < 1:
    raise UsageError(f"{config_file}: max_target_length {total} leaves no room for a prompt after "
                     f"{new_tokens} new tokens; pass max_target_length=N")
  return prompt + new, prompt


def _new_tokens(request: GenerateRequest) -> int:
  if request.mode in ("image", "video"):
    tokens_per_frame = _int_key(request.config_file, request.overrides, "lwm_tokens_per_frame")
    return request.frames * (tokens_per_frame + 1)
  return request.max_new_tokens


def _prompt_ids(request: GenerateRequest, vocab: Any, is_text_model: bool,
                codec: Any) -> tuple[list[np.ndarray], list[str]]:
  if request.mode in ("image", "video"):
    if is_text_model:
      raise UsageError(f"--generate {request.mode} needs a multimodal model; {request.config_file} has a text "
                       "vocabulary")
    return [vp.generation_prompt_ids(vocab, c, request.mode, raw=request.raw) for c in request.prompts], list(
        request.prompts)
  if request.mode == "understand":
    if is_text_model:
      raise UsageError(f"--vision-codes/--image/--video need a multimodal model; {request.config_file} has a "
                       "text vocabulary")
    if request.media:
      return _media_prompt_ids(request, vocab, codec), [request.question] * len(request.media)
    prompts = []
    for item in request.vision:
      try:
        frames = vision_frames(item.frames, vocab, None, "vision")
      except LWMFormatError as e:
        raise UsageError(f"--vision-codes {item.where}: {e}") from e
      prompts.append(vp.chat_prompt_ids(vocab, item.question, vision_FxT=frames))
    return prompts, [item.question for item in request.vision]
  build = vp.raw_prompt_ids if request.raw else vp.chat_prompt_ids
  return [build(vocab, p) for p in request.prompts], list(request.prompts)


def _load_vqgan(path: Path):
  try:
    return load_vqgan(path)
  except (VQGANWeightsError, ValueError, OSError) as e:
    raise UsageError(f"--vqgan {path}: {e}") from e


def _media_prompt_ids(request: GenerateRequest, vocab: Any, codec: Any) -> list[np.ndarray]:
  """Each `--image`/`--video` file -> frames (LWM's 256x256 crop) -> VQGAN codes -> the vision chat prompt."""
  prompts = []
  for path in request.media:
    try:
      frames_FxHxWx3 = media.read_media(path, fps=request.fps, max_frames=request.max_frames)
    except media.MediaError as e:
      raise UsageError(f"--image/--video {e}") from e
    codes_FxT = np.asarray(codec.encode(frames_FxHxWx3)).reshape(len(frames_FxHxWx3), -1)
    try:
      frames = vision_frames(codes_FxT.tolist(), vocab, None, "vision")
    except LWMFormatError as e:
      raise UsageError(f"--image/--video {path}: the VQGAN's codes do not fit the model's vocabulary ({e})") from e
    prompts.append(vp.chat_prompt_ids(vocab, request.question, vision_FxT=frames))
  return prompts


def prepare(request: GenerateRequest) -> Prepared:
  """Every check before any work: the config keys, the resolved config, the vocabulary, every prompt
  against the cache. Raises UsageError (or ConfigError / ValueError); writes nothing."""
  check_keys(request.config_file, request.overrides)
  total, max_prompt = cache_split(request.config_file, request.overrides, _new_tokens(request))
  import_dir, temporary = request.import_dir, False
  if request.model.is_hf and import_dir is None:
    import_dir, temporary = Path(tempfile.gettempdir()) / f"lwm-generate-{uuid.uuid4().hex}", True
  items = imported_items(import_dir) if request.model.is_hf else request.model.path
  config = inference.decode_config("lwm-generate", request.config_file, items, request.overrides, total=total,
                                   prompt=max_prompt)
  vocab, is_text_model = model_vocab(config)
  codec = None if request.vqgan is None else _load_vqgan(request.vqgan)
  prompts, labels = _prompt_ids(request, vocab, is_text_model, codec)
  for k, ids in enumerate(prompts):
    if len(ids) > max_prompt:
      raise UsageError(f"prompt {k + 1} has {len(ids)} tokens; the cache holds {max_prompt} prompt tokens "
                       f"(max_target_length {total} minus the new tokens)")
  return Prepared(request, config, vocab, prompts, labels, max_prompt, import_dir, temporary, codec)


def check(config_file: str, overrides: Sequence[str], new_tokens: int) -> list[Any]:
  """`lwm-generate --check`: AOT-compiles prefill + one decode step at the config's full context (the
  cache split as for a run with `new_tokens` new tokens) for `compile_topology`; the two fit reports."""
  check_keys(config_file, overrides)
  total, max_prompt = cache_split(config_file, overrides, new_tokens)
  return list(aot_decode.check_decode(["lwm-generate", config_file, *overrides, f"max_target_length={total}",
                                       f"max_prefill_predict_length={max_prompt}"], config_file))


def answer_text(vocab: Any, gen: loop.Generation, stops: Sequence[int]) -> str:
  """The text of a generated answer, its stop ids left out."""
  return vocab.decode_text([int(t) for t in gen.new_ids if int(t) not in stops])


def _chat(prepared: Prepared, decoder: Any, stops: Sequence[int], log: Callable[[str], None],
          ask: Callable[[str], str]) -> list[tuple[loop.Generation, str]]:
  """The interactive loop: each turn's prompt is the previous prompt, its answer and the new question."""
  request, vocab = prepared.request, prepared.vocab
  allowed = vp.text_mask(vocab, decoder.vocab_size)
  turns: list[tuple[loop.Generation, str]] = []
  while True:
    try:
      question = ask("USER: ")
    except EOFError:
      return turns
    if not question.strip():
      continue
    ids = (vp.chat_prompt_ids(vocab, question) if not turns else
           vp.next_turn_ids(vocab, turns[-1][0].prompt_ids, turns[-1][0].new_ids, question))
    if len(ids) > prepared.max_prompt_length:
      log(f"the conversation has {len(ids)} tokens, more than the cache's {prepared.max_prompt_length} prompt "
          "tokens; it ends here")
      return turns
    gen = loop.generate_text(decoder, [ids], max_new_tokens=request.max_new_tokens, sampling=request.sampling,
                             stop_ids=stops, allowed_V=allowed)[0]
    turns.append((gen, answer_text(vocab, gen, stops)))
    print(f"ASSISTANT: {turns[-1][1]}", flush=True)


def _generate(prepared: Prepared, decoder: Any, log: Callable[[str], None],
              ask: Callable[[str], str]) -> list[tuple[loop.Generation, str | None]]:
  request, vocab = prepared.request, prepared.vocab
  if request.mode in ("image", "video"):
    gens = loop.generate_vision(decoder, prepared.prompts, vp.unconditional_ids(vocab),
                                schedule=vp.frame_schedule(vocab, request.frames),
                                code_mask_V=vp.code_mask(vocab, decoder.vocab_size), cfg_scale=request.cfg_scale,
                                sampling=request.sampling)
    return [(g, None) for g in gens]
  stops = request.stop_ids if request.stop_ids is not None else (vocab.eos_id,)
  if request.interactive:
    return _chat(prepared, decoder, stops, log, ask)
  gens = loop.generate_text(decoder, prepared.prompts, max_new_tokens=request.max_new_tokens,
                            sampling=request.sampling, stop_ids=stops,
                            allowed_V=vp.text_mask(vocab, decoder.vocab_size))
  results = [(g, answer_text(vocab, g, stops)) for g in gens]
  for label, (_, text) in zip(prepared.labels, results):
    log(f"prompt: {label}")
    print(text, flush=True)
  return results


def _write_results(path: Path, results: list[tuple[loop.Generation, str | None]]) -> None:
  doc = {"results": [{"prompt_ids": g.prompt_ids.tolist(), "new_ids": g.new_ids.tolist(), "text": text,
                      "timing": g.timing()} for g, text in results]}
  with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
    json.dump(doc, f)


def _write_codes(path: Path, vocab: Any, labels: list[str], results: list[tuple[loop.Generation, str | None]]) -> None:
  with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
    for label, (gen, _) in zip(labels, results):
      (frames_FxT,) = vocab.decode(gen.new_ids)  # the frame schedule makes this exactly one vision block
      f.write(json.dumps({"prompt": label, "vision": frames_FxT.tolist()}) + "\n")


def run(prepared: Prepared, log: Callable[[str], None] = print,
        ask: Callable[[str], str] = input) -> list[tuple[loop.Generation, str | None]]:
  """Imports the weights if needed, builds the decoder, generates, writes `--output` / `--codes-output`;
  returns (generation, text or None for frames) per prompt or chat turn."""
  request = prepared.request
  try:
    checkpoints.import_for_inference(request.config_file, request.model, prepared.import_dir,
                                     overrides=request.overrides)
    integration.install()
    decoder = inference.CachedDecoder(prepared.config)
    log(f"model {prepared.config.load_parameters_path}: cache of {prepared.max_prompt_length} prompt + "
        f"{decoder.max_length - prepared.max_prompt_length} new tokens, batch {decoder.batch_multiple}")
    results = _generate(prepared, decoder, log, ask)
  finally:
    if prepared.temporary_import and prepared.import_dir is not None:
      shutil.rmtree(prepared.import_dir, ignore_errors=True)
  for gen, _ in results:
    log(f"{gen.new_tokens} new tokens: prefill {gen.prefill_s:.2f} s, decode {gen.decode_s:.2f} s")
  if request.output is not None:
    _write_results(request.output, results)
  if request.codes_output is not None:
    _write_codes(request.codes_output, prepared.vocab, prepared.labels, results)
    if request.vqgan is not None:
      try:
        decode_file(prepared.codec, request.codes_output, request.pixels_dir, log=log)
      except VisionError as e:
        raise UsageError(f"--vqgan {request.vqgan}: {e}") from e
  sys.stdout.flush()
  return results
