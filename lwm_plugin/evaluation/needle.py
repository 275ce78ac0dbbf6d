"""Needle-in-a-haystack retrieval (paper Sec. 3.4, Fig. 5 single needle, Table 3 multi-needle).

The task is LWM's (`scripts/eval_needle.py`, `eval_needle_multi.py`): a haystack of filler text
with N planted facts "The special magic {city} number is: {7 digits}.", then a question about R of
them in the chat template; the answer is correct when it contains the number (for R > 1: the
fraction of asked numbers it contains). `NeedleTask.value="word"` plants the demo's word form
instead ("The special magic {city} word is: {word}.", scored as a whole word). The grid is context length x needle depth, each cell
averaged over `rounds` random needles. This module builds prompts and scores answers; running a
model is the caller's (`lwm_plugin.integration.inference`), so it stays free of MaxText.

Haystack filler comes from `data_loaders.synthetic_corpus` with its own seed stream, so a model
trained on the synthetic corpus is evaluated on sentences and needles it has not seen verbatim, or
from a text file (`read_haystack`: any plain UTF-8 text such as a PG19 book, or LWM's JSONL haystack
with one `{"text": ...}` per line). Two prompt formats:

  chat  our chat template (`data_loaders.chat_template`), the needle sentence "The special magic
        {city} number is: {number}." between sentences: the layout the demo's chat model is trained on.
  lwm   LWM's `eval_needle.py` exactly: "<s>You are a helpful assistant. USER: {context} {question}
        Don't give information outside the document or repeat your findings. Keep your response short
        and direct. ASSISTANT: " as one string, the needle "\nThe special magic {city} number is:
        {number}\n", its questions (`eval_needle_multi.py` for several needles). Use it with a
        converted LWM-Text-Chat-1M and a PG19 haystack for the paper's Fig. 5 / Table 3.

With a haystack file (or the lwm format) a prompt is assembled as text: a window of the haystack's
tokens (round r starts r x the longest context length into the file, wrapping around), each needle
inserted at its depth (a fraction of the window's characters, moved back to the end of a sentence
as LWM does; depth 1 appends), then the window shrunk until the whole prompt fits `context_length`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np

from data_loaders import synthetic_corpus as corpus
from data_loaders.atomic_file import atomic_path
from data_loaders.chat_template import chat_example
from data_loaders.vocab import MultimodalVocab


@dataclasses.dataclass(frozen=True)
class NeedleTask:
  """One evaluation setting: N facts in the context, R of them asked (paper Table 3), and the needles'
  values: "number" (the paper's 7 digits) or "word" (`synthetic_corpus.VALUE_WORDS`, the demo's)."""
  n_needles: int = 1
  n_asked: int = 1
  value: str = "number"

  def __post_init__(self):
    if not 1 <= self.n_asked <= self.n_needles:
      raise ValueError(f"need 1 <= asked ({self.n_asked}) <= needles ({self.n_needles})")
    corpus.check_needle_value(self.value)

  @property
  def name(self) -> str:
    return "single" if self.n_needles == 1 else f"multi N={self.n_needles} R={self.n_asked}"


@dataclasses.dataclass
class Trial:
  """One prompt of the grid and, once answered, its response and score."""
  context_length: int
  depth: float
  round: int
  cities: list[str]
  values: list[str]
  tokens: np.ndarray
  prompt: str = ""                    # the prompt's text (its ids decoded), written to the results file
  response: str = ""
  score: float = float("nan")
  city_named: float = float("nan")    # diagnostics below the all-or-nothing score (`partial_credit`)
  chars_right: float = float("nan")

  def to_json(self) -> dict:
    return {"context_length": self.context_length, "depth": self.depth, "round": self.round,
            "prompt_tokens": int(len(self.tokens)), "prompt": self.prompt, "cities": self.cities, "values": self.values,
            "response": self.response, "score": self.score, "city_named": self.city_named,
            "chars_right": self.chars_right}


def _value_runs(response: str, kind: str) -> list[str]:
  """The response's digit runs for number needles, its words for word needles."""
  return re.findall(r"\d+" if corpus.check_needle_value(kind) == "number" else r"[A-Za-z]+", response)


def score_answer(response: str, values: Sequence[str], kind: str = "number") -> float:
  """Fraction of the asked values the response contains: a number as a substring (LWM's rule), a word
  as a whole word (so "pear" is not found in "pearl"); `kind` is the task's needle value."""
  if corpus.check_needle_value(kind) == "number":
    return sum(v in response for v in values) / len(values)
  words = set(_value_runs(response, kind))
  return sum(v in words for v in values) / len(values)


def partial_credit(response: str, cities: Sequence[str], values: Sequence[str],
                   kind: str = "number") -> tuple[float, float]:
  """(fraction of the asked cities the response names, fraction of the asked values' characters it gets
  right). A value's characters (a number's digits, a word's letters) are compared position by position
  with the best-matching run of the response (for numbers, chance is 0.1). Diagnostics for models below
  LWM's all-or-nothing score: they show whether a model names the asked fact and copies part of its value.
  """
  runs = _value_runs(response, kind)
  named = sum(city in response for city in cities) / len(cities)
  chars = [max((sum(a == b for a, b in zip(run, value)) / len(value) for run in runs), default=0.0)
           for value in values]
  return named, float(np.mean(chars))


def _prompt_tokens(vocab: MultimodalVocab, sentences: list[str], needles: list[corpus.Needle],
                   asked: list[corpus.Needle]) -> np.ndarray:
  question = corpus.needle_question([n.city for n in asked], asked[0].kind)
  content = f"{corpus.plant(sentences, needles)} {question}"
  return chat_example(vocab, [{"role": "user", "content": content}])["tokens"]


PromptFormat = Literal["chat", "lwm"]
PROMPT_FORMATS = ("chat", "lwm")
LWM_TEMPLATE = ("You are a helpful assistant. USER: {context} {question} Don't give information outside the document "
                "or repeat your findings. Keep your response short and direct. ASSISTANT: ")


def lwm_needle(city: str, number: str) -> str:
  """LWM's needle text, inserted into the haystack as is."""
  return f"\nThe special magic {city} number is: {number}\n"


def lwm_question(cities: Sequence[str], multi_needle: bool) -> str:
  """LWM's questions: `eval_needle.py` (one needle), `eval_needle_multi.py` (several in the context)."""
  if not multi_needle:
    return f"What is the special magic {cities[0]} number?"
  if len(cities) == 1:
    return f"What is the special magic number for {cities[0]}?"
  return f"What are the special magic numbers for {', '.join(cities[:-1])}, and {cities[-1]}?"


@dataclasses.dataclass(frozen=True)
class Haystack:
  """The filler text of a grid: a file's token ids, or None for the synthetic corpus's sentences."""
  ids: np.ndarray | None = None
  source: str = "synthetic"


def read_haystack(path: str | os.PathLike, vocab: MultimodalVocab) -> Haystack:
  """A haystack file's token ids: plain UTF-8 text, or (`.jsonl`) LWM's lines `{"text": "..."}` concatenated.
  Raises ValueError naming the file (and line) if it is unreadable, malformed or empty."""
  path = Path(path)
  try:
    raw = path.read_text(encoding="utf-8")
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f"--haystack {path}: not a readable UTF-8 text file ({e})") from e
  if path.suffix == ".jsonl":
    parts = []
    for number, line in enumerate(raw.splitlines(), 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"--haystack {path}:{number}: not JSON ({e.msg})") from e
      if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise ValueError(f"--haystack {path}:{number}: expected an object with a string \"text\"")
      parts.append(record["text"])
    raw = "".join(parts)
  ids = np.asarray(vocab.encode_text(raw), np.int32)
  if len(ids) == 0:
    raise ValueError(f"--haystack {path}: no text")
  return Haystack(ids, str(path))


def _insert_needles(text: str, needles: Sequence[str], depths: Sequence[float]) -> str:
  """Each needle at its depth (fraction of the characters), moved back to just after a sentence's '.'."""
  spots = []
  for needle, depth in zip(needles, depths):
    pos = len(text) if depth >= 1.0 else text.rfind(".", 0, int(len(text) * depth)) + 1
    spots.append((pos, needle))
  for pos, needle in sorted(spots, key=lambda x: x[0], reverse=True):
    text = text[:pos] + needle + text[pos:]
  return text


def _text_prompt(vocab: MultimodalVocab, fmt: PromptFormat, context: str, question: str) -> np.ndarray:
  if fmt == "lwm":
    return np.asarray([vocab.bos_id, *vocab.encode_text(LWM_TEMPLATE.format(context=context, question=question))],
                      np.int32)
  return np.asarray(chat_example(vocab, [{"role": "user", "content": f"{context} {question}"}])["tokens"], np.int32)


def _window_trial(vocab: MultimodalVocab, task: NeedleTask, context_length: int, depth: float,
                  rng: np.random.Generator, round_index: int, haystack: Haystack, fmt: PromptFormat,
                  start: int) -> Trial:
  """A prompt assembled as text from a window of haystack tokens (module docstring), at most context_length."""
  needles = corpus.random_needles(rng, task.n_needles, kind=task.value)
  needles[0] = dataclasses.replace(needles[0], depth=depth)
  asked = [needles[0]] + [needles[i] for i in sorted(rng.choice(np.arange(1, task.n_needles),
                                                                size=task.n_asked - 1, replace=False))]
  cities = [n.city for n in asked]
  if fmt == "lwm":
    texts, question = [lwm_needle(n.city, n.value) for n in needles], lwm_question(cities, task.n_needles > 1)
  else:
    texts, question = [" " + n.sentence for n in needles], corpus.needle_question(cities, task.value)
  ids = haystack.ids
  if ids is None:  # synthetic filler, about 12 tokens a sentence
    ids = np.asarray(vocab.encode_text(" ".join(corpus.filler_sentences(rng, context_length // 8 + 1))), np.int32)
    start = 0

  def prompt(k: int) -> np.ndarray:
    window = np.take(ids, np.arange(start, start + k), mode="wrap")
    context = _insert_needles(vocab.decode_text(window) if k else "", texts, [n.depth for n in needles])
    return _text_prompt(vocab, fmt, context, question)

  k = context_length - len(prompt(0))
  if k < 1:
    raise ValueError(f"context length {context_length} is too short for the needles and the question")
  tokens = prompt(k)
  while len(tokens) > context_length and k > 0:  # re-encoding the window's text may merge or split pieces
    k = max(0, k - (len(tokens) - context_length))
    tokens = prompt(k)
  if len(tokens) > context_length:
    raise ValueError(f"context length {context_length} is too short for the needles and the question")
  return Trial(context_length, depth, round_index, cities, [n.value for n in asked], tokens)


def build_trial(vocab: MultimodalVocab, task: NeedleTask, context_length: int, depth: float,
                rng: np.random.Generator, round_index: int) -> Trial:
  """A prompt of at most `context_length` tokens, with the needles at `depth` of the haystack.

  With several needles, the first is at `depth` and the others at random depths (as LWM's
  multi-needle script places them).
  """
  needles = corpus.random_needles(rng, task.n_needles, kind=task.value)
  needles[0] = dataclasses.replace(needles[0], depth=depth)
  asked = [needles[0]] + [needles[i] for i in sorted(rng.choice(np.arange(1, task.n_needles),
                                                                size=task.n_asked - 1, replace=False))]
  # Grow the haystack past the budget with a cheap per-sentence estimate, then trim exactly.
  sentences: list[str] = []
  estimate = len(_prompt_tokens(vocab, [], needles, asked))
  while estimate < context_length:
    batch = corpus.filler_sentences(rng, 32)
    sentences += batch
    estimate += sum(len(vocab.encode_text(s)) for s in batch)
  lo, hi = 0, len(sentences)  # largest prefix of the filler that fits
  while lo < hi:
    mid = (lo + hi + 1) // 2
    if len(_prompt_tokens(vocab, sentences[:mid], needles, asked)) <= context_length:
      lo = mid
    else:
      hi = mid - 1
  if lo == 0 and len(_prompt_tokens(vocab, [], needles, asked)) > context_length:
    raise ValueError(f"context length {context_length} is too short for the needles and the question")
  tokens = _prompt_tokens(vocab, sentences[:lo], needles, asked)
  return Trial(context_length, depth, round_index, [n.city for n in asked], [n.value for n in asked], tokens)


def build_grid(vocab: MultimodalVocab, task: NeedleTask, context_lengths: Sequence[int], depths: Sequence[float],
               rounds: int, seed: int, *, haystack: Haystack = Haystack(), prompt_format: PromptFormat = "chat"
               ) -> list[Trial]:
  """Every (context length, depth, round) trial, deterministic for `seed`. The synthetic haystack in the
  chat format is the demo's layout (`build_trial`); a haystack file or the lwm format is assembled as text."""
  if prompt_format not in PROMPT_FORMATS:
    raise ValueError(f"prompt format {prompt_format!r}: expected one of {', '.join(PROMPT_FORMATS)}")
  if prompt_format == "lwm" and task.value != "number":
    raise ValueError(f"the lwm prompt format is LWM's own number needle; needle value {task.value!r} needs the chat format")
  longest = max(context_lengths)
  trials = []
  for length in context_lengths:
    for d_index, depth in enumerate(depths):
      for r in range(rounds):
        rng = np.random.default_rng([seed, length, d_index, r, task.n_needles, task.n_asked])
        if haystack.ids is None and prompt_format == "chat":
          trials.append(build_trial(vocab, task, length, depth, rng, r))
        else:
          start = (r * longest) % len(haystack.ids) if haystack.ids is not None else 0
          trials.append(_window_trial(vocab, task, length, depth, rng, r, haystack, prompt_format, start))
  for trial in trials:
    trial.prompt = vocab.decode_text(trial.tokens)
  return trials


def answer_budget(task: NeedleTask) -> int:
  """New tokens to generate: room for each asked needle sentence (as trained answers are) or number."""
  return 32 * task.n_asked


def run_grid(trials: list[Trial], generate: Callable[[list[np.ndarray], int], list[str]], task: NeedleTask) -> None:
  """Fills in responses and scores. `generate(prompts, max_new_tokens)` returns decoded texts."""
  by_length: dict[int, list[Trial]] = {}
  for t in trials:
    by_length.setdefault(t.context_length, []).append(t)
  for group in by_length.values():
    for trial, text in zip(group, generate([t.tokens for t in group], answer_budget(task))):
      trial.response, trial.score = text, score_answer(text, trial.values, task.value)
      trial.city_named, trial.chars_right = partial_credit(text, trial.cities, trial.values, task.value)


def accuracy_table(trials: Sequence[Trial], field: str = "score") -> tuple[list[int], list[float], np.ndarray]:
  """(context lengths, depths, mean of `field` [depths x lengths]); `field`: score, city_named, chars_right."""
  lengths = sorted({t.context_length for t in trials})
  depths = sorted({t.depth for t in trials})
  table = np.zeros((len(depths), len(lengths)))
  for i, d in enumerate(depths):
    for j, n in enumerate(lengths):
      table[i, j] = np.mean([getattr(t, field) for t in trials if t.depth == d and t.context_length == n])
  return lengths, depths, table


def write_results(path: str | os.PathLike, task: NeedleTask, trials: Sequence[Trial]) -> Path:
  lengths, depths, table = accuracy_table(trials)
  doc = {"task": dataclasses.asdict(task), "context_lengths": lengths, "depths": depths,
         "accuracy": table.tolist(), "mean_accuracy": float(np.mean([t.score for t in trials])),
         **{field: accuracy_table(trials, field)[2].tolist() for field in ("city_named", "chars_right")},
         "trials": [t.to_json() for t in trials]}
  with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
    json.dump(doc, f, indent=1)
  return Path(path)


def plot_heatmap(path: str | os.PathLike, trials: Sequence[Trial], title: str) -> Path:
  """The paper's Fig. 5 layout: depth (rows) x context length (columns), red (0) to green (1)."""
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel

  lengths, depths, table = accuracy_table(trials)
  fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(lengths), 1.0 + 0.45 * len(depths)))
  image = ax.imshow(table, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
  ax.set_xticks(range(len(lengths)), [f"{n // 1024}K" if n % 1024 == 0 else str(n) for n in lengths])
  ax.set_yticks(range(len(depths)), [f"{100 * d:.0f}%" for d in depths])
  ax.set_xlabel("context length (tokens)")
  ax.set_ylabel("needle depth")
  ax.set_title(title, fontsize=9)
  for i in range(len(depths)):
    for j in range(len(lengths)):
      ax.text(j, i, f"{table[i, j]:.2f}", ha="center", va="center", fontsize=7)
  fig.colorbar(image, ax=ax, label="accuracy")
  fig.tight_layout()
  with atomic_path(path) as tmp:
    fig.savefig(tmp, format="png", dpi=120)
  plt.close(fig)
  return Path(path)
