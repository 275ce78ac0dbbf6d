"""Each finished training step's MaxText metrics -> our `StepRecord` (`lwm_plugin.step_metrics`).

`MetricLogger.write_metrics` is where MaxText hands a step's metrics, already computed on the host,
to its writers (log line, metrics file, TensorBoard). The replacement (a row in `PATCH_TABLE`)
calls it unchanged, then, for a training step on process 0, publishes a `StepRecord`: the only
place that reads MaxText's metric key names. `perf/per_device_tokens_per_sec` is missing during a
batch-size ramp-up; the rate is then derived from the step's tokens and time.
"""

from __future__ import annotations

import functools
from typing import Any

import jax

from lwm_plugin.step_metrics import StepRecord, publish


def step_record(scalars: dict[str, Any], step: int, steps: int) -> StepRecord:
  """The StepRecord of one training step's MaxText scalars (after the LWM train step added `lwm/*`)."""
  seconds = float(scalars["perf/step_time_seconds"])
  text_tokens, vision_tokens = int(scalars["lwm/text_tokens"]), int(scalars["lwm/vision_tokens"])
  if "perf/per_device_tokens_per_sec" in scalars:
    tokens_per_s = float(scalars["perf/per_device_tokens_per_sec"]) * jax.local_device_count()
  else:
    tokens_per_s = (text_tokens + vision_tokens) / max(seconds, 1e-9)
  return StepRecord(step=int(step), steps=int(steps), loss=float(scalars["learning/loss"]),
                    text_loss=float(scalars["lwm/text_loss"]), vision_loss=float(scalars["lwm/vision_loss"]),
                    text_tokens=text_tokens, vision_tokens=vision_tokens, seconds=seconds, tokens_per_s=tokens_per_s)


def write_metrics(original):
  """Patch factory: MaxText's `MetricLogger.write_metrics`, then our step record for training steps."""

  @functools.wraps(original)
  def write(self, metrics, step, metric_type="train"):
    original(self, metrics, step, metric_type)
    if metrics and metric_type == "train" and jax.process_index() == 0:
      publish(step_record(metrics["scalar"], step, self.config.steps))

  return write
