"""Grain masked-packing loader for LWM data (importable without MaxText).

The package itself imports nothing: `data_loaders.vocab`, `data_loaders.longqa` or
`data_loaders.synthetic_corpus` cost a command line (lwm-eval, lwm-make-qa) no Grain or JAX import before
its arguments are checked and JAX_PLATFORMS is set (`lwm_plugin.launch`). Import the module you need:

* `data_loaders.packing.pack_examples(examples, *, seq_len, modality_weights, weighting="example")`: pack a
  list of examples into rows with final per-token loss weights; `packing.normalize_weights(batch, ...)`:
  raw -> final weights for one batch.
* `data_loaders.pipeline.LoaderConfig`, `pipeline.build_dataset(config, vocab, shard_index=, shard_count=)`:
  the streaming Grain pipeline: sources, mixtures, packing groups, shuffling, host sharding,
  multiprocessing, checkpointable iterator state; `pipeline.DATA_ERRORS`: the exceptions of bad input data.
* `data_loaders.batch.ROW_KEYS`: the keys of a packed row.
* Formats: LWM JSONL (`data_loaders.lwm_format`), the chat template (`data_loaders.chat_template`),
  pre-tokenized ArrayRecord / Parquet (`data_loaders.pretokenized`).
"""
