"""`lwm_plugin.losses.weighted`: device-side weighting against an independent per-example reference; global N."""

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_python
from data_loaders.packing import pack_examples
from lwm_plugin.losses.weighted import LossWeighting, batch_totals, modality_losses, weighted_sums


def _examples(rng, n):
  out = []
  for _ in range(n):
    length = int(rng.integers(3, 25))
    vision = rng.random(length) < rng.choice([0.0, 0.6, 1.0])
    loss = (rng.random(length) < 0.8).astype(np.int32)
    loss[0], loss[-1], vision[0] = 0, 1, False
    out.append({"tokens": rng.integers(3, 500, size=length).astype(np.int32), "loss_mask": loss, "is_vision": vision})
  return out


def _reference(rows, loss, lam):
  """Per (row, segment) = example and modality: its mean loss; then the mean over examples; lambda-combined."""
  means = {}
  for m, is_vision in (("text", False), ("vision", True)):
    per_example = []
    for r in range(rows["inputs"].shape[0]):
      for seg in np.unique(rows["targets_segmentation"][r]):
        if seg == 0:
          continue
        sel = ((rows["targets_segmentation"][r] == seg) & (rows["targets_weights"][r] > 0)
               & (rows["targets_vision_mask"][r].astype(bool) == is_vision))
        if sel.any():
          per_example.append(loss[r][sel].mean())
    means[m] = float(np.mean(per_example)) if per_example else 0.0
  return means, lam["text"] * means["text"] + lam["vision"] * means["vision"]


@pytest.mark.parametrize("seed", range(3))
def test_weighted_loss_equals_the_per_example_reference(seed):
  rng = np.random.default_rng(seed)
  lam = {"text": 0.3, "vision": 0.9}
  rows = pack_examples(_examples(rng, 30), seq_len=40, modality_weights=lam, finalize=False)  # raw weights
  loss = rng.uniform(0.5, 3.0, size=rows["inputs"].shape).astype(np.float32)
  means, combined = _reference(rows, loss, lam)
  weighting = LossWeighting("example", lam["text"], lam["vision"])
  u, vision = jnp.asarray(rows["targets_weights"]), jnp.asarray(rows["targets_vision_mask"])
  sums = jax.jit(weighted_sums, static_argnums=3)(jnp.asarray(loss), u, vision, weighting)
  assert float(sums["loss"]) == pytest.approx(combined, rel=1e-6)
  totals = batch_totals(u, vision)
  text, vis = modality_losses(sums["text_sum"], sums["vision_sum"], totals)
  assert (float(text), float(vis)) == pytest.approx((means["text"], means["vision"]), rel=1e-6)
  n_text = sum(1 for r in range(len(loss)) for s in np.unique(rows["targets_segmentation"][r]) if s and np.any(
      (rows["targets_segmentation"][r] == s) & (rows["targets_weights"][r] > 0) & (rows["targets_vision_mask"][r] == 0)))
  assert float(jnp.round(totals[0])) == n_text
  assert float(totals[2] + totals[3]) == np.sum(rows["targets_weights"] > 0)

  # Gradient accumulation: microbatches with the step's totals add up to the whole step's loss.
  parts = [weighted_sums(jnp.asarray(loss[i::2]), u[i::2], vision[i::2], weighting, totals)["loss"] for i in range(2)]
  assert float(sum(parts)) == pytest.approx(combined, rel=1e-6)
  # Counting N per microbatch instead would be wrong.
  wrong = [weighted_sums(jnp.asarray(loss[i::2]), u[i::2], vision[i::2], weighting)["loss"] for i in range(2)]
  assert float(sum(wrong)) != pytest.approx(combined, rel=1e-3)


def test_token_weighting_is_the_token_mean():
  rng = np.random.default_rng(7)
  rows = pack_examples(_examples(rng, 10), seq_len=40, modality_weights={}, weighting="token", finalize=False)
  loss = rng.uniform(0.5, 3.0, size=rows["inputs"].shape).astype(np.float32)
  mask = rows["targets_weights"] > 0
  sums = weighted_sums(jnp.asarray(loss), jnp.asarray(rows["targets_weights"]),
                       jnp.asarray(rows["targets_vision_mask"]), LossWeighting("token"))
  assert float(sums["loss"]) == pytest.approx(loss[mask].mean(), rel=1e-6)


def test_an_absent_modality_contributes_nothing():
  u = jnp.asarray([[0.5, 0.5, 0.0]])
  sums = weighted_sums(jnp.asarray([[2.0, 4.0, 9.0]]), u, jnp.zeros((1, 3), jnp.int32), LossWeighting("example"))
  assert float(sums["loss"]) == pytest.approx(0.5 * 3.0)
  assert float(sums["vision_sum"]) == 0.0


def test_counts_stay_exact_on_a_million_token_row():
  rng = np.random.default_rng(0)
  u = np.zeros(1 << 20, np.float32)
  pos, n_examples = 0, 0
  while pos < len(u):
    n = min(int(rng.integers(2, 400)), len(u) - pos)
    u[pos:pos + n] = np.float32(1.0 / n)
    pos, n_examples = pos + n, n_examples + 1
  totals = batch_totals(jnp.asarray(u[None]), jnp.zeros((1, len(u)), jnp.int32))
  assert abs(float(totals[0]) - n_examples) < 1e-2
  assert float(jnp.round(totals[0])) == n_examples


def test_n_is_counted_over_the_global_batch_on_four_devices():
  # The batch is sharded over 4 devices (as over hosts); the jitted count must be the global one,
  # and a token permutation (context-parallel load balancing) must not change the loss.
  code = textwrap.dedent("""
      import jax, jax.numpy as jnp, numpy as np
      from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
      from data_loaders.packing import pack_examples
      from lwm_plugin.losses.weighted import LossWeighting, batch_totals, weighted_sums
      rng = np.random.default_rng(1)
      examples = []
      for _ in range(40):
        n = int(rng.integers(3, 20)); vis = rng.random(n) < 0.5; vis[0] = False
        examples.append({"tokens": rng.integers(3, 99, n), "loss_mask": np.r_[0, np.ones(n - 1, int)], "is_vision": vis})
      rows = pack_examples(examples, seq_len=32, modality_weights={}, finalize=False)
      B = len(rows["inputs"]) // 4 * 4
      u, vis = rows["targets_weights"][:B], rows["targets_vision_mask"][:B]
      loss = rng.uniform(1, 2, size=u.shape).astype(np.float32)
      mesh = Mesh(np.array(jax.devices()), ("data",))
      put = lambda x: jax.device_put(x, NamedSharding(mesh, P("data", None)))
      w = LossWeighting("example", 0.5, 0.5)
      step = jax.jit(lambda l, u, v: (batch_totals(u, v), weighted_sums(l, u, v, w)["loss"]))
      totals, value = step(put(loss), put(u), put(vis))
      assert len(put(u).sharding.device_set) == 4
      n_text = round(float(u[vis == 0].sum())); n_vision = round(float(u[vis == 1].sum()))
      assert (round(float(totals[0])), round(float(totals[1]))) == (n_text, n_vision), (totals, n_text, n_vision)
      per_device = [round(float(u[i::4][vis[i::4] == 0].sum())) for i in range(4)]
      assert max(per_device) < n_text
      perm = rng.permutation(u.shape[1])
      _, permuted = step(put(loss[:, perm]), put(u[:, perm]), put(vis[:, perm]))
      assert abs(float(permuted) - float(value)) < 1e-6, (permuted, value)
      print("ok", n_text, n_vision)
      """)
  proc = run_python(code, devices=4)
  assert "ok" in proc.stdout
