"""Masked packing with per-token loss weights: packed training that computes unpacked, padded training.

LWM (Sec. 4.2, Table 10) packs several examples into one row of S tokens, masks attention so each
example sees only itself, and re-weights the loss so the packed batch computes exactly what
one-example-per-row, padded training computes. This module holds the per-example and per-row
pieces, with no MaxText and no JAX:

* `example_features`: one example `{"tokens", "loss_mask", "is_vision"}` -> its next-token
  features: `inputs = tokens[:-1]`, `targets = tokens[1:]`, `targets_vision_mask` (the target is a
  vision token) and raw weights `targets_weights`.
* `fit_length`: the overlong policy (truncate | split | error) for examples over S + 1 tokens.
* `pack_rows`: Grain's own first-fit / best-fit packers, extended by `length_struct` to carry the
  weights and the vision mask as packed meta features; rows get MaxText's key names.
* `normalize_weights`: raw weights -> final weights over one batch.
* `pack_examples`: all of the above for a list of examples (tests, users, the reference).

Weights. With `weighting="example"` the loader emits raw weights `u = 1 / n_im` on the loss tokens
of example i and modality m (n_im: that example's count of modality-m loss tokens), so every
(example, modality) sums to exactly 1 and `U_m = sum(u * [modality m])` is N_m, the number of
examples with any modality-m loss token. The final weight of a loss token is
`lambda_m * u / N_m = lambda_m / (n_im * N_m)`, and

    sum_t w_t * loss_t = sum_m lambda_m * mean_{i: n_im > 0} ( mean_{t in i, m} loss_t ),

which is unpacked padded training, whatever the packing. With `weighting="token"` `u = 1` and the
final weight is `1 / T` (T: all loss tokens), the plain token mean (lambdas unused).

N_m must be counted over the whole (global) batch, so the normalisation is separate from
packing: `normalize_weights` does it on the host for one local batch (single host, tests,
`pack_examples`), `lwm_plugin.losses.weighted` does it on device inside the jitted step, where a sum over
the batch is global across hosts (that is what MaxText training uses). Counting on the host per
local batch would be wrong with more than one host.

Note: LWM's own loss divides each modality by all rows B of the batch (rows without that
modality count as zeros); we divide by N_m, the examples that have it, as the issue specifies.
The two agree whenever every example has both modalities (or for text-only data).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import grain
import numpy as np

from data_loaders.batch import LWM_KEYS, ROW_KEYS, VISION_MASK, WEIGHTS
from data_loaders.weights import MODALITIES, WEIGHTINGS, LossWeighting, final_weights

Example = dict[str, np.ndarray]

OVERLONG_POLICIES = ("truncate", "split", "error")
PACKING_TYPES = ("first_fit", "best_fit")

_GRAIN_TO_MAXTEXT = {"inputs_segment_ids": "inputs_segmentation", "targets_segment_ids": "targets_segmentation",
                     "inputs_positions": "inputs_position", "targets_positions": "targets_position"}
_META = tuple(LWM_KEYS)


class OverlongError(ValueError):
  """An example over the row length with `overlong="error"`."""


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
  if value not in choices:
    raise ValueError(f"{name}={value!r}; expected one of {', '.join(repr(c) for c in choices)}")


def check_example(example: Mapping[str, np.ndarray], where: str = "example") -> None:
  """Raises ValueError unless `example` has 1-D `tokens`, `loss_mask`, `is_vision` of one length."""
  missing = [k for k in ("tokens", "loss_mask", "is_vision") if k not in example]
  if missing:
    raise ValueError(f"{where}: missing keys {missing} (an example is {{'tokens', 'loss_mask', 'is_vision'}})")
  shapes = {k: np.shape(example[k]) for k in ("tokens", "loss_mask", "is_vision")}
  if len(set(shapes.values())) != 1 or len(shapes["tokens"]) != 1:
    raise ValueError(f"{where}: tokens, loss_mask and is_vision must be 1-D and of one length, got {shapes}")


def example_features(example: Mapping[str, np.ndarray], *, weighting: str = "example") -> Example:
  """Next-token features of one example, with raw weights (see the module docstring).

  `loss_mask[t]` says whether token t is a target with loss, so target t - 1 of the features
  (which predicts token t) carries `loss_mask[t]`; token 0 is never a target.
  """
  _check_choice("weighting", weighting, WEIGHTINGS)
  tokens = np.asarray(example["tokens"], np.int32)
  loss = np.asarray(example["loss_mask"])[1:] != 0
  vision = np.asarray(example["is_vision"])[1:].astype(bool)
  weights = np.zeros(loss.shape, np.float32)
  if weighting == "token":
    weights[loss] = 1.0
  else:
    for mask in (loss & ~vision, loss & vision):
      n = int(mask.sum())
      if n:
        weights[mask] = np.float32(1.0 / n)
  return {"inputs": tokens[:-1], "targets": tokens[1:], WEIGHTS: weights, VISION_MASK: vision.astype(np.int32)}


def has_loss(features: Mapping[str, np.ndarray]) -> bool:
  return bool(np.any(features[WEIGHTS] > 0))


def fit_length(example: Mapping[str, np.ndarray], max_tokens: int, policy: str, where: str = "example") -> list[Example]:
  """The overlong policy: `example` itself if it has at most `max_tokens` tokens (S + 1 for rows of S).

  truncate: its first `max_tokens` tokens. split: consecutive pieces of `max_tokens` tokens that
  share one boundary token (piece k covers tokens [k*S, k*S + S]), so every target of the example
  is a target of exactly one piece; pieces are separate examples (own weights, positions from 0).
  error: OverlongError naming `where` (file:line).
  """
  _check_choice("overlong policy", policy, OVERLONG_POLICIES)
  if max_tokens < 2:
    raise ValueError(f"max_tokens={max_tokens}: a row needs room for at least one target")
  n = len(example["tokens"])
  if n <= max_tokens:
    return [dict(example)]
  if policy == "error":
    raise OverlongError(f"{where}: example of {n} tokens is longer than a row ({max_tokens - 1} targets, "
                        f"max_target_length={max_tokens - 1}); set lwm_overlong to 'truncate' or 'split', raise "
                        "max_target_length, or shorten the example")
  if policy == "truncate":
    return [{k: np.asarray(v)[:max_tokens] for k, v in example.items()}]
  step = max_tokens - 1
  return [{k: np.asarray(v)[start:start + max_tokens] for k, v in example.items()}
          for start in range(0, n - 1, step)]


def _rename(row: Mapping[str, np.ndarray]) -> Example:
  return {_GRAIN_TO_MAXTEXT.get(k, k): v for k, v in row.items()}


def pack_rows(features: grain.IterDataset, *, seq_len: int, packing_type: str = "first_fit", num_bins: int,
              max_segments: int | None = None, shuffle_bins: bool = False, seed: int = 0) -> grain.IterDataset:
  """Grain's packer over example features -> rows of `seq_len` with the keys `ROW_KEYS`.

  Segment ids start at 1 per row, positions restart at 0 per example, padding is 0 everywhere
  (so padding has weight 0). `max_segments=1` gives one example per row: unpacked, padded rows.
  """
  _check_choice("packing_type", packing_type, PACKING_TYPES)
  cls = (grain.experimental.FirstFitPackIterDataset if packing_type == "first_fit"
         else grain.experimental.BestFitPackIterDataset)
  length_struct = {k: seq_len for k in ("inputs", "targets", *_META)}
  packed = cls(features, length_struct=length_struct, num_packing_bins=num_bins, seed=seed,
               shuffle_bins=shuffle_bins, meta_features=_META, max_sequences_per_bin=max_segments)
  return packed.map(_rename)


def normalize_weights(batch: Mapping[str, np.ndarray], *, modality_weights: Mapping[str, float],
                      weighting: str = "example") -> Example:
  """A copy of `batch` whose `targets_weights` are final (raw weights over this batch's counts).

  example: `lambda_m * u / N_m` with `N_m = round(U_m)` (the count of examples with modality-m loss);
  token: `u / T`. A modality absent from the batch contributes nothing. Only correct when `batch`
  is the whole batch of an optimizer step; with several hosts normalise on device (`lwm_plugin.losses.weighted`).
  """
  _check_choice("weighting", weighting, WEIGHTINGS)
  unknown = sorted(set(modality_weights) - set(MODALITIES))
  if unknown:
    raise ValueError(f"modality_weights: unknown modalities {unknown}; expected keys {list(MODALITIES)}")
  u = np.asarray(batch[WEIGHTS], np.float64)
  vision = np.asarray(batch[VISION_MASK]).astype(bool)
  how = LossWeighting(weighting, float(modality_weights.get("text", 0.0)), float(modality_weights.get("vision", 0.0)))
  final = final_weights(u, vision, u[~vision].sum(), u[vision].sum(), how, np)
  return {**batch, WEIGHTS: final.astype(np.float32)}


def stack_rows(rows: Iterable[Mapping[str, np.ndarray]]) -> Example:
  rows = list(rows)
  if not rows:
    raise ValueError("no rows to stack")
  return {k: np.stack([r[k] for r in rows]) for k in ROW_KEYS}


def pack_examples(examples: Sequence[Mapping[str, Any]], *, seq_len: int, modality_weights: Mapping[str, float],
                  weighting: str = "example", packing_type: str = "first_fit", max_segments: int | None = None,
                  overlong: str = "error", finalize: bool = True) -> Example:
  """Packs `examples` (in order) into as many rows of `seq_len` as needed, with final weights.

  Returns `ROW_KEYS` arrays of shape [R, seq_len]. The rows are the packer's output in first-use
  order; `targets_weights` are normalised over all R rows (one batch), or left raw with
  `finalize=False` (what the loader emits; the device normalises). Examples without any loss
  token are dropped (they would weigh 0). `max_segments=1` gives the unpacked, padded batch.
  """
  features = []
  for index, example in enumerate(examples):
    check_example(example, f"example {index}")
    for piece in fit_length(example, seq_len + 1, overlong, f"example {index}"):
      f = example_features(piece, weighting=weighting)
      if has_loss(f):
        features.append(f)
  if not features:
    raise ValueError("pack_examples: no example has a loss token")
  rows = pack_rows(grain.MapDataset.source(features).to_iter_dataset(), seq_len=seq_len, packing_type=packing_type,
                   num_bins=len(features), max_segments=max_segments)
  batch = stack_rows(rows)
  return normalize_weights(batch, modality_weights=modality_weights, weighting=weighting) if finalize else batch
