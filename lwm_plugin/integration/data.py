"""`dataset_type: grain` with `lwm_data_sources` runs the LWM Grain loader inside MaxText.

Four replacements (rows in `PATCH_TABLE`):

* `input_pipeline_interface.make_grain_train_iterator` / `make_grain_eval_iterator`: with LWM
  sources configured, build `data_loaders.pipeline.build_dataset` for this host (its shard among MaxText's
  data-loading processes, MaxText's local batch size) and wrap it in MaxText's own
  `MultiHostDataLoadIterator`; without them, MaxText's own Grain pipeline. MaxText keeps choosing
  which hosts load data, and its checkpointing saves the iterator state (the `iter` item,
  `process_<i>-of-<n>.json`) because `dataset_type` is `grain`.
* `input_pipeline_interface.create_data_iterator`: the start-up assertion. MaxText silently falls
  back to synthetic data for some dataset types, and `dataset_type: synthetic` never reaches the
  Grain code at all; with LWM sources configured, anything but `grain`, or an iterator that is
  not ours, is an error before training starts.
* `maxtext_utils.get_shaped_batch`: the ahead-of-time batch shape includes the LWM keys of the
  batch schema (`data_loaders.batch.LWM_KEYS`), else the train step compiles twice.

* `data_loader.loader_exception_guard`: MaxText stops training cleanly (exit 0) on any exception
  from the data iterator; `LoaderFailed` (any error of the LWM loader, raised by our iterator)
  passes through so that the run fails with the loader's message.

The settings the LWM loader cannot honour are refused by the config class
(`lwm_plugin.config.lwm_config.LWMConfig`), before anything runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import weakref
from typing import Any

import jax
from maxtext.input_pipeline import data_processing_utils, multihost_dataloading
from maxtext.input_pipeline.synthetic_data_processing import PlaceHolderDataIterator

from data_loaders.batch import LWM_KEYS
from data_loaders.pipeline import DATA_ERRORS, LoaderConfig, build_dataset, describe
from lwm_plugin.config.settings import model_vocab

logger = logging.getLogger("lwm_plugin.integration")

_OURS: "weakref.WeakSet[Any]" = weakref.WeakSet()


class LoaderFailed(RuntimeError):
  """The LWM loader raised while building or reading its iterator; `__cause__` is its exception.

  MaxText's train loop turns any exception from `next(data_iterator)` into a clean stop (exit 0);
  this one passes through (`loader_exception_guard`) so that `lwm-train` exits non-zero with the
  loader's message (`file:line: reason` for bad data).
  """

  bad_input = False  # True: bad data or a missing file (the message says which); False: the loader failed

  @classmethod
  def of(cls, cause: BaseException) -> "LoaderFailed":
    """Bad input keeps its message (`file:line: reason`); any other error is prefixed by its type."""
    if isinstance(cause, (*DATA_ERRORS, FileNotFoundError)):
      failed = cls(str(cause))
      failed.bad_input = True
      return failed
    return cls(f"{type(cause).__name__}: {cause}")


class _LWMDataIterator(multihost_dataloading.MultiHostDataLoadIterator):
  """MaxText's multi-host iterator; an exception from the LWM loader surfaces as `LoaderFailed`."""

  def __next__(self):
    try:
      return super().__next__()
    except StopIteration:
      raise
    except Exception as e:  # pylint: disable=broad-except  (re-raised, wrapped)
      raise LoaderFailed.of(e) from e

  def close(self):
    """Closes the Grain iterator: its worker processes and shared memory (idempotent).

    MaxText's `close` also probes `_parent` with hasattr, which a Grain multiprocessing iterator
    answers with an AssertionError, printed from `__del__` at every exit with workers.
    """
    if hasattr(self, "local_iterator"):
      self.local_iterator.close()


def close_iterators() -> None:
  """Closes every LWM loader iterator now (before a failed run prints its last line)."""
  for iterator in list(_OURS):
    if isinstance(iterator, _LWMDataIterator):
      iterator.close()


def loader_exception_guard(original):
  """Patch factory: MaxText's guard around `next(data_iterator)`, letting `LoaderFailed` through."""

  @contextlib.contextmanager
  def guard(config):
    try:
      yield
    except LoaderFailed:
      raise
    except Exception:  # pylint: disable=broad-except  (MaxText's own handling)
      with original(config):
        raise

  return guard


def _make_iterator(config: Any, mesh: Any, process_indices: list[int], training: bool) -> Any:
  vocab, text_only = model_vocab(config)  # a text model (LWM's text stages): vision data is an error
  if training:
    batch_size = data_processing_utils.get_local_batch_size(config)
  else:
    batch_size = config.global_batch_size_to_load_eval // jax.process_count()
  loader = dataclasses.replace(LoaderConfig.from_settings(config, batch_size=batch_size, training=training),
                               text_only=text_only)
  shard_index, shard_count = process_indices.index(jax.process_index()), len(process_indices)
  for line in describe(loader):
    logger.info("%s%s", "" if training else "(eval) ", line)
  try:
    dataset = build_dataset(loader, vocab, shard_index=shard_index, shard_count=shard_count)
  except (OSError, ValueError) as e:  # missing files, bad sources: the loader's own messages
    raise LoaderFailed.of(e) from e
  padding = config.generate_padding_batch_train if training else config.generate_padding_batch_eval
  iterator = _LWMDataIterator(dataset, mesh, padding)
  _OURS.add(iterator)
  return iterator


def _lwm_loader_when(sources_key: str, *, training: bool):
  """A patch factory: MaxText's Grain iterator, or the LWM loader's when the config sets `sources_key`."""

  def factory(original):
    @functools.wraps(original)
    def make(config, global_mesh, process_indices):
      if not getattr(config, sources_key):
        return original(config, global_mesh, process_indices)
      return _make_iterator(config, global_mesh, process_indices, training=training)

    return make

  return factory


make_grain_train_iterator = _lwm_loader_when("lwm_data_sources", training=True)
make_grain_eval_iterator = _lwm_loader_when("lwm_eval_data_sources", training=False)


def is_lwm_iterator(iterator: Any) -> bool:
  """True for an iterator built by the LWM loader (or MaxText's placeholder on a host that loads no data)."""
  return iterator in _OURS or isinstance(iterator, PlaceHolderDataIterator)


def create_data_iterator(original):
  """MaxText's `create_data_iterator` plus the start-up assertion that the LWM loader feeds training."""

  @functools.wraps(original)
  def create(config, mesh):
    train, evaluation = original(config, mesh)
    for sources, iterator, what in ((config.lwm_data_sources, train, "train"),
                                    (config.lwm_eval_data_sources, evaluation, "eval")):
      if sources and iterator is not None and not is_lwm_iterator(iterator):
        raise RuntimeError(f"lwm_data_sources is set but MaxText built its {what} iterator "
                           f"{type(iterator).__name__} without the LWM loader (dataset_type={config.dataset_type!r})")
    if config.lwm_data_sources:
      logger.info("LWM loader feeds training (dataset_type=grain, %d sources)", len(config.lwm_data_sources))
    return train, evaluation

  return create


def get_shaped_batch(original):
  """MaxText's AOT batch shape plus the LWM loader's keys (else the step compiles twice)."""

  @functools.wraps(original)
  def wrapped(config, batch_sharding=None, is_eval=False):
    shaped = original(config, batch_sharding, is_eval)
    sources = config.lwm_eval_data_sources if is_eval else config.lwm_data_sources
    if sources:
      like = shaped["targets"]
      for key, dtype in LWM_KEYS.items():
        shaped[key] = jax.ShapeDtypeStruct(like.shape, dtype, sharding=like.sharding)
    return shaped

  return wrapped
