"""A deterministic synthetic corpus in LWM's JSONL format: needles in haystacks, shapes and colours.

Nothing is downloaded: text comes from a small grammar, images and videos from a renderer of
coloured shapes on a square code grid (16 x 16 as LWM's VQGAN, or smaller for a tiny model).
Everything is a pure function of a seed, so the demo and the tests see the same data on every machine.

* Text documents: filler sentences with planted facts in the paper's needle format,
  "The special magic {city} number is: {7 digits}." (LWM `eval_needle.py`), or its word form
  "The special magic {city} word is: {word}." (`needle_value="word"`, the demo's: one tokenizer
  piece per value), each recalled at the end; short documents and copy drills (a run of random
  words repeated) for the first stage of the tiny chain.
* Retrieval chats: a document with needles plus a question in the chat template
  (`data_loaders.chat_template`), the answer being the number(s): the long-context QA of the chat
  stages, single-needle and multi-needle (N facts in the context, R asked; paper Table 3).
* QA-writing chats: lwm-make-qa's prompt around a paragraph with a fact, answered by one question
  and its answer about the fact (`qa_writing_chat`): the task of the chat model that writes the
  chat stages' long-context QA data (paper Sec. 3.3); and books with facts for it (`needle_book`).
* Images and videos whose codes are predictable from the caption: each colour owns a band of
  codes and each shape a texture pattern inside it, so "a red circle at the top left on a blue
  background" determines the frame up to the texture. Videos move the shape a fixed number of
  cells per frame. Lines carry both modality orders (`lwm_format.CAPTION_FIELDS`, the paper's swap:
  text-to-image, and the image with loss on it followed by its caption).

Token counts depend on the tokenizer; the generator works in sentences and frames and leaves
budgets in tokens to the loader (packing, truncation) and to the needle evaluation.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zlib
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from data_loaders import longqa
from data_loaders.atomic_file import atomic_path
from data_loaders.lwm_format import CAPTION_FIELDS

CITIES = (
    "Amsterdam", "Athens", "Bangkok", "Barcelona", "Berlin", "Bogota", "Boston", "Brussels", "Budapest", "Cairo",
    "Chicago", "Copenhagen", "Dublin", "Helsinki", "Istanbul", "Jakarta", "Kyoto", "Lagos", "Lima", "Lisbon",
    "London", "Madrid", "Manila", "Melbourne", "Mexico", "Milan", "Montreal", "Moscow", "Mumbai", "Nairobi",
    "Oslo", "Paris", "Prague", "Rome", "Santiago", "Seoul", "Stockholm", "Sydney", "Tokyo", "Toronto",
    "Vienna", "Warsaw", "Zurich",
)

_SUBJECTS = ("the old farmer", "a quiet student", "the river", "my neighbour", "the small boat", "a tall tree",
             "the baker", "the morning train", "a grey cat", "the lighthouse", "our teacher", "the market")
_VERBS = ("walked past", "looked at", "waited near", "talked about", "painted", "followed", "remembered",
          "carried", "noticed", "visited", "forgot", "described")
_OBJECTS = ("the green hills", "a wooden bridge", "the empty square", "an open window", "the long road",
            "a field of wheat", "the harbour", "a broken clock", "the evening sky", "a stone wall",
            "the crowded street", "a letter",
            # the words of the pictures' captions, so that the text stages already know them (as a
            # pretrained LLM knows the words LWM's captions use)
            "a red circle", "the green triangle", "a blue cross", "the yellow square", "a white kite",
            "the black cross", "a purple circle", "the orange triangle", "a red square on a black background")
_ENDINGS = ("before noon", "in the rain", "without a word", "for a while", "once again", "at dusk",
            "with some care", "after lunch", "as usual", "in silence",
            "at the top left", "at the top right", "at the bottom left", "at the bottom right")

COLOURS = ("red", "green", "blue", "yellow", "white", "black", "purple", "orange")
SHAPES = ("square", "circle", "triangle", "cross")
_PLACES = {"top left": (0, 0), "top right": (0, 1), "bottom left": (1, 0), "bottom right": (1, 1)}
_MOVES = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}
GRID = 16  # 16 x 16 codes per frame, as LWM's VQGAN (the default; `grid=` gives another side)
MIN_GRID = 8


def shape_side(grid: int) -> int:
  """Cells per side of a shape on a `grid` x `grid` frame: 6 on LWM's 16 (3/8 of it), at least 4 so
  the four shapes keep distinct outlines; ValueError below MIN_GRID (no room for four places)."""
  if grid < MIN_GRID:
    raise ValueError(f"grid={grid}: toy frames need at least {MIN_GRID} x {MIN_GRID} codes")
  return max(4, 3 * grid // 8)


NEEDLE_VALUES = ("number", "word")
# The values of "word" needles: common words the filler, captions and cities never use, so that each is
# one piece of the tiny tokenizer and appears only where it is planted (the number needle's 7 digits
# are 7 pieces, each of which must be found again; a word needle's value is one retrieval).
VALUE_WORDS = (
    "apple", "banana", "cherry", "lemon", "mango", "melon", "olive", "peach", "pear", "plum", "grape", "lime",
    "almond", "ginger", "pepper", "garlic", "tiger", "zebra", "otter", "falcon", "eagle", "horse", "camel", "whale",
    "shark", "panda", "koala", "raven", "heron", "moose", "bison", "llama", "amber", "coral", "pearl", "ruby",
    "tulip", "silver", "copper", "iron", "cobalt", "marble", "granite", "quartz", "onyx", "topaz", "violin", "guitar",
    "piano", "flute", "drum", "harp", "trumpet", "cello", "rocket", "anchor", "candle", "compass", "ladder",
    "mirror", "pillow", "saddle", "kettle", "hammer",
)


def check_needle_value(kind: str) -> str:
  """`kind` itself when it is one of NEEDLE_VALUES; a ValueError naming it otherwise."""
  if kind not in NEEDLE_VALUES:
    raise ValueError(f"needle value {kind!r}: expected one of {', '.join(NEEDLE_VALUES)}")
  return kind


def needle_sentence(city: str, value: str, kind: str = "number") -> str:
  """The paper's needle (LWM `eval_needle.py`), or its word form: "The special magic {city} word is: {word}."."""
  return f"The special magic {city} {check_needle_value(kind)} is: {value}."


def needle_question(cities: Sequence[str], kind: str = "number") -> str:
  """LWM's single-needle question, or its multi-needle form for several cities (word needles: "word")."""
  if len(cities) == 1:
    return f"What is the special magic {cities[0]} {check_needle_value(kind)}?"
  names = ", ".join(cities[:-1]) + f", and {cities[-1]}" if len(cities) > 2 else " and ".join(cities)
  return f"What are the special magic {check_needle_value(kind)}s for {names}?"


def needle_answer(needles: Sequence["Needle"]) -> str:
  """The answer to a retrieval question: the asked needle sentences, repeated from the context.

  Answering with the whole sentence (rather than the bare value) makes retrieval a copy of the
  context after the matching "{city} number is:"; LWM's scoring (the number appears in the answer)
  accepts both forms.
  """
  return " ".join(n.sentence for n in needles)


def filler_sentences(rng: np.random.Generator, n: int) -> list[str]:
  """`n` sentences of haystack text from a small grammar."""
  picks = [rng.integers(len(part), size=n) for part in (_SUBJECTS, _VERBS, _OBJECTS, _ENDINGS)]
  return [f"{_SUBJECTS[s].capitalize()} {_VERBS[v]} {_OBJECTS[o]} {_ENDINGS[e]}."
          for s, v, o, e in zip(*picks)]


@dataclasses.dataclass(frozen=True)
class Needle:
  city: str
  value: str    # a 7-digit number (kind "number", the paper's) or one of VALUE_WORDS (kind "word")
  depth: float  # fraction of the document before the needle, 0..1
  kind: str = "number"

  @property
  def sentence(self) -> str:
    return needle_sentence(self.city, self.value, self.kind)


def random_needles(rng: np.random.Generator, count: int, depths: Sequence[float] | None = None,
                   kind: str = "number") -> list[Needle]:
  """`count` needles with distinct cities and values (7-digit numbers or words), at random (or given) depths."""
  cities = rng.choice(len(CITIES), size=count, replace=False)
  if check_needle_value(kind) == "number":
    values = [str(n) for n in rng.integers(1_000_000, 10_000_000, size=count)]
  else:
    values = [VALUE_WORDS[i] for i in rng.integers(len(VALUE_WORDS), size=count)]
  depths = rng.uniform(0.0, 1.0, size=count) if depths is None else depths
  return [Needle(CITIES[c], v, float(d), kind) for c, v, d in zip(cities, values, depths)]


def plant(sentences: Sequence[str], needles: Iterable[Needle]) -> str:
  """Inserts each needle sentence at its depth, on a sentence boundary."""
  out = list(sentences)
  for needle in sorted(needles, key=lambda n: n.depth, reverse=True):
    out.insert(int(round(needle.depth * len(sentences))), needle.sentence)
  return " ".join(out)


def text_document(rng: np.random.Generator, n_sentences: int, n_needles: int, kind: str = "number",
                  qa_recalls: bool = False) -> dict[str, Any]:
  """A plain text document (loss on every token) with planted needles, each recalled near the end.

  The recall repeats the fact after more filler, so plain language-model training on these
  documents already rewards copying a fact from far back in the context (an induction task),
  the skill retrieval needs. With `qa_recalls` the needles sit anywhere in the document, each recall
  is the retrieval chat's question and answer as plain text ("What is the special magic Oslo word?
  The special magic Oslo word is: otter."), the form the chat stage and the needle evaluation ask
  in, and the loss is on the recalls only (`"[text],recall"`): the filler is context, as a chat's
  document is, and the gradient goes to retrieval rather than to the filler's grammar.
  """
  if qa_recalls:
    needles = random_needles(rng, n_needles, kind=kind)
    recalls = [f"{needle_question([needles[i].city], kind)} {needles[i].sentence}" for i in rng.permutation(n_needles)]
    return {"fields": "[text],recall", "text": plant(filler_sentences(rng, n_sentences), needles),
            "recall": " ".join(recalls)}
  needles = random_needles(rng, n_needles, depths=rng.uniform(0.0, 0.5, size=n_needles), kind=kind)
  recalls = [f"Recall: {needles[i].sentence}" for i in rng.permutation(n_needles)]
  body = plant(filler_sentences(rng, n_sentences), needles)
  return {"fields": "text", "text": " ".join([body, *filler_sentences(rng, 2), *recalls])}


def retrieval_chat(rng: np.random.Generator, n_sentences: int, n_needles: int, n_asked: int, kind: str = "number",
                   follow_ups: bool = False) -> dict[str, Any]:
  """A chat example: a document with `n_needles` facts, a question about `n_asked` of them, the answer.

  With `follow_ups`, every needle not asked first is then asked in a turn of its own (loss on each
  answer), so one document teaches as many retrievals as it has needles.
  """
  needles = random_needles(rng, n_needles, kind=kind)
  order = rng.permutation(n_needles)
  asked = [needles[i] for i in sorted(order[:n_asked])]
  document = plant(filler_sentences(rng, n_sentences), needles)
  question = needle_question([n.city for n in asked], kind)
  messages = [{"role": "user", "content": f"{document} {question}"},
              {"role": "assistant", "content": needle_answer(asked)}]
  for i in order[n_asked:] if follow_ups else ():
    messages += [{"role": "user", "content": needle_question([needles[i].city], kind)},
                 {"role": "assistant", "content": needles[i].sentence}]
  return {"messages": messages}


def qa_writing_chat(rng: np.random.Generator, n_sentences: int, n_needles: int, kind: str = "number",
                    template: str = longqa.DEFAULT_TEMPLATE) -> dict[str, Any]:
  """A chat example that teaches writing QA data (`lwm-make-qa`'s generator task, paper Sec. 3.3): the user
  turn is `template` (lwm-make-qa's prompt) around a paragraph with `n_needles` facts, the answer one
  question-answer pair about one of them, in the form `longqa.parse_qa` reads:

      Question: What is the special magic Oslo word?
      Answer: The special magic Oslo word is: otter.

  The answer is the retrieval chats' answer (the needle sentence), so the long-context examples that
  lwm-make-qa assembles from these pairs ask and answer as the corpus's retrieval chats do.
  """
  needles = random_needles(rng, n_needles, kind=kind)
  asked = needles[int(rng.integers(n_needles))]
  paragraph = plant(filler_sentences(rng, n_sentences), needles)
  answer = f"Question: {needle_question([asked.city], kind)}\nAnswer: {asked.sentence}"
  return {"messages": [{"role": "user", "content": longqa.paragraph_prompt(paragraph, template)},
                       {"role": "assistant", "content": answer}]}


def needle_book(rng: np.random.Generator, book_id: str, n_sentences: int, sentences_per_needle: int,
                kind: str = "number") -> dict[str, Any]:
  """A book for `lwm-make-qa` (`{"id", "text"}`): filler with one fact per `sentences_per_needle` sentences
  at random depths (distinct cities, so at most len(CITIES) facts), the facts its QA pairs can ask about."""
  count = max(1, min(len(CITIES), n_sentences // sentences_per_needle))
  return {"id": book_id, "text": plant(filler_sentences(rng, n_sentences), random_needles(rng, count, kind=kind))}


def drill_words() -> tuple[str, ...]:
  """The words of the copy drills: every word the corpus's text uses (filler, cities, needle values, captions)."""
  parts = (_SUBJECTS, _VERBS, _OBJECTS, _ENDINGS, COLOURS, SHAPES, tuple(_PLACES), tuple(_MOVES))
  words = {w for part in parts for phrase in part for w in phrase.split()}
  return tuple(sorted(words | set(CITIES) | set(VALUE_WORDS)))


def copy_drill(rng: np.random.Generator, words: int, repeats: int) -> dict[str, Any]:
  """A copy drill: a run of `words` distinct random words, repeated `repeats` times (plain text, loss
  on every token).

  Everything after the first run is predictable only by copying from `words` tokens back (each
  drill word is one piece of the tiny tokenizer). Measured with a transformers reference of the tiny
  model (BENCHMARKS.md, issue 17): runs of a fixed length (of these words, or of random token ids) are
  learned within about 150 steps, and half the rows of such drills next to needle chats took
  single-needle retrieval from 0.33 to 0.98 in 1,200 steps; runs of varying length (8 to 40 words) are
  not learned at all in 400 steps.
  """
  run = " ".join(rng.choice(drill_words(), size=words, replace=False))
  return {"fields": "text", "text": " ".join([run] * repeats)}


# ----------------------------------------------------------------------------------------------
# Shapes and colours
# ----------------------------------------------------------------------------------------------


def colour_band(codebook_size: int) -> int:
  """Codes per colour: each colour owns an equal band of the codebook (background + one texture per shape)."""
  band = codebook_size // len(COLOURS)
  if band < len(SHAPES) + 1:
    raise ValueError(f"codebook_size={codebook_size} too small: need at least {len(COLOURS) * (len(SHAPES) + 1)}")
  return band


def colour_code(colour: int, texture: int, codebook_size: int) -> int:
  """Code of a cell: each colour owns an equal band of the codebook, each texture a code in it."""
  return colour * colour_band(codebook_size) + texture


def _shape_mask(shape: str, s: int) -> np.ndarray:
  r, c = np.mgrid[0:s, 0:s]
  centre = (s - 1) / 2
  if shape == "square":
    return np.ones((s, s), bool)
  if shape == "circle":
    return (r - centre) ** 2 + (c - centre) ** 2 <= (s / 2) ** 2
  if shape == "triangle":
    return np.abs(c - centre) <= r / 2 + 0.5
  if shape == "cross":
    return (np.abs(r - centre) < 1) | (np.abs(c - centre) < 1)
  raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render_frame(shape: str, colour: str, background: str, row: int, col: int, codebook_size: int,
                 grid: int = GRID) -> np.ndarray:
  """A `grid` x `grid` frame (flattened row-major) with the shape's top-left cell at (row, col)."""
  side = shape_side(grid)
  if not (0 <= row <= grid - side and 0 <= col <= grid - side):
    raise ValueError(f"shape at ({row}, {col}) does not fit a {grid}x{grid} frame")
  frame = np.full((grid, grid), colour_code(COLOURS.index(background), 0, codebook_size), np.int32)
  texture = 1 + SHAPES.index(shape)
  window = frame[row:row + side, col:col + side]
  window[_shape_mask(shape, side)] = colour_code(COLOURS.index(colour), texture, codebook_size)
  return frame.reshape(-1)


def _pick_scene(rng: np.random.Generator) -> tuple[str, str, str]:
  colour, background = rng.choice(len(COLOURS), size=2, replace=False)
  return SHAPES[rng.integers(len(SHAPES))], COLOURS[colour], COLOURS[background]


def is_held_out(shape: str, colour: str, background: str) -> bool:
  """The images no training file holds: those whose colour, shape and background indices sum to a
  multiple of 8 (28 of the 224 triples). Every colour-shape pair still occurs in training on at least
  6 of its 7 backgrounds, so a held-out image is a known object on a background never seen with it."""
  return (COLOURS.index(colour) + SHAPES.index(shape) + COLOURS.index(background)) % len(COLOURS) == 0


def image_caption(rng: np.random.Generator, codebook_size: int, grid: int = GRID, *,
                  held_out: bool = False) -> dict[str, Any]:
  """An image-caption pair in both modality orders (`CAPTION_FIELDS`) on a `grid` x `grid` frame:
  a training image, or with `held_out` one of the evaluation's (`is_held_out`)."""
  shape, colour, background = _pick_scene(rng)
  while is_held_out(shape, colour, background) != held_out:
    shape, colour, background = _pick_scene(rng)
  place = list(_PLACES)[rng.integers(len(_PLACES))]
  r, c = _PLACES[place]
  far = grid - shape_side(grid) - 1
  codes = render_frame(shape, colour, background, 1 + r * (far - 1), 1 + c * (far - 1), codebook_size, grid)
  caption = f"a {colour} {shape} at the {place} on a {background} background"
  return {"fields": list(CAPTION_FIELDS), "caption": caption, "vision": codes.tolist()}


def video_caption(rng: np.random.Generator, n_frames: int, codebook_size: int, grid: int = GRID) -> dict[str, Any]:
  """A short video of a shape moving one cell per frame, in both modality orders (`CAPTION_FIELDS`)."""
  shape, colour, background = _pick_scene(rng)
  move = list(_MOVES)[rng.integers(len(_MOVES))]
  dr, dc = _MOVES[move]
  span = grid - shape_side(grid)
  if n_frames > span + 1:
    raise ValueError(f"n_frames={n_frames}: a shape can move at most {span} cells in a {grid}-cell frame")
  start_r = span // 2 if dr == 0 else (0 if dr > 0 else span)
  start_c = span // 2 if dc == 0 else (0 if dc > 0 else span)
  frames = [render_frame(shape, colour, background, start_r + i * dr, start_c + i * dc, codebook_size, grid)
            for i in range(n_frames)]
  caption = f"a {colour} {shape} moving {move} on a {background} background"
  return {"fields": list(CAPTION_FIELDS), "caption": caption, "vision": np.concatenate(frames).tolist()}


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def write_jsonl(path: str | os.PathLike, lines: Iterable[dict[str, Any]]) -> Path:
  """Writes one JSON object per line, atomically (temp file in the same directory, then rename)."""
  path = Path(path)
  with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
    for line in lines:
      f.write(json.dumps(line, separators=(",", ":")) + "\n")
  return path


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
  """How much of each kind of data to generate (all counts are lines)."""
  seed: int = 0
  text_documents: int = 200
  document_sentences: tuple[int, int] = (20, 200)
  log_uniform_lengths: bool = False  # document lengths log-uniform in the range (as many short as long)
  short_documents: int = 0           # documents of `short_sentences`, written to text_short.jsonl
  short_sentences: tuple[int, int] = (2, 20)
  needles_per_document: int = 2
  sentences_per_needle: int = 0      # > 0: one needle per this many sentences (at least 1) instead
  needle_value: str = "number"       # "number" (the paper's 7 digits) or "word" (VALUE_WORDS)
  qa_recalls: bool = False           # text recalls as question + answer; chats ask every needle (follow-ups)
  copy_drills: int = 0               # induction drills (`copy_drill`), written to copy_drill.jsonl
  drill_words: int = 32              # words per run of a copy drill
  drill_repeats: int = 8             # runs per drill
  retrieval_chats: int = 400
  chat_needles: tuple[int, ...] = (1, 2, 4)  # N facts per context; R asked is 1 or 2 (at most N)
  qa_writing_chats: int = 0          # QA-writing chats (`qa_writing_chat`), written to qa_writing.jsonl
  qa_writing_sentences: tuple[int, int] = (4, 24)  # sentences per paragraph (1 or 2 facts in it)
  images: int = 400
  videos: int = 100
  video_frames: int = 4
  codebook_size: int = 8192
  grid: int = GRID                   # frame side in codes: the model's lwm_tokens_per_frame is grid ** 2

  def __post_init__(self):
    check_needle_value(self.needle_value)
    shape_side(self.grid)

  @property
  def tokens_per_frame(self) -> int:
    """Codes per frame: the `lwm_tokens_per_frame` of a model trained on this corpus."""
    return self.grid * self.grid


def generate_corpus(out_dir: str | os.PathLike, spec: CorpusSpec = CorpusSpec()) -> dict[str, Path]:
  """Writes `text.jsonl`, `retrieval_chat.jsonl`, `image.jsonl`, `video.jsonl` (and `text_short.jsonl`,
  `qa_writing.jsonl`, `copy_drill.jsonl` when `spec.short_documents`, `spec.qa_writing_chats`,
  `spec.copy_drills`) under `out_dir`.

  Each file has its own random stream (seeded from `spec.seed` and the file's name), so changing
  one count does not change the other files.
  """
  out = Path(out_dir)

  def rng_for(name: str) -> np.random.Generator:
    return np.random.default_rng([spec.seed, zlib.crc32(name.encode())])

  lo, hi = spec.document_sentences

  def length(r: np.random.Generator) -> int:
    if spec.log_uniform_lengths:
      return int(np.exp(r.uniform(np.log(lo), np.log(hi + 1))))
    return int(r.integers(lo, hi + 1))

  def needles(n_sentences: int) -> int:
    if spec.sentences_per_needle > 0:
      return max(1, min(len(CITIES), n_sentences // spec.sentences_per_needle))
    return spec.needles_per_document

  r = rng_for("text")
  text = []
  for _ in range(spec.text_documents):
    n_sentences = length(r)
    text.append(text_document(r, n_sentences, needles(n_sentences), spec.needle_value, spec.qa_recalls))
  r = rng_for("text_short")
  short = []
  for _ in range(spec.short_documents):
    n_sentences = int(r.integers(spec.short_sentences[0], spec.short_sentences[1] + 1))
    short.append(text_document(r, n_sentences, needles(n_sentences), spec.needle_value, spec.qa_recalls))
  r = rng_for("retrieval_chat")
  chats = []
  for _ in range(spec.retrieval_chats):
    n = int(r.choice(spec.chat_needles))
    chats.append(retrieval_chat(r, length(r), n, int(r.integers(1, min(n, 2) + 1)), spec.needle_value,
                                spec.qa_recalls))
  r = rng_for("image")
  images = [image_caption(r, spec.codebook_size, spec.grid) for _ in range(spec.images)]
  r = rng_for("video")
  videos = [video_caption(r, spec.video_frames, spec.codebook_size, spec.grid) for _ in range(spec.videos)]
  files = [("text", text), ("retrieval_chat", chats), ("image", images), ("video", videos)]
  if spec.short_documents:
    files.append(("text_short", short))
  if spec.qa_writing_chats:
    r = rng_for("qa_writing")
    lo_q, hi_q = spec.qa_writing_sentences
    files.append(("qa_writing", [qa_writing_chat(r, int(r.integers(lo_q, hi_q + 1)), int(r.integers(1, 3)),
                                                 spec.needle_value) for _ in range(spec.qa_writing_chats)]))
  if spec.copy_drills:
    r = rng_for("copy_drill")
    files.append(("copy_drill", [copy_drill(r, spec.drill_words, spec.drill_repeats) for _ in range(spec.copy_drills)]))
  return {name: write_jsonl(out / f"{name}.jsonl", lines) for name, lines in files}
