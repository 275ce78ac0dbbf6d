"""Progress a person can follow while MaxText trains in-process: stage i/n, step, loss, tokens/s, ETA.

`lwm-train` publishes each finished training step as a `StepRecord` (`lwm_plugin.step_metrics`)
on the `lwm_plugin.steps` logger; `StepWatcher` is a handler on that logger that keeps the records
and prints a compact line. Everything else MaxText, JAX and Orbax write (checkpoint lines, C++ logs
on file descriptor 2) goes to a per-step log file: `quiet_output` redirects the process's
stdout/stderr file descriptors and hands back a stream to the terminal. No MaxText import, and no
reading of MaxText's log text.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, TextIO

from lwm_plugin.step_metrics import LOGGER, StepRecord, record_of


def clock(seconds: float) -> str:
  """`m:ss` (or `h:mm:ss`)."""
  seconds = max(0, int(round(seconds)))
  h, rest = divmod(seconds, 3600)
  return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


@contextlib.contextmanager
def quiet_output(log_path: Path, terminal: TextIO) -> Iterator[None]:
  """Sends fds 1 and 2 (Python's and C++'s output) to `log_path` for the block; `terminal` keeps
  writing to the real stdout (it must be a stream on a duplicate of fd 1, see `terminal_stream`)."""
  sys.stdout.flush()
  sys.stderr.flush()
  saved = os.dup(1), os.dup(2)
  log_path.parent.mkdir(parents=True, exist_ok=True)
  with open(log_path, "a", encoding="utf-8") as log:
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    try:
      yield
    finally:
      sys.stdout.flush()
      sys.stderr.flush()
      os.dup2(saved[0], 1)
      os.dup2(saved[1], 2)
      os.close(saved[0])
      os.close(saved[1])
      terminal.flush()


def terminal_stream() -> TextIO:
  """A line-buffered stream on a duplicate of the current stdout, unaffected by `quiet_output`."""
  return os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8")


class StepWatcher(logging.Handler):
  """Prints `[stage i/n name] step s/S  loss  tokens/s  ETA stage / demo` for each training step.

  ETA for the stage is its remaining steps at the median recent step time; for the demo it adds
  the remaining stages' steps at the measured seconds per token, plus `overhead_s` per stage
  still to start (start-up and compilation, re-measured as stages finish), plus `tail_s` (export
  and evaluation). `remaining` yields (steps, tokens per step) of the stages after this one.
  `records` keeps the stage's step records (the report's losses and rates).
  """

  def __init__(self, out: TextIO, label: str, steps: int, tokens_per_step: int,
               remaining: list[tuple[int, int]], overhead_s: float, tail_s: float,
               now: Callable[[], float] = time.monotonic):
    super().__init__(level=logging.INFO)
    self.out, self.label, self.steps = out, label, steps
    self.tokens_per_step, self.remaining = tokens_per_step, remaining
    self.overhead_s, self.tail_s, self.now = overhead_s, tail_s, now
    self.started = now()
    self.first_step_at: float | None = None
    self.records: list[StepRecord] = []

  def emit(self, record: logging.LogRecord) -> None:
    step = record_of(record)
    if step is None:
      return
    if self.first_step_at is None:
      self.first_step_at = self.now()
    self.records.append(step)
    self.out.write(self.line(step.step, step.loss) + "\n")

  def seconds_per_step(self) -> float:
    recent = sorted(r.seconds for r in self.records[-10:])
    return recent[len(recent) // 2] if recent else 0.0

  def line(self, step: int, loss: float) -> str:
    per_step = self.seconds_per_step()
    stage_eta = max(0, self.steps - step - 1) * per_step
    per_token = per_step / self.tokens_per_step
    later = sum(steps * tokens * per_token + self.overhead_s for steps, tokens in self.remaining)
    return (f"[{self.label}] step {step + 1:>4}/{self.steps}  loss {loss:7.3f}  "
            f"{self.records[-1].tokens_per_s:>8,.0f} tokens/s  ETA stage {clock(stage_eta)}, "
            f"demo {clock(stage_eta + later + self.tail_s)}")

  def setup_seconds(self) -> float:
    """Start-up and compilation: from the stage's start to its first step."""
    return (self.first_step_at or self.now()) - self.started


@contextlib.contextmanager
def watching(handler: StepWatcher) -> Iterator[StepWatcher]:
  """Attaches `handler` to the step-record logger (`lwm_plugin.steps`) for the block."""
  logger = logging.getLogger(LOGGER)
  logger.addHandler(handler)
  try:
    yield handler
  finally:
    logger.removeHandler(handler)
