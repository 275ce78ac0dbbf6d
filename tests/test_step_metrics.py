"""`lwm_plugin.step_metrics` and its one source, `integration.metrics`: MaxText's step scalars -> our record."""

import logging

import jax
import numpy as np

from lwm_plugin import step_metrics
from lwm_plugin.integration.metrics import step_record

SCALARS = {"learning/loss": np.float32(4.8125), "lwm/text_loss": np.float32(4.5), "lwm/vision_loss": np.float32(5.125),
           "lwm/text_tokens": np.float32(1204.0), "lwm/vision_tokens": np.float32(1356.0),
           "perf/step_time_seconds": 0.5, "perf/per_device_tokens_per_sec": 5120.0, "learning/total_weights": 2560.0}


def test_step_record_from_maxtext_scalars_and_its_line():
  record = step_record(SCALARS, step=5, steps=20)
  assert record == step_metrics.StepRecord(step=5, steps=20, loss=4.8125, text_loss=4.5, vision_loss=5.125,
                                           text_tokens=1204, vision_tokens=1356, seconds=0.5,
                                           tokens_per_s=5120.0 * jax.local_device_count())
  assert record.line().startswith("step 6/20  loss 4.812  text 4.500 (1,204 tok)  vision 5.125 (1,356 tok)  0.50 s  ")


def test_text_only_step_and_a_ramp_up_step_without_maxtext_rate():
  scalars = {k: v for k, v in SCALARS.items() if k != "perf/per_device_tokens_per_sec"}
  scalars["lwm/vision_tokens"] = np.float32(0.0)
  record = step_record(scalars, step=0, steps=3)
  assert record.tokens_per_s == 1204 / 0.5  # the step's own tokens over its time
  assert record.line() == "step 1/3  loss 4.812  text 4.500 (1,204 tok)  vision -  0.50 s  2,408 tok/s"


def test_publish_reaches_handlers_whatever_the_logger_level():
  seen = []

  class Keep(logging.Handler):
    def emit(self, record):
      seen.append((record.getMessage(), step_metrics.record_of(record)))

  logger = logging.getLogger(step_metrics.LOGGER)
  handler, level = Keep(), logger.level
  logger.addHandler(handler)
  logger.setLevel(logging.ERROR)
  try:
    record = step_record(SCALARS, step=0, steps=1)
    step_metrics.publish(record)
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)
  assert seen == [(record.line(), record)]
