"""The JAX VQGAN against diffusers' `VQModel` (torch, CPU, in .venv-hf) on the same random weights.

One module fixture writes random weights as diffusers directories (a small model, and the full-size
aMUSEd/LWM model on small images: the architecture is convolutional, so 32x32 pixels exercise every
tensor at a fraction of the cost of 256x256), takes the demo's shipped toy VQGAN as a third, and runs
diffusers once on them (one process:
tests/helpers/diffusers_side.py loads each directory with `from_pretrained` and again with a strict
`load_state_dict`). Then: same codes, same decoded pixels, the LWM pickle layout gives identical codes,
bfloat16 agrees mostly, 4 fake CPU devices give the codes of 1, bad inputs are refused eagerly.
"""

import json
import subprocess

import numpy as np
import pytest

from conftest import REPO, run_python
from helpers.vqgan_files import SMALL, write_random_vqgan
from lwm_plugin.demo import vqgan_round_trip
from lwm_plugin.vision import vqgan_weights
from lwm_plugin.vision.vqgan import VQGANCodec, VQGANConfig, load_vqgan

FULL = VQGANConfig()
TOY_DIR = vqgan_round_trip.TOY_VQGAN   # the demo's shipped weights: diffusers must read them as we do
CASES = {   # name -> (config, pixels shape)
    "small": (SMALL, (6, 32, 32, 3)),
    "full": (FULL, (4, 32, 32, 3)),
    "toy": (vqgan_weights.read_weights(TOY_DIR)[0], (16, 32, 32, 3)),
}


def hf_python() -> str:
  """.venv-hf's interpreter, created on first use; a failure fails the test (never a skip)."""
  proc = subprocess.run([str(REPO / "tools" / "hf_venv.sh")], capture_output=True, text=True, timeout=1200)
  if proc.returncode != 0:
    pytest.fail(f"tools/hf_venv.sh could not create the diffusers reference venv:\n{proc.stderr[-4000:]}")
  return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
  """Per case: weights dir, pixels, our float32 codec, our codes, and diffusers' codes and decoded pixels."""
  tmp = tmp_path_factory.mktemp("vqgan")
  rng = np.random.default_rng(0)
  out, jobs = {}, []
  for name, (config, shape) in CASES.items():
    model_dir = TOY_DIR if name == "toy" else tmp / name
    if name != "toy":
      write_random_vqgan(model_dir, "diffusers", config, seed=1)
    pixels = rng.uniform(-1, 1, shape).astype(np.float32)
    codec = load_vqgan(model_dir, max_batch_per_device=4)
    codes = codec.encode(pixels)
    np.save(tmp / f"{name}_pixels.npy", pixels)
    np.save(tmp / f"{name}_codes.npy", codes)
    jobs += [{"op": "encode", "model": str(model_dir), "pixels": str(tmp / f"{name}_pixels.npy"),
              "out": str(tmp / f"{name}_ref_codes.npy")},
             {"op": "decode", "model": str(model_dir), "codes": str(tmp / f"{name}_codes.npy"),
              "out": str(tmp / f"{name}_ref_pixels.npy")}]
    out[name] = dict(dir=model_dir, pixels=pixels, codec=codec, codes=codes)
  (tmp / "jobs.json").write_text(json.dumps(jobs))
  proc = subprocess.run([hf_python(), str(REPO / "tests/helpers/diffusers_side.py"), str(tmp / "jobs.json")],
                        capture_output=True, text=True, timeout=900, check=False)
  if proc.returncode != 0:
    pytest.fail(f"diffusers reference failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}")
  for name, case in out.items():
    case["ref_codes"] = np.load(tmp / f"{name}_ref_codes.npy")
    case["ref_pixels"] = np.load(tmp / f"{name}_ref_pixels.npy")
  out["tmp"] = tmp
  return out


@pytest.mark.parametrize("name", list(CASES))
def test_codes_match_diffusers(ref, name):
  case = ref[name]
  config = CASES[name][0]
  f = config.downsample_factor
  assert case["codes"].dtype == np.int32
  assert case["codes"].shape == case["ref_codes"].shape == (case["pixels"].shape[0], 32 // f, 32 // f)
  assert np.mean(case["codes"] == case["ref_codes"]) >= 0.99
  assert len(np.unique(case["ref_codes"])) >= 4, "the model uses too few codes for the test to mean much"


@pytest.mark.parametrize("name", list(CASES))
def test_decode_matches_diffusers(ref, name):
  case = ref[name]
  pixels = case["codec"].decode(case["codes"])
  assert pixels.dtype == np.float32 and pixels.shape == case["pixels"].shape
  assert np.abs(pixels).max() <= 1.0
  assert np.mean(np.abs(pixels - case["ref_pixels"])) <= 1 / 255
  assert np.mean(np.abs(case["ref_pixels"]) < 1) > 0.5, "decoded pixels mostly saturated: the comparison is weak"


def test_a_misplaced_tensor_changes_the_codes(ref):
  """The parity test is sensitive: two res blocks' second convolutions swapped -> far fewer codes agree."""
  case = ref["small"]
  _, params = vqgan_weights.read_diffusers(case["dir"])
  a, b = "encoder/down_0/res_0/conv2/kernel", "encoder/down_1/res_0/conv2/kernel"
  assert params[a].shape == params[b].shape
  params[a], params[b] = params[b], params[a]
  codes = VQGANCodec(SMALL, params).encode(case["pixels"])
  assert np.mean(codes == case["ref_codes"]) < 0.5


@pytest.mark.parametrize("name", ["small", pytest.param("full", marks=pytest.mark.slow)])   # full: a 585 MB pickle
def test_lwm_layout_gives_identical_codes(ref, name):
  case = ref[name]
  config, params = vqgan_weights.read_diffusers(case["dir"])
  path = ref["tmp"] / f"{name}_vqgan.pkl"
  vqgan_weights.write_lwm(path, config, params)
  codec = load_vqgan(path, max_batch_per_device=4)
  assert codec.config == config
  np.testing.assert_array_equal(codec.encode(case["pixels"]), case["codes"])
  np.testing.assert_array_equal(codec.decode(case["codes"][:2]), case["codec"].decode(case["codes"][:2]))


def test_bfloat16_agrees_mostly(ref):
  case = ref["small"]
  codec = load_vqgan(case["dir"], dtype="bfloat16")
  codes = codec.encode(case["pixels"])
  assert codes.dtype == np.int32
  assert np.mean(codes == case["ref_codes"]) >= 0.9
  pixels = codec.decode(case["codes"])
  assert pixels.dtype == np.float32
  assert np.mean(np.abs(pixels - case["ref_pixels"])) <= 0.02


def test_batches_are_chunked_and_padded_to_few_shapes(ref):
  """4 per device: 7 images -> chunks 4 and 3 (padded to 4), 3 -> 4: one compiled shape; 1 -> a second."""
  case = ref["small"]
  codec = load_vqgan(case["dir"], max_batch_per_device=4)
  pixels = np.concatenate([case["pixels"], case["pixels"][:1]])
  np.testing.assert_array_equal(codec.encode(pixels), np.concatenate([case["codes"], case["codes"][:1]]))
  np.testing.assert_array_equal(codec.encode(pixels[:3]), case["codes"][:3])
  assert codec._encode._cache_size() == 1   # pylint: disable=protected-access
  np.testing.assert_array_equal(codec.encode(pixels[:1]), case["codes"][:1])
  assert codec._encode._cache_size() == 2   # pylint: disable=protected-access
  assert codec.encode(pixels[:0]).shape == (0, 8, 8)


def test_multi_device_gives_the_codes_of_one(ref):
  case = ref["small"]
  run_python(f"""
import jax, numpy as np
from lwm_plugin.vision.vqgan import load_vqgan
assert len(jax.devices()) == 4
codec = load_vqgan({str(case['dir'])!r}, max_batch_per_device=1)
pixels = np.load({str(ref['tmp'] / 'small_pixels.npy')!r})
codes = codec.encode(pixels)   # 6 images: a chunk of 4, then 2 padded to 4
assert codes.shape == (6, 8, 8), codes.shape
np.testing.assert_array_equal(codes, np.load({str(ref['tmp'] / 'small_codes.npy')!r}))
shards = codec._encode(codec._params, jax.device_put(pixels[:4], codec._batch_sharding)).addressable_shards
assert sorted(s.device.id for s in shards) == [0, 1, 2, 3] and all(s.data.shape == (1, 8, 8) for s in shards)
pixels_out = codec.decode(codes)
assert pixels_out.shape == pixels.shape
""", devices=4)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 32, 32), np.float32), r"pixels shape \(2, 32, 32\)"),
    (np.zeros((2, 30, 32, 3), np.float32), r"multiples of 4"),
    (np.zeros((2, 32, 32, 3), np.uint8), r"pixels dtype uint8"),
    (np.full((1, 32, 32, 3), 1.5, np.float32), r"pixels\[0, 0, 0, 0\] = 1.5"),
    (np.where(np.arange(3) == 2, np.nan, 0.0)[None, None, None, :].repeat(32, 1).repeat(32, 2), r"= nan"),
])
def test_encode_refuses_bad_pixels(ref, bad, message):
  with pytest.raises(ValueError, match=message):
    ref["small"]["codec"].encode(bad)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 8), np.int32), r"codes shape \(2, 8\)"),
    (np.zeros((2, 8, 8), np.float32), r"codes dtype float32"),
    (np.full((1, 8, 8), 64, np.int32), r"codes\[0, 0, 0\] = 64: codes must be in \[0, 64\)"),
    (np.where(np.arange(8) == 5, -1, 0)[None, None, :].repeat(8, 1), r"codes\[0, 0, 5\] = -1"),
])
def test_decode_refuses_bad_codes(ref, bad, message):
  with pytest.raises(ValueError, match=message):
    ref["small"]["codec"].decode(bad)


def test_load_vqgan_refuses_an_unknown_dtype(ref):
  with pytest.raises(ValueError, match="dtype='float16'"):
    load_vqgan(ref["small"]["dir"], dtype="float16")
