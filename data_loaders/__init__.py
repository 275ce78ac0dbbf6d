"""Grain masked-packing loader for LWM data (importable without MaxText).

* `pack_examples(examples, *, seq_len, modality_weights, weighting="example")`: pack a list of
  examples into rows with final per-token loss weights (`data_loaders.packing`).
* `LoaderConfig`, `build_dataset(config, vocab, shard_index=, shard_count=)`: the streaming Grain
  pipeline (`data_loaders.pipeline`): sources, mixtures, packing groups, shuffling, host sharding,
  multiprocessing, checkpointable iterator state.
* `normalize_weights(batch, *, modality_weights, weighting)`: raw -> final weights for one batch.
* Formats: LWM JSONL (`data_loaders.lwm_format`), the chat template (`data_loaders.chat_template`),
  pre-tokenized ArrayRecord / Parquet (`data_loaders.pretokenized`).
* `DATA_ERRORS`: the exceptions of bad input data (they pickle, so they cross Grain worker processes).
"""

from data_loaders.lwm_format import LWMFormatError
from data_loaders.packing import ROW_KEYS, OverlongError, normalize_weights, pack_examples
from data_loaders.pipeline import LoaderConfig, build_dataset

# Errors that mean "this data is bad" (their message names file:line), as opposed to a loader failure.
DATA_ERRORS = (LWMFormatError, OverlongError)

__all__ = ["DATA_ERRORS", "ROW_KEYS", "LoaderConfig", "build_dataset", "normalize_weights", "pack_examples"]
