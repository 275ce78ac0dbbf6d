"""The LWM Grain pipeline: sources -> examples -> masked packing -> batches (no MaxText import).

    per source:  random-access records (JSONL / ArrayRecord / Parquet)
                 -> global shuffle (per epoch, seeded) -> repeat -> host shard [i::n]
                 -> decode (vocabulary) -> example stream (invalid / overlong / features)
    per packing group:  mix its sources by weight (examples) -> pack (first fit / best fit)
    all groups:  mix the groups' rows by total weight -> batch -> multiprocessing prefetch

Batches are dicts of numpy arrays [batch, seq_len] with the keys `packing.ROW_KEYS`:
`inputs`, `targets` (int32), `inputs_segmentation`, `targets_segmentation` (0 = padding),
`inputs_position`, `targets_position` (restart at 0 per example), `targets_weights` (float32)
and `targets_vision_mask` (int32). `targets_weights` are raw (each example's loss tokens of one
modality sum to 1, see `data_loaders.packing`); the global normalisation happens on device
(`lwm_plugin.losses.weighted`), or on the host per batch with `finalize_weights=True` (single host only).

Mixtures. Grain's `mix` interleaves deterministically in the exact proportions of the weights (no
sampling noise). Within a packing group, examples are drawn in proportion to their sources'
weights; across groups, packed rows are drawn in proportion to each group's total weight, so
sources in different groups (UltraChat vs long-context QA) never share a row. A mixture stops
when any of its sources ends: with `num_epochs=None` every source repeats forever.

Determinism and resume. Everything is a function of the seed, the host shard and the worker
count: the iterator state (`get_state()`, JSON) restores the stream exactly, mid-example included.
Keep `worker_count` fixed across a resume (it changes how the stream is interleaved).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import zlib
from typing import Any, Mapping, Sequence

import grain

from data_loaders.examples import LWMFormatError
from data_loaders.lwm_format import FormatOptions
from data_loaders.packing import OVERLONG_POLICIES, PACKING_TYPES, OverlongError, normalize_weights, pack_rows
from data_loaders.sources import LWMDataSource, RecordDecoder, check_unique_names, expand_files, open_source
from data_loaders.stream import ExampleStreamIterDataset
from data_loaders.vocab import MultimodalVocab
from data_loaders.weights import WEIGHTINGS

logger = logging.getLogger(__name__)

# Errors that mean "this data is bad" (their message names file:line), as opposed to a loader failure;
# they pickle, so they cross Grain worker processes.
DATA_ERRORS = (LWMFormatError, OverlongError)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoaderConfig:
  """Everything the pipeline needs; `from_settings` reads it from a MaxText/LWM config.

  sources           the data sources (`data_loaders.sources.LWMDataSource`, or dicts of its fields)
  seq_len           row length S (MaxText `max_target_length`); an example fits with S + 1 tokens
  batch_size        rows per batch on this host
  packing           False: one example per row (unpacked, padded)
  packing_bins      rows the packer fills at once (0: batch_size)
  num_epochs        epochs per source; None: repeat forever
  worker_count      Grain worker processes (0: in the calling process)
  finalize_weights  normalise the weights per host batch (single host only; see data_loaders.packing)
  text_only         the model has only the text ids (vocab_size = the tokenizer's size, LWM's text stages):
                    an example with vision tokens is a bad record
  """
  sources: tuple[LWMDataSource, ...]
  seq_len: int
  batch_size: int
  packing: bool = True
  packing_type: str = "first_fit"
  packing_bins: int = 0
  max_segments: int | None = None
  shuffle: bool = True
  seed: int = 0
  num_epochs: int | None = None
  weighting: str = "example"
  modality_weights: Mapping[str, float] = dataclasses.field(default_factory=lambda: {"text": 0.5, "vision": 0.5})
  finalize_weights: bool = False
  overlong: str = "error"
  skip_invalid: bool = False
  max_invalid_fraction: float = 0.01
  max_frames: int | None = None
  max_vision_tokens: int | None = None
  worker_count: int = 0
  worker_buffer_size: int = 1
  read_threads: int = 16
  read_buffer_size: int = 500
  text_only: bool = False

  def __post_init__(self):
    object.__setattr__(self, "sources", tuple(LWMDataSource.model_validate(s) for s in self.sources))
    if not self.sources:
      raise ValueError("LoaderConfig: no data sources (lwm_data_sources is empty)")
    check_unique_names(self.sources, "LoaderConfig")
    checks = [("packing_type", self.packing_type, PACKING_TYPES), ("weighting", self.weighting, WEIGHTINGS),
              ("overlong", self.overlong, OVERLONG_POLICIES)]
    for key, value, choices in checks:
      if value not in choices:
        raise ValueError(f"LoaderConfig: {key}={value!r}; expected one of {list(choices)}")
    for key in ("seq_len", "batch_size"):
      if getattr(self, key) < 1:
        raise ValueError(f"LoaderConfig: {key} must be >= 1, got {getattr(self, key)}")
    if self.worker_count < 0:
      raise ValueError(f"LoaderConfig: worker_count={self.worker_count}; set a fixed number of Grain workers "
                       "(grain_worker_count >= 0): the packed stream depends on it and a resumed run must use the same")
    if self.num_epochs is not None and self.num_epochs < 1:
      raise ValueError(f"LoaderConfig: num_epochs={self.num_epochs}; use None to repeat forever")

  @classmethod
  def from_settings(cls, cfg: Any, *, batch_size: int, training: bool = True) -> LoaderConfig:
    """Reads MaxText's data keys and the `lwm_*` keys (see `lwm_plugin.config.settings`) from `cfg`."""
    if cfg.grain_packing_type not in PACKING_TYPES:
      raise ValueError(f"grain_packing_type={cfg.grain_packing_type!r} is not supported by the LWM loader (use "
                       f"{' or '.join(PACKING_TYPES)}): concat_then_split cuts examples across rows, which breaks "
                       "per-example masking and weights")
    suffix = "" if training else "_eval"
    epochs = cfg.num_epoch if training else 1
    return cls(
        sources=cfg.lwm_data_sources if training else cfg.lwm_eval_data_sources,
        seq_len=cfg.max_target_length, batch_size=batch_size, packing=cfg.packing,
        packing_type=cfg.grain_packing_type, packing_bins=cfg.lwm_packing_bins,
        max_segments=cfg.max_segments_per_seq if cfg.max_segments_per_seq > 0 else None,
        shuffle=bool(cfg.enable_data_shuffling) and training, seed=cfg.data_shuffle_seed,
        num_epochs=epochs if epochs > 0 else None, weighting=cfg.lwm_loss_weighting,
        modality_weights={"text": cfg.lwm_text_loss_weight, "vision": cfg.lwm_vision_loss_weight},
        overlong=cfg.lwm_overlong, skip_invalid=cfg.lwm_skip_invalid, max_invalid_fraction=cfg.lwm_max_invalid_fraction,
        max_frames=cfg.lwm_max_frames or None, max_vision_tokens=cfg.lwm_max_vision_tokens or None,
        worker_count=getattr(cfg, f"grain_worker_count{suffix}"),
        worker_buffer_size=getattr(cfg, f"grain_per_worker_buffer_size{suffix}"),
        read_threads=getattr(cfg, f"grain_num_threads{suffix}"),
        read_buffer_size=getattr(cfg, f"grain_prefetch_buffer_size{suffix}"))

  def groups(self) -> dict[str, list[LWMDataSource]]:
    out: dict[str, list[LWMDataSource]] = collections.OrderedDict()
    for source in self.sources:
      out.setdefault(source.group, []).append(source)
    return out


def source_seed(seed: int, name: str) -> int:
  """A per-source seed: sources shuffle independently, and adding a source changes no other one."""
  return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**31 - 1)


def source_stream(config: LoaderConfig, source: LWMDataSource, vocab: MultimodalVocab, *, shard_index: int,
                  shard_count: int) -> ExampleStreamIterDataset:
  """One source: records -> shuffled, repeated, host-sharded, decoded example features."""
  paths = expand_files(source.files, f"data source {source.name!r}")
  records = grain.MapDataset.source(open_source(source.format, paths))
  if not len(records):
    raise ValueError(f"data source {source.name!r}: its files {paths} hold no records")
  if config.shuffle:
    records = records.shuffle(seed=source_seed(config.seed, source.name))
  records = records.repeat(config.num_epochs)[shard_index::shard_count]
  options = FormatOptions(default_fields=source.default_fields, fields_index=source.fields_index, fields=source.fields,
                          max_frames=config.max_frames, max_vision_tokens=config.max_vision_tokens)
  options.frame_limit(vocab)  # validates the budgets before any worker starts
  decoded = records.map(RecordDecoder(source.format, vocab, options, skip_invalid=config.skip_invalid,
                                      text_only=config.text_only))
  read_options = grain.ReadOptions(num_threads=config.read_threads, prefetch_buffer_size=config.read_buffer_size)
  return ExampleStreamIterDataset(decoded.to_iter_dataset(read_options), name=source.name,
                                  max_tokens=config.seq_len + 1, overlong=config.overlong,
                                  weighting=config.weighting, max_invalid_fraction=config.max_invalid_fraction)


def _mix(datasets: Sequence[grain.IterDataset], weights: Sequence[float]) -> grain.IterDataset:
  return datasets[0] if len(datasets) == 1 else grain.IterDataset.mix(list(datasets), list(weights))


def build_rows(config: LoaderConfig, vocab: MultimodalVocab, *, shard_index: int = 0,
               shard_count: int = 1) -> grain.IterDataset:
  """Packed rows (unbatched), each group packed on its own, the groups' rows mixed."""
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index={shard_index} must be in [0, shard_count={shard_count})")
  rows, weights = [], []
  for group, sources in config.groups().items():
    streams = [source_stream(config, s, vocab, shard_index=shard_index, shard_count=shard_count) for s in sources]
    examples = _mix(streams, [s.weight for s in sources])
    rows.append(pack_rows(examples, seq_len=config.seq_len, packing_type=config.packing_type,
                          num_bins=config.packing_bins or config.batch_size,
                          max_segments=config.max_segments if config.packing else 1,
                          shuffle_bins=config.shuffle, seed=source_seed(config.seed, f"pack:{group}")))
    weights.append(sum(s.weight for s in sources))
  return _mix(rows, weights)


def _mark_absl_flags_parsed() -> None:
  """grain 0.2.18 reads an absl flag in its workers; outside `absl.app` the flags are unparsed (grain#1355)."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def build_dataset(config: LoaderConfig, vocab: MultimodalVocab, *, shard_index: int = 0,
                  shard_count: int = 1) -> grain.IterDataset:
  """The full pipeline: batches of `config.batch_size` rows for host `shard_index` of `shard_count`.

  The last batch of finite data is padded with empty rows (weight 0). With `worker_count > 0` the
  iterator runs worker processes: call `close()` on it when done.
  """
  rows = build_rows(config, vocab, shard_index=shard_index, shard_count=shard_count)
  batches = rows.batch(config.batch_size,
                       batch_fn=functools.partial(grain.experimental.batch_and_pad, batch_size=config.batch_size))
  if config.finalize_weights:
    batches = batches.map(functools.partial(normalize_weights, modality_weights=dict(config.modality_weights),
                                            weighting=config.weighting))
  if config.worker_count > 0:
    _mark_absl_flags_parsed()
    batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.worker_count,
                                                               per_worker_buffer_size=config.worker_buffer_size))
  return batches


def describe(config: LoaderConfig) -> list[str]:
  """Human-readable summary lines (logged at start-up)."""
  lines = [f"LWM loader: rows of {config.seq_len} targets, {config.batch_size} rows per host batch, "
           f"{'packed (' + config.packing_type + ')' if config.packing else 'unpacked (one example per row)'}, "
           f"weighting={config.weighting}, overlong={config.overlong}, workers={config.worker_count}"]
  total = sum(s.weight for s in config.sources)
  for group, sources in config.groups().items():
    share = sum(s.weight for s in sources) / total
    parts = ", ".join(f"{s.name} ({s.format}, weight {s.weight:g})" for s in sources)
    lines.append(f"  packing group {group!r}: {share:.1%} of rows: {parts}")
  return lines
