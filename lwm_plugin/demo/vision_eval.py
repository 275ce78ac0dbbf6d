"""The demo's vision evaluation: its final model describes held-out images and draws held-out captions.

Both directions of the paper's vision-language model, scored without a person (`data_loaders.toy_vision`):

  understanding  each held-out image's codes in an understanding prompt; the greedy text answer
                 (text ids only, up to `ANSWER_TOKENS`) is scored on the colour and shape it names;
  generation     each held-out caption in a generation prompt; one frame (the model's
                 `lwm_tokens_per_frame` codes, a square grid: 8 x 8 in the demo) drawn through
                 `lwm_plugin.generation.loop.generate_vision` (`lwm-generate --generate image`'s path:
                 classifier-free guidance against `<s><vision>`, codes only inside the frame, greedy),
                 scored on the colour and shape its codes show.

`layout` is the prompts' form: "chat" is `lwm-generate`'s (LWM's vision chat template,
`data_loaders.vision_prompts`), "raw" the corpus's caption/vision lines as the vision stages train
on them (`<s>` + image + caption; `<s>` + caption + image, i.e. `lwm-generate --raw`). The images
are a toy codebook (each colour a band of codes, each shape a texture code), not VQGAN codes; the
pictures render the codes (`toy_vision.grid_rgb`).

One KV-cache decoder (`inference.CachedDecoder`) serves both tasks in batches of every prompt (with
guidance, a conditional and an unconditional row per caption): one compile, two prefills, 24 + 257
decode steps. A Hugging Face model is imported into `OUTPUT/vision_import/` and removed afterwards.
Writes `OUTPUT/vision.json` (every prompt, answer, frame and score), `vision_generation.png` (the
generated frames, caption and score under each) and `vision_understanding.png` (images and answers).

Imports MaxText (through `lwm_plugin.integration`): import it after choosing the JAX platform.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Collection, Literal, Sequence

import jax
import numpy as np

from data_loaders import toy_vision
from data_loaders import vision_prompts as vp
from data_loaders.atomic_file import atomic_path
from data_loaders.lwm_format import FormatOptions, example_from_line
from lwm_plugin import checkpoints, integration
from lwm_plugin.config.files import peek
from lwm_plugin.config.settings import LWMSettings, model_vocab
from lwm_plugin.generation import loop
from lwm_plugin.generation.engine import answer_text, cache_split
from lwm_plugin.integration import inference
from lwm_plugin.model_source import UsageError, locate_model

Layout = Literal["chat", "raw"]
QUESTION = "What is in this image?"
ANSWER_TOKENS = 24        # a caption is about 12 tokens
PROMPT_TOKENS = 384       # the cache's prompt part: an image (259 + wrapper tokens) and a question fit
FIGURE_PANELS = 16        # generated frames shown; understanding shows a quarter of that


@dataclasses.dataclass
class VisionResult:
  """The scores (means of `toy_vision.score`) of both tasks, the files written and the wall time."""
  understanding: dict[str, float]
  generation: dict[str, float]
  prompts: int
  layout: str
  cfg_scale: float
  grid: int                 # frame side in codes (8 in the demo; LWM's VQGAN: 16)
  seen_in_training: int     # held-out captions that also occur in the training corpus's image file
  results: Path
  generation_png: Path
  understanding_png: Path
  wall_s: float


def understanding_ids(vocab: Any, codes: Sequence[int], layout: Layout) -> np.ndarray:
  """The understanding prompt of one image: the vision chat template's, or the training line's
  ("[vision]": `<s>` and the image, through the corpus format's own builder) for "raw"."""
  if layout == "chat":
    return vp.chat_prompt_ids(vocab, QUESTION, vision_FxT=np.asarray(codes)[None])
  line = {"fields": "[vision]", "vision": list(codes)}
  return np.asarray(example_from_line(line, vocab, options=FormatOptions(add_eos=False))["tokens"], np.int32)


def evaluate_vision(config_file: str, model: str, overrides: Sequence[str], *, prompts: int, seed: int,
                    layout: Layout, cfg_scale: float, output: Path, seen_captions: Collection[str] = (),
                    log: Callable[[str], None] = print) -> VisionResult:
  """Scores the model at `model` (a MaxText items or Hugging Face directory of `config_file`'s model) on
  `prompts` held-out images (understanding) and their captions (generation) drawn from `seed`."""
  if layout not in ("chat", "raw"):
    raise UsageError(f"vision prompt layout {layout!r}: expected 'chat' or 'raw'")
  if prompts < 1:
    raise UsageError(f"vision evaluation with {prompts} prompts: expected at least 1")
  start = time.monotonic()
  source = locate_model(model)
  import_dir = output / "vision_import"
  try:
    items = checkpoints.import_for_inference(config_file, source, import_dir, overrides=overrides)
    config, frame_new = _resolved(config_file, items, overrides, rows=2 * prompts)
    vocab, is_text_model = model_vocab(config)
    if is_text_model:
      raise UsageError(f"{config_file}: a text model has no vision vocabulary to evaluate")
    grid = toy_vision.frame_side(vocab.tokens_per_frame)
    scenes = toy_vision.held_out_scenes(seed, prompts, vocab.codebook_size, grid)
    integration.install()
    decoder = inference.CachedDecoder(config, bucket=config.max_prefill_predict_length)  # one prefill shape
    log(f"vision: model imported and decoder built in {time.monotonic() - start:.0f} s")
    log(f"vision: {prompts} held-out images and captions ({layout} prompts, guidance {cfg_scale}), model "
        f"{config.load_parameters_path}, batch {decoder.batch_multiple}, {frame_new} new tokens per frame")
    answers = loop.generate_text(decoder, [understanding_ids(vocab, s.codes, layout) for s in scenes],
                                 max_new_tokens=ANSWER_TOKENS, stop_ids=(vocab.eos_id,),
                                 allowed_V=vp.text_mask(vocab, decoder.vocab_size))
    texts = [answer_text(vocab, a, (vocab.eos_id,)) for a in answers]
    log(f"vision: {prompts} images described in {answers[0].prefill_s + max(a.decode_s for a in answers):.0f} s")
    drawn = loop.generate_vision(decoder, [vp.generation_prompt_ids(vocab, s.caption, "image", raw=layout == "raw")
                                           for s in scenes], vp.unconditional_ids(vocab),
                                 schedule=vp.frame_schedule(vocab, 1),
                                 code_mask_V=vp.code_mask(vocab, decoder.vocab_size), cfg_scale=cfg_scale)
    log(f"vision: {prompts} captions drawn in {drawn[0].prefill_s + max(g.decode_s for g in drawn):.0f} s")
  finally:
    shutil.rmtree(import_dir, ignore_errors=True)
  frames = [vocab.decode(g.new_ids)[0][0] for g in drawn]  # the schedule makes each exactly one frame
  trials = []
  for scene, answer, text, frame in zip(scenes, answers, texts, frames):
    said, shown = toy_vision.parse_answer(text), toy_vision.read_grid(frame, vocab.codebook_size)
    trials.append({"caption": scene.caption, "truth": scene.truth.to_json(), "codes": list(scene.codes),
                   "understanding": {"prompt_ids": answer.prompt_ids.tolist(), "answer": text,
                                     "read": said.to_json(), "score": toy_vision.score(scene.truth, said)},
                   "generation": {"frame": frame.tolist(), "read": shown.to_json(),
                                  "score": toy_vision.score(scene.truth, shown)}})
  understanding = toy_vision.mean_scores([t["understanding"]["score"] for t in trials])
  generation = toy_vision.mean_scores([t["generation"]["score"] for t in trials])
  seen = sum(s.caption in seen_captions for s in scenes)
  output.mkdir(parents=True, exist_ok=True)
  results = output / "vision.json"
  with atomic_path(results) as tmp, open(tmp, "w", encoding="utf-8") as f:
    json.dump({"layout": layout, "cfg_scale": cfg_scale, "seed": seed,
               "question": QUESTION if layout == "chat" else None, "codebook_size": vocab.codebook_size,
               "understanding": understanding, "generation": generation, "seen_in_training": seen,
               "trials": trials}, f)
  codebook = vocab.codebook_size
  gen_png = _figure(output / "vision_generation.png", [
      (t["generation"]["frame"], f"{_wrap(t['caption'])}\n{_verdict(t['generation'])}")
      for t in trials[:FIGURE_PANELS]],
      codebook, f"text-to-image (guidance {cfg_scale}): colour and shape right {generation['correct']:.2f}")
  und_png = _figure(output / "vision_understanding.png", [
      (t["codes"], f"{_wrap('answer: ' + t['understanding']['answer'].strip()[:80])}\n{_verdict(t['understanding'])}")
      for t in trials[:FIGURE_PANELS // 4]], codebook,
      f"image understanding: colour and shape named {understanding['correct']:.2f}")
  result = VisionResult(understanding, generation, prompts, layout, cfg_scale, grid, seen, results, gen_png, und_png,
                        time.monotonic() - start)
  log(f"vision: understanding {understanding['correct']:.2f} (colour {understanding['colour']:.2f}, shape "
      f"{understanding['shape']:.2f}), generation {generation['correct']:.2f} (colour {generation['colour']:.2f}, "
      f"shape {generation['shape']:.2f}) in {result.wall_s:.0f} s; {results}")
  return result


def _resolved(config_file: str, items: Path, overrides: Sequence[str], rows: int) -> tuple[Any, int]:
  """The decoder's config (a cache of `PROMPT_TOKENS` prompt tokens + one frame of new tokens, at least
  `rows` rows over the devices) and the frame's new tokens (codes + `<eov>`)."""
  value = peek(config_file, overrides, "lwm_tokens_per_frame")
  frame_new = 1 + int(LWMSettings.model_fields["lwm_tokens_per_frame"].default if value is None else value)
  total, prompt = cache_split(config_file, [*overrides, f"max_target_length={PROMPT_TOKENS + frame_new}"],
                              max(frame_new, ANSWER_TOKENS))
  per_device = math.ceil(rows / jax.device_count())
  config = inference.decode_config("lwm-demo-vision", config_file, items,
                                   [*overrides, f"per_device_batch_size={per_device}"], total=total, prompt=prompt)
  return config, frame_new


def _wrap(text: str) -> str:
  return "\n".join(textwrap.wrap(text, 36)) or "(empty)"


def _verdict(trial: dict[str, Any]) -> str:
  read, score = trial["read"], trial["score"]
  named = " ".join(w for w in (read["colour"], read["shape"]) if w) or "nothing"
  return f"{'right' if score['correct'] else 'wrong'}: {named}"


def _figure(path: Path, panels: list[tuple[Any, str]], codebook_size: int, title: str) -> Path:
  """A grid of code frames rendered to RGB (`toy_vision.grid_rgb`), each with its text underneath."""
  import matplotlib  # pylint: disable=import-outside-toplevel  (a plotting backend only when drawing)

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel

  cols = min(4, len(panels))
  rows = math.ceil(len(panels) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.6 * rows + 0.4), squeeze=False)  # 0.4: the title
  for ax in axes.reshape(-1):
    ax.axis("off")
  for ax, (codes, text) in zip(axes.reshape(-1), panels):
    ax.imshow(toy_vision.grid_rgb(codes, codebook_size), interpolation="nearest")
    ax.text(0.5, -0.03, text, transform=ax.transAxes, ha="center", va="top", fontsize=7)
  fig.suptitle(f"{title}\n(toy codebook: one colour per band of codes, the shape's texture code drawn as a mark)",
               fontsize=8)
  height = 3.6 * rows + 0.4
  fig.subplots_adjust(left=0.02, right=0.98, top=1 - 0.5 / height, bottom=0.5 / height, hspace=0.35, wspace=0.08)
  with atomic_path(path) as tmp:
    fig.savefig(tmp, format="png", dpi=90)
  plt.close(fig)
  return path
