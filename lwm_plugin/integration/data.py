"""`dataset_type: grain` with `lwm_data_sources` runs the LWM Grain loader inside MaxText.

Four replacements (rows in `PATCH_TABLE`):

* `input_pipeline_interface.make_grain_train_iterator` / `make_grain_eval_iterator`: with LWM
  sources configured, build `data_loaders.build_dataset` for this host (its shard among MaxText's
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

The settings the LWM loader cannot honour are refused by the config class
(`lwm_plugin.config.lwm_config.LWMConfig`), before anything runs.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import weakref
from typing import Any

import jax
from maxtext.input_pipeline import data_processing_utils, multihost_dataloading
from maxtext.input_pipeline.synthetic_data_processing import PlaceHolderDataIterator

from data_loaders.batch import LWM_KEYS
from data_loaders.pipeline import LoaderConfig, build_dataset, describe
from lwm_plugin.config.settings import model_vocab

logger = logging.getLogger("lwm_plugin.integration")

_OURS: "weakref.WeakSet[Any]" = weakref.WeakSet()


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
  dataset = build_dataset(loader, vocab, shard_index=shard_index, shard_count=shard_count)
  padding = config.generate_padding_batch_train if training else config.generate_padding_batch_eval
  iterator = multihost_dataloading.MultiHostDataLoadIterator(dataset, mesh, padding)
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
