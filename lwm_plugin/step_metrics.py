"""One training step's LWM metrics, in our own format: what `lwm-train` prints and the demo reads.

`integration.metrics` builds a `StepRecord` from MaxText's metrics of each finished training step
and publishes it on the `lwm_plugin.steps` logger (the record in `extra={"lwm_step": ...}`, the
one-line text as the message). `lwm-train` sends that logger to stdout; the demo attaches a handler
that reads the records. Consumers never see MaxText's log text or metric key names.
No MaxText import.
"""

from __future__ import annotations

import dataclasses
import logging

LOGGER = "lwm_plugin.steps"
RECORD_ATTR = "lwm_step"


@dataclasses.dataclass(frozen=True)
class StepRecord:
  """A finished training step (0-based `step`) of `steps`.

  loss: the optimised loss; text_loss / vision_loss: LWM's per-modality means (vision_loss is
  meaningless when vision_tokens is 0); *_tokens: target tokens of each modality in the step's
  batch; seconds: the step's wall time; tokens_per_s: this host's devices together (MaxText's
  per-device rate x local devices).
  """
  step: int
  steps: int
  loss: float
  text_loss: float
  vision_loss: float
  text_tokens: int
  vision_tokens: int
  seconds: float
  tokens_per_s: float

  def line(self) -> str:
    """`step 6/20  loss 4.812  text 4.901 (1,204 tok)  vision 4.723 (1,356 tok)  0.51 s  5,020 tok/s`."""
    vision = f"vision {self.vision_loss:.3f} ({self.vision_tokens:,} tok)" if self.vision_tokens else "vision -"
    return (f"step {self.step + 1}/{self.steps}  loss {self.loss:.3f}  text {self.text_loss:.3f} "
            f"({self.text_tokens:,} tok)  {vision}  {self.seconds:.2f} s  {self.tokens_per_s:,.0f} tok/s")


def publish(record: StepRecord) -> None:
  """Hands `record` to the `lwm_plugin.steps` logger's handlers (message: `record.line()`).

  Whatever the logger's level: a step record is never filtered out, only sent where handlers are.
  """
  logger = logging.getLogger(LOGGER)
  logger.handle(logger.makeRecord(LOGGER, logging.INFO, __file__, 0, "%s", (record.line(),), None,
                                  extra={RECORD_ATTR: record}))


def record_of(log_record: logging.LogRecord) -> StepRecord | None:
  """The StepRecord carried by a log record of the `lwm_plugin.steps` logger, else None."""
  return getattr(log_record, RECORD_ATTR, None)
