"""What the demo runs: the tiny stage chain, steps per stage, and the needle grid (no MaxText import).

Two plans share one structure. FULL (`make demo`) runs the whole tiny chain of `docs/stages.md`,
the CPU counterpart of the paper's: text 1K -> 2K -> 4K with RoPE theta doubled at each step
(ring attention over 4 CPU devices), chat fine-tuning on retrieval QA at 4K, and the vision-language
stages 1K -> 2K -> chat 4K (masked packing, per-modality loss weights), the first one starting from
the text model with its vocabulary extended. FAST (`LWM_DEMO_FAST=1`, what CI runs) keeps one stage
of each kind with a few steps and a small grid, to prove the pipeline end to end in under 3 minutes.

Step counts are the demo's, not the YAMLs' (those are what the tests run), as are a stage's
`overrides` where the demo needs other settings; every stage's `load_parameters_path` is set here to
the previous stage's final step. Both plans' corpora draw 8 x 8 toy frames (`tiny_data.DEMO_GRID`);
the demo runs every stage with the matching `lwm_tokens_per_frame` (the YAMLs keep LWM's 256).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Mapping

from data_loaders import tiny_data
from data_loaders.synthetic_corpus import CorpusSpec

FAST_ENV = "LWM_DEMO_FAST"
_TRUE, _FALSE = ("1", "true", "yes"), ("", "0", "false", "no")


@dataclasses.dataclass(frozen=True)
class Stage:
  """One training stage: a shipped YAML, its steps, and the stage whose final checkpoint it starts from."""
  config: str
  steps: int
  init: str | None = None          # run name of the stage it initialises from (None: from scratch)
  extend_vocab: bool = False       # grow `init`'s text vocabulary to the multimodal one first
  overrides: tuple[str, ...] = ()  # the demo's own settings of the stage (key=value), after the YAML's

  @property
  def name(self) -> str:
    """The run name (as the YAML's `run_name`): tiny_text_1k.yml -> tiny-text-1k."""
    return self.config.removesuffix(".yml").replace("_", "-")


@dataclasses.dataclass(frozen=True)
class NeedleGrid:
  """The evaluation: context lengths x depths, `rounds` random needles per cell; N facts / R asked."""
  context_lengths: tuple[int, ...]
  depths: tuple[float, ...]
  rounds: int
  multi: tuple[int, int]           # (N facts in the context, R asked)


@dataclasses.dataclass(frozen=True)
class QAData:
  """The long-context QA phase (`lwm-make-qa` with the needle model as generator): books of `book_sentences`
  sentences with a fact every `sentences_per_fact`, chunks of `chunk_tokens`, examples per target length."""
  book_sentences: tuple[int, ...]
  sentences_per_fact: int
  chunk_tokens: int
  lengths: tuple[int, ...]
  retries: int                     # generations after the first for a chunk whose QA does not parse


@dataclasses.dataclass(frozen=True)
class Plan:
  """The corpus, the stages in order, which one the needle evaluation reads (after its HF export), the grid,
  and the QA data that model writes."""
  mode: str
  corpus: CorpusSpec
  stages: tuple[Stage, ...]
  needle_model: str                # run name of the stage evaluated on needle retrieval (and writing QA data)
  grid: NeedleGrid
  qa: QAData

  def __post_init__(self):
    names = [s.name for s in self.stages]
    for i, stage in enumerate(self.stages):
      if stage.init is not None and stage.init not in names[:i]:
        raise ValueError(f"stage {stage.name} initialises from {stage.init!r}, which does not run before it")
    if self.needle_model not in names:
      raise ValueError(f"needle_model {self.needle_model!r} is not a stage of the plan")

  @property
  def final_stage(self) -> Stage:
    return self.stages[-1]


# The vision stages' caption lines in the paper's two directions as separate sources: text-to-image
# (`[caption],vision`) and captioning (`[vision],caption`, no loss on the image, as the chat stage's YAML).
# The lines' own spec list adds LWM's image-first order with loss on the image (what the `<s><vision>`
# branch of classifier-free guidance predicts); in the tiny model those examples tie an object's colour to
# the backgrounds it was seen on, so held-out scenes come out in a training scene's colour (text-to-image
# after the first vision stage, guidance 1: 8 % of them in the mix, 0.38; none, 0.88; the YAML's 50 %,
# 0.00; BENCHMARKS.md, issue 17). No demo stage trains that branch, hence the demo's mild guidance
# (`run.VISION_CFG_SCALE`).
GENERATION, CAPTIONING = "[caption],vision", "[vision],caption"


def _sources(*sources: tuple[str, str, str | None, float, str]) -> str:
  """`lwm_data_sources=[...]` (JSON, which the config reads as YAML) of (name, file under the corpus, fields
  spec or None for the lines' own, weight, group)."""
  items = [{"name": name, "files": f"${{lwm_data_dir}}/{file}", "weight": weight, "group": group,
            **({"fields": fields} if fields else {})} for name, file, fields, weight, group in sources]
  return f"lwm_data_sources={json.dumps(items)}"


# The demo's first vision stage: 900 steps of 4 rows (the YAML's 30 of 8) at a constant 3e-3 (the YAML's
# cosine from 1e-3), on text-to-image 60 %, captioning 24 %, text 16 % (the YAML's share). Measured from the
# demo's text model on 32 held-out scenes: 300 steps of 8 rows of the lines' both orders, understanding 1.00,
# text-to-image 0.00; 600 steps of 4 rows of this mix, 1.00 and 0.88 (guidance 1); 900, 1.00 and 0.91; a
# step of 4 rows costs about 0.2 s against 0.45-0.6 s for 8 (BENCHMARKS.md, issue 17).
VISION_1K = ("learning_rate=3e-3", "learning_rate_final_fraction=1.0", "per_device_batch_size=1",
             _sources(("image_generation", "image.jsonl", GENERATION, 0.6, "vision"),
                      ("image_captioning", "image.jsonl", CAPTIONING, 0.24, "vision"),
                      ("text", "text.jsonl", None, 0.16, "text")))
# The second: the YAML's images and videos 42 % each and text 16 %, each in the two directions above, at 3e-4
# (the YAML's 1e-3 cosine took the whole chain's text-to-image from 0.91 after the first stage to 0.78 at
# guidance 1.5; 3e-4: 0.97; BENCHMARKS.md).
VISION_2K = ("learning_rate=3e-4",
             _sources(("image_generation", "image.jsonl", GENERATION, 0.3, "image"),
                      ("image_captioning", "image.jsonl", CAPTIONING, 0.12, "image"),
                      ("video_generation", "video.jsonl", GENERATION, 0.3, "video"),
                      ("video_captioning", "video.jsonl", CAPTIONING, 0.12, "video"),
                      ("text", "text.jsonl", None, 0.16, "text")))

FULL = Plan(
    mode="full",
    corpus=tiny_data.DEMO_SPEC,
    stages=(
        Stage("tiny_text_1k.yml", 1100),
        Stage("tiny_text_2k.yml", 150, init="tiny-text-1k"),
        Stage("tiny_text_4k.yml", 60, init="tiny-text-2k"),
        # 300 steps: with one QA-writing chat in five, 250 steps measured single-needle 0.89 (300: 0.93;
        # BENCHMARKS.md, issue 18)
        Stage("tiny_text_chat_4k.yml", 300, init="tiny-text-4k"),
        Stage("tiny_vision_1k.yml", 900, init="tiny-text-4k", extend_vocab=True, overrides=VISION_1K),
        Stage("tiny_vision_2k.yml", 20, init="tiny-vision-1k", overrides=VISION_2K),
        Stage("tiny_vision_chat_4k.yml", 20, init="tiny-vision-2k"),
    ),
    needle_model="tiny-text-chat-4k",
    grid=NeedleGrid(context_lengths=(1000, 2000, 4000), depths=(0.0, 0.25, 0.5, 0.75, 1.0), rounds=3, multi=(4, 1)),
    qa=QAData(book_sentences=(90, 180, 200), sentences_per_fact=12, chunk_tokens=200, lengths=(1024, 2048), retries=2),
)

FAST = Plan(
    mode="fast",
    corpus=dataclasses.replace(tiny_data.SPEC, needle_value="word", qa_recalls=True, grid=tiny_data.DEMO_GRID),
    stages=(
        Stage("tiny_text_1k.yml", 6),
        Stage("tiny_text_2k.yml", 3, init="tiny-text-1k"),
        Stage("tiny_vision_1k.yml", 3, init="tiny-text-2k", extend_vocab=True, overrides=VISION_1K),
    ),
    needle_model="tiny-text-2k",
    grid=NeedleGrid(context_lengths=(500, 1000), depths=(0.0, 1.0), rounds=1, multi=(2, 2)),
    qa=QAData(book_sentences=(50,), sentences_per_fact=12, chunk_tokens=100, lengths=(512,), retries=0),
)


def plan_from_env(environ: Mapping[str, str]) -> Plan:
  """FAST when LWM_DEMO_FAST is 1/true/yes, FULL when unset or 0/false/no; anything else is an error."""
  value = environ.get(FAST_ENV, "").strip().lower()
  if value in _TRUE:
    return FAST
  if value in _FALSE:
    return FULL
  raise ValueError(f"{FAST_ENV}={environ[FAST_ENV]!r}: expected 1/true/yes (fast demo) or 0/false/no (full demo)")
