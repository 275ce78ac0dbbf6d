"""`data_loaders.packing`: exact packed rows, weights, overlong policies, and packed == unpacked padded loss."""

import pickle

import numpy as np
import pytest

from data_loaders.packing import (ROW_KEYS, OverlongError, example_features, fit_length, normalize_weights,
                                  pack_examples)

LAMBDA = {"text": 0.5, "vision": 0.5}


def ex(tokens, loss, vision):
  return {"tokens": np.array(tokens, np.int32), "loss_mask": np.array(loss, np.int32),
          "is_vision": np.array(vision, bool)}


# a: text, loss on its last 2 tokens. b: 3 vision targets + a text EOS. c: text, 2 loss tokens.
A = ex([1, 5, 6, 2], [0, 0, 1, 1], [0, 0, 0, 0])
B = ex([1, 100, 101, 102, 2], [0, 1, 1, 1, 1], [0, 1, 1, 1, 0])
C = ex([1, 7, 2], [0, 1, 1], [0, 0, 0])


def test_hand_packed_rows_with_example_weights():
  rows = pack_examples([A, B, C], seq_len=8, modality_weights=LAMBDA)
  assert set(rows) == set(ROW_KEYS)
  # First fit: a (3 targets) + b (4 targets) fill row 0 but one slot; c (2 targets) opens row 1.
  expected = {
      "inputs": [[1, 5, 6, 1, 100, 101, 102, 0], [1, 7, 0, 0, 0, 0, 0, 0]],
      "targets": [[5, 6, 2, 100, 101, 102, 2, 0], [7, 2, 0, 0, 0, 0, 0, 0]],
      "inputs_segmentation": [[1, 1, 1, 2, 2, 2, 2, 0], [1, 1, 0, 0, 0, 0, 0, 0]],
      "targets_segmentation": [[1, 1, 1, 2, 2, 2, 2, 0], [1, 1, 0, 0, 0, 0, 0, 0]],
      "inputs_position": [[0, 1, 2, 0, 1, 2, 3, 0], [0, 1, 0, 0, 0, 0, 0, 0]],
      "targets_position": [[0, 1, 2, 0, 1, 2, 3, 0], [0, 1, 0, 0, 0, 0, 0, 0]],
      "targets_vision_mask": [[0, 0, 0, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0]],
  }
  for key, value in expected.items():
    np.testing.assert_array_equal(rows[key], value, err_msg=key)
    assert rows[key].dtype == np.int32, key
  # N_text = 3 (a, b's EOS, c), N_vision = 1 (b). lambda / (n_im * N_m):
  t_a, t_b, t_c, v_b = 0.5 / (2 * 3), 0.5 / (1 * 3), 0.5 / (2 * 3), 0.5 / (3 * 1)
  np.testing.assert_allclose(rows["targets_weights"], [[0, t_a, t_a, v_b, v_b, v_b, t_b, 0],
                                                       [t_c, t_c, 0, 0, 0, 0, 0, 0]], rtol=1e-7)
  assert rows["targets_weights"].dtype == np.float32
  np.testing.assert_allclose(rows["targets_weights"].sum(), 1.0, rtol=1e-6)  # sum of the lambdas


def test_token_weighting_is_the_plain_mean_and_unpacked_is_one_example_per_row():
  rows = pack_examples([A, B, C], seq_len=8, modality_weights=LAMBDA, weighting="token", max_segments=1)
  np.testing.assert_array_equal(rows["inputs_segmentation"], [[1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0],
                                                              [1, 1, 0, 0, 0, 0, 0, 0]])
  t = 1 / 8  # 2 + 4 + 2 loss tokens
  np.testing.assert_allclose(rows["targets_weights"], [[0, t, t, 0, 0, 0, 0, 0], [t, t, t, t, 0, 0, 0, 0],
                                                       [t, t, 0, 0, 0, 0, 0, 0]])


def test_raw_weights_sum_to_one_per_example_and_modality():
  f = example_features(B)
  np.testing.assert_allclose(f["targets_weights"], [1 / 3, 1 / 3, 1 / 3, 1.0], rtol=1e-7)
  rows = pack_examples([A, B, C], seq_len=8, modality_weights=LAMBDA, finalize=False)
  vision = rows["targets_vision_mask"].astype(bool)
  assert rows["targets_weights"][~vision].sum() == pytest.approx(3.0)  # N_text
  assert rows["targets_weights"][vision].sum() == pytest.approx(1.0)  # N_vision


def test_overlong_policies():
  long = ex(range(10, 20), [0] + [1] * 9, [0] * 10)
  with pytest.raises(OverlongError, match=r"data.jsonl:7: example of 10 tokens is longer than a row"):
    fit_length(long, 5, "error", "data.jsonl:7")
  (t,) = fit_length(long, 5, "truncate")
  np.testing.assert_array_equal(t["tokens"], [10, 11, 12, 13, 14])
  pieces = fit_length(long, 5, "split")
  assert [p["tokens"].tolist() for p in pieces] == [[10, 11, 12, 13, 14], [14, 15, 16, 17, 18], [18, 19]]
  # every target of the example is a target of exactly one piece
  targets = [x for p in pieces for x in example_features(p)["targets"].tolist()]
  assert targets == list(range(11, 20))
  with pytest.raises(OverlongError, match="example 0"):
    pack_examples([long], seq_len=4, modality_weights=LAMBDA)


def test_overlong_error_survives_a_pickle_round_trip():
  """Grain worker processes send exceptions back pickled."""
  long = ex(range(10, 20), [0] + [1] * 9, [0] * 10)
  with pytest.raises(OverlongError) as err:
    fit_length(long, 5, "error", "data.jsonl:7")
  back = pickle.loads(pickle.dumps(err.value))
  assert type(back) is OverlongError and str(back) == str(err.value) and str(back).startswith("data.jsonl:7: ")


def _random_examples(rng, n):
  out = []
  for _ in range(n):
    length = int(rng.integers(2, 30))
    tokens = rng.integers(3, 1000, size=length)
    vision = rng.random(length) < rng.choice([0.0, 0.5, 1.0])
    vision[0] = False
    loss = (rng.random(length) < 0.7).astype(np.int32)
    loss[0] = 0
    loss[-1] = 1
    out.append(ex(tokens, loss, vision))
  return out


def _fixed_loss(inputs, targets, positions):
  """A per-token 'loss' that depends only on what a token sees in its own example."""
  return 1.0 + np.sin(0.37 * inputs + 0.11 * targets + 0.05 * positions) ** 2


def _reference(examples, lam):
  """Unpacked, padded training: per example and modality the mean loss, then the mean over examples."""
  per_modality = {"text": [], "vision": []}
  for e in examples:
    tokens = e["tokens"]
    loss = _fixed_loss(tokens[:-1], tokens[1:], np.arange(len(tokens) - 1))
    has_loss = e["loss_mask"][1:] == 1
    vision = e["is_vision"][1:]
    for name, mask in (("text", has_loss & ~vision), ("vision", has_loss & vision)):
      if mask.any():
        per_modality[name].append(loss[mask].mean())
  means = {k: float(np.mean(v)) if v else 0.0 for k, v in per_modality.items()}
  return means, sum(lam[k] * means[k] for k in means)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("packing_type", ["first_fit", "best_fit"])
def test_packed_weighted_loss_equals_unpacked_padded_loss(seed, packing_type):
  rng = np.random.default_rng(seed)
  examples = _random_examples(rng, 40)
  lam = {"text": float(rng.uniform(0.1, 1)), "vision": float(rng.uniform(0.1, 1))}
  means, combined = _reference(examples, lam)
  for max_segments in (None, 1):  # packed, and one example per row (padded)
    rows = pack_examples(examples, seq_len=48, modality_weights=lam, packing_type=packing_type,
                         max_segments=max_segments)
    loss = _fixed_loss(rows["inputs"], rows["targets"], rows["inputs_position"])
    weighted = rows["targets_weights"] * loss
    vision = rows["targets_vision_mask"].astype(bool)
    assert weighted.sum() == pytest.approx(combined, rel=1e-6, abs=0)
    assert weighted[~vision].sum() / lam["text"] == pytest.approx(means["text"], rel=1e-6)
    assert weighted[vision].sum() / lam["vision"] == pytest.approx(means["vision"], rel=1e-6)
    assert np.all(rows["targets_weights"][rows["targets_segmentation"] == 0] == 0)  # padding weighs nothing
  assert len(pack_examples(examples, seq_len=48, modality_weights=lam)["inputs"]) < len(examples)  # it packed


def test_normalize_weights_names_bad_modalities_and_skips_absent_ones():
  rows = pack_examples([A, C], seq_len=8, modality_weights=LAMBDA, finalize=False)
  out = normalize_weights(rows, modality_weights={"text": 1.0, "vision": 0.5})
  assert out["targets_weights"].sum() == pytest.approx(1.0)  # no vision example: only lambda_text
  with pytest.raises(ValueError, match="unknown modalities"):
    normalize_weights(rows, modality_weights={"audio": 1.0})
