"""Needle-in-a-haystack retrieval (paper Sec. 3.4, Fig. 5 single needle, Table 3 multi-needle).

The task is LWM's (`scripts/eval_needle.py`, `eval_needle_multi.py`): a haystack of filler text
with N planted facts "The special magic {city} number is: {7 digits}.", then a question about R of
them in the chat template; the answer is correct when it contains the number (for R > 1: the
fraction of asked numbers it contains). The grid is context length x needle depth, each cell
averaged over `rounds` random needles. This module builds prompts and scores answers; running a
model is the caller's (`lwm_plugin.integration.inference`), so it stays free of MaxText.

Haystack filler comes from `data_loaders.synthetic_corpus` with its own seed stream, so a model
trained on the synthetic corpus is evaluated on sentences and needles it has not seen verbatim.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from data_loaders import synthetic_corpus as corpus
from data_loaders.atomic_file import atomic_path
from data_loaders.chat_template import chat_example
from data_loaders.vocab import MultimodalVocab


@dataclasses.dataclass(frozen=True)
class NeedleTask:
  """One evaluation setting: N facts in the context, R of them asked (paper Table 3)."""
  n_needles: int = 1
  n_asked: int = 1

  def __post_init__(self):
    if not 1 <= self.n_asked <= self.n_needles:
      raise ValueError(f"need 1 <= asked ({self.n_asked}) <= needles ({self.n_needles})")

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
  numbers: list[str]
  tokens: np.ndarray
  response: str = ""
  score: float = float("nan")
  city_named: float = float("nan")    # diagnostics below the all-or-nothing score (`partial_credit`)
  digits_right: float = float("nan")

  def to_json(self) -> dict:
    return {"context_length": self.context_length, "depth": self.depth, "round": self.round,
            "prompt_tokens": int(len(self.tokens)), "cities": self.cities, "numbers": self.numbers,
            "response": self.response, "score": self.score, "city_named": self.city_named,
            "digits_right": self.digits_right}


def score_answer(response: str, numbers: Sequence[str]) -> float:
  """Fraction of the asked numbers that appear in the response (LWM: substring match)."""
  return sum(n in response for n in numbers) / len(numbers)


def partial_credit(response: str, cities: Sequence[str], numbers: Sequence[str]) -> tuple[float, float]:
  """(fraction of the asked cities the response names, fraction of the asked numbers' digits it gets
  right). A number's digits are compared position by position with the best-matching digit run of
  the response (chance: 0.1). Diagnostics for models below LWM's all-or-nothing score: they show
  whether a model names the asked fact and copies part of its number.
  """
  runs = re.findall(r"\d+", response)
  named = sum(city in response for city in cities) / len(cities)
  digits = [max((sum(a == b for a, b in zip(run, number)) / len(number) for run in runs), default=0.0)
            for number in numbers]
  return named, float(np.mean(digits))


def _prompt_tokens(vocab: MultimodalVocab, sentences: list[str], needles: list[corpus.Needle],
                   asked: list[corpus.Needle]) -> np.ndarray:
  question = corpus.needle_question([n.city for n in asked])
  content = f"{corpus.plant(sentences, needles)} {question}"
  return chat_example(vocab, [{"role": "user", "content": content}])["tokens"]


def build_trial(vocab: MultimodalVocab, task: NeedleTask, context_length: int, depth: float,
                rng: np.random.Generator, round_index: int) -> Trial:
  """A prompt of at most `context_length` tokens, with the needles at `depth` of the haystack.

  With several needles, the first is at `depth` and the others at random depths (as LWM's
  multi-needle script places them).
  """
  needles = corpus.random_needles(rng, task.n_needles)
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
  return Trial(context_length, depth, round_index, [n.city for n in asked], [n.number for n in asked], tokens)


def build_grid(vocab: MultimodalVocab, task: NeedleTask, context_lengths: Sequence[int], depths: Sequence[float],
               rounds: int, seed: int) -> list[Trial]:
  """Every (context length, depth, round) trial, deterministic for `seed`."""
  trials = []
  for length in context_lengths:
    for d_index, depth in enumerate(depths):
      for r in range(rounds):
        rng = np.random.default_rng([seed, length, d_index, r, task.n_needles, task.n_asked])
        trials.append(build_trial(vocab, task, length, depth, rng, r))
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
      trial.response, trial.score = text, score_answer(text, trial.numbers)
      trial.city_named, trial.digits_right = partial_credit(text, trial.cities, trial.numbers)


def accuracy_table(trials: Sequence[Trial], field: str = "score") -> tuple[list[int], list[float], np.ndarray]:
  """(context lengths, depths, mean of `field` [depths x lengths]); `field`: score, city_named, digits_right."""
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
         **{field: accuracy_table(trials, field)[2].tolist() for field in ("city_named", "digits_right")},
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
