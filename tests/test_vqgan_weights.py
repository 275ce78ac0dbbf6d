"""VQGAN weights: the name table against the Flax model, both layouts' readers and their errors,
and the restricted unpickler (refuses by name before anything runs)."""

import json
import pickle

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax.core import freeze
from safetensors.numpy import load_file, save_file

from helpers.vqgan_files import SMALL, write_random_vqgan
from lwm_plugin.vision import vqgan_weights as w
from lwm_plugin.vision.vqgan import VQGANCodec, VQGANConfig, VQGANModel


@pytest.mark.parametrize("config", [SMALL, VQGANConfig()], ids=["small", "full"])
def test_name_table_is_the_flax_models_parameters(config):
  f = config.downsample_factor
  tree = jax.eval_shape(lambda: VQGANModel(config).init(jax.random.PRNGKey(0), jnp.zeros((1, f, f, 3))))["params"]
  ours = {"/".join(k.key for k in path): leaf.shape for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
  table = w.name_table(config)
  assert ours == {t.ours: t.shape for t in table}
  for layout in ("ours", "diffusers", "lwm"):
    assert len({getattr(t, layout) for t in table}) == len(table)


def test_full_size_diffusers_names_and_shapes():
  """Spot checks against aMUSEd-256's `vqvae/` state dict (diffusers names, torch shapes)."""
  table = {t.diffusers: t for t in w.name_table(VQGANConfig())}
  assert table["encoder.conv_in.weight"].diffusers_shape() == (128, 3, 3, 3)
  assert table["encoder.down_blocks.4.resnets.0.conv_shortcut.weight"].diffusers_shape() == (768, 512, 1, 1)
  assert table["encoder.down_blocks.3.downsamplers.0.conv.weight"].diffusers_shape() == (512, 512, 3, 3)
  assert "encoder.down_blocks.4.downsamplers.0.conv.weight" not in table
  assert table["quantize.embedding.weight"].shape == (8192, 64)
  assert table["decoder.up_blocks.0.resnets.2.conv2.weight"].diffusers_shape() == (768, 768, 3, 3)
  assert table["decoder.up_blocks.4.resnets.0.conv_shortcut.weight"].diffusers_shape() == (128, 256, 1, 1)
  upsample = table["decoder.up_blocks.0.upsamplers.0.conv.weight"]
  assert upsample.lwm == "decoder/UpsamplingBlock_0/Upsample_0/Conv_0/kernel"
  assert table["decoder.conv_out.bias"].lwm == "decoder/Conv_1/bias"
  assert len(table) == 277


def test_round_trip_both_layouts(tmp_path):
  params = write_random_vqgan(tmp_path / "d", "diffusers", SMALL, seed=3)
  write_random_vqgan(tmp_path / "l.pkl", "lwm", SMALL, seed=3)
  for path in (tmp_path / "d", tmp_path / "l.pkl"):
    config, read = w.read_weights(path)
    assert config == SMALL
    assert read.keys() == params.keys()
    for name, x in params.items():
      np.testing.assert_array_equal(read[name], x, err_msg=name)


def test_config_from_amused_vqvae_config():
  amused = {"_class_name": "VQModel", "_diffusers_version": "0.25.0.dev0", "act_fn": "silu",
            "block_out_channels": [128, 256, 256, 512, 768], "down_block_types": ["DownEncoderBlock2D"] * 5,
            "force_upcast": False, "in_channels": 3, "latent_channels": 64, "layers_per_block": 2,
            "lookup_from_codebook": True, "mid_block_add_attention": False, "norm_num_groups": 32,
            "norm_type": "group", "num_vq_embeddings": 8192, "out_channels": 3, "sample_size": 32,
            "scaling_factor": 0.18215, "up_block_types": ["UpDecoderBlock2D"] * 5, "vq_embed_dim": None}
  assert w.config_from_diffusers(amused, "cfg") == VQGANConfig()
  assert w.config_from_diffusers(w.diffusers_config(VQGANConfig()), "cfg") == VQGANConfig()


@pytest.mark.parametrize("change, message", [
    ({"mid_block_add_attention": True}, "mid_block_add_attention=True is not supported"),
    ({"act_fn": "gelu"}, "act_fn='gelu' is not supported"),
    ({"norm_type": "spatial"}, "norm_type='spatial'"),
    ({"up_block_types": ["AttnUpDecoderBlock2D"] * 3}, "up_block_types="),
    ({"down_block_types": ["DownEncoderBlock2D"] * 2}, "down_block_types="),
    ({"out_channels": 4}, "out_channels=4"),
    ({"norm_num_groups": 7}, "not divisible into 7 norm groups"),
    ({"layers_per_block": 0}, "num_res_blocks must be a positive integer"),
    ({"attention_type": "x"}, r"unsupported VQModel config keys \['attention_type'\]"),
    ({"_class_name": "AutoencoderKL"}, "_class_name is 'AutoencoderKL'"),
])
def test_diffusers_config_refuses_unsupported_values_by_name(change, message):
  cfg = {**w.diffusers_config(SMALL), **change}
  with pytest.raises(w.VQGANWeightsError, match=message):
    w.config_from_diffusers(cfg, "cfg")


def test_a_missing_attention_key_means_diffusers_default_attention():
  cfg = w.diffusers_config(SMALL)
  del cfg["mid_block_add_attention"]
  with pytest.raises(w.VQGANWeightsError, match="mid_block_add_attention=True"):
    w.config_from_diffusers(cfg, "cfg")


def _edit_safetensors(directory, edit):
  path = directory / w.WEIGHTS_FILE
  tensors = dict(load_file(path))
  edit(tensors)
  save_file(tensors, path)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop("decoder.conv_in.bias"), r"missing 'decoder.conv_in.bias'; unexpected none"),
    (lambda t: t.update({"encoder.extra.weight": np.zeros(2, np.float32)}), r"missing none; unexpected 'encoder.extra"),
    (lambda t: t.update({"quant_conv.weight": np.zeros((8, 8, 3, 3), np.float32)}),
     r"'quant_conv.weight' has shape \(8, 8, 3, 3\), expected \(8, 8, 1, 1\)"),
    (lambda t: t.update({"quant_conv.bias": np.zeros(8, np.int32)}), r"'quant_conv.bias' has dtype int32"),
    (lambda t: t.update({"quant_conv.bias": np.full(8, np.inf, np.float32)}), r"'quant_conv.bias' holds non-finite"),
])
def test_diffusers_tensor_errors_name_the_tensor(tmp_path, edit, message):
  write_random_vqgan(tmp_path, "diffusers", SMALL)
  _edit_safetensors(tmp_path, edit)
  with pytest.raises(w.VQGANWeightsError, match=message):
    w.read_weights(tmp_path)


def test_diffusers_directory_errors(tmp_path):
  with pytest.raises(w.VQGANWeightsError, match="no such file or directory"):
    w.read_weights(tmp_path / "absent")
  write_random_vqgan(tmp_path / "vqvae", "diffusers", SMALL)
  with pytest.raises(w.VQGANWeightsError, match="pass its vqvae/ directory"):
    w.read_weights(tmp_path)
  weights = tmp_path / "vqvae" / w.WEIGHTS_FILE
  weights.write_bytes(weights.read_bytes()[:5000])
  with pytest.raises(w.VQGANWeightsError, match="cannot read safetensors"):
    w.read_weights(tmp_path / "vqvae")
  weights.unlink()
  with pytest.raises(w.VQGANWeightsError, match="no diffusion_pytorch_model.safetensors"):
    w.read_weights(tmp_path / "vqvae")
  (tmp_path / "vqvae" / w.CONFIG_FILE).write_text("{not json")
  with pytest.raises(w.VQGANWeightsError, match="not valid JSON"):
    w.read_weights(tmp_path / "vqvae")


def _lwm_tree(params):
  return w.nest({t.lwm: params[t.ours] for t in w.name_table(SMALL)})


def test_lwm_file_as_flax_and_jax_pickle_it(tmp_path):
  """A FrozenDict of jax Arrays (one bfloat16), pickled by flax/jax themselves, reads back."""
  params = write_random_vqgan(tmp_path / "d", "diffusers", SMALL)
  tree = jax.tree_util.tree_map(jnp.asarray, _lwm_tree(params))
  tree["quant_conv"]["bias"] = jnp.asarray(params["quant_conv/bias"], jnp.bfloat16)
  (tmp_path / "vqgan").write_bytes(pickle.dumps(freeze(tree)))
  config, read = w.read_weights(tmp_path / "vqgan")
  assert config == SMALL
  np.testing.assert_array_equal(read["encoder/conv_in/kernel"], params["encoder/conv_in/kernel"])
  np.testing.assert_array_equal(read["quant_conv/bias"],
                                params["quant_conv/bias"].astype(ml_dtypes.bfloat16).astype(np.float32))


@pytest.mark.parametrize("edit, message", [
    (lambda t: t["decoder"].pop("Conv_1"), r"missing 'decoder/Conv_1/bias', 'decoder/Conv_1/kernel'"),
    (lambda t: t["encoder"].update({"Extra_0": {"kernel": np.zeros(1, np.float32)}}), r"unexpected 'encoder/Extra_0"),
    (lambda t: t["quant_conv"].update({"bias": np.zeros(9, np.float32)}),
     r"'quant_conv/bias' has shape \(9,\), expected \(8,\)"),
    (lambda t: t.pop("quantize"), r"no 2-d tensor 'quantize/embeddings'"),
    (lambda t: t["quant_conv"].update({"bias": "x"}), r"quant_conv/bias is a str, expected an array or dict"),
    (lambda t: t.update({"params": t.pop("encoder")}), r"no encoder/DownsamplingBlock_0/ResnetBlock_0"),
])
def test_lwm_tree_errors_name_the_tensor(tmp_path, edit, message):
  tree = _lwm_tree(write_random_vqgan(tmp_path / "d", "diffusers", SMALL))
  edit(tree)
  (tmp_path / "vqgan").write_bytes(pickle.dumps(tree))
  with pytest.raises(w.VQGANWeightsError, match=message):
    w.read_weights(tmp_path / "vqgan")


class _Evil:
  def __init__(self, func, *args):
    self.func, self.args = func, args

  def __reduce__(self):
    return self.func, self.args


@pytest.mark.parametrize("payload, name", [
    (b"\x80\x02cos\nsystem\n(S'touch {marker}'\ntR.", "os.system"),
    (b"\x80\x02cbuiltins\neval\n(S'open(\"{marker}\", \"w\")'\ntR.", "builtins.eval"),
    (b"\x80\x02cbuiltins\ngetattr\n(cbuiltins\nobject\nS'x'\ntR.", "builtins.getattr"),
    (b"\x80\x02csome_module\nSomeClass\n)R.", "some_module.SomeClass"),
])
def test_unpickler_refuses_globals_by_name_before_running_them(tmp_path, payload, name):
  marker = tmp_path / "ran"
  path = tmp_path / "vqgan"
  path.write_bytes(payload.replace(b"{marker}", str(marker).encode()))
  with pytest.raises(w.VQGANWeightsError, match=f"refusing to load {name} "):
    w.read_weights(path)
  assert not marker.exists()


def test_unpickler_refuses_reduce_payloads_of_real_pickles(tmp_path):
  import os  # pylint: disable=import-outside-toplevel
  path = tmp_path / "vqgan"
  path.write_bytes(pickle.dumps({"encoder": _Evil(os.system, f"touch {tmp_path / 'ran'}")}))
  with pytest.raises(w.VQGANWeightsError, match=r"refusing to load (posix|os)\.system"):
    w.read_weights(path)
  assert not (tmp_path / "ran").exists()
  path.write_bytes(pickle.dumps({"x": _Evil(np._core.multiarray._reconstruct, np.ndarray, (10**12,), b"b")}))
  with pytest.raises(w.VQGANWeightsError, match=r"shape \(1000000000000,\)"):
    w.read_weights(path)
  path.write_bytes(pickle.dumps({"x": _Evil(np.ndarray, (10**12,))}))   # numpy.ndarray called directly
  with pytest.raises(w.VQGANWeightsError, match="not a plain pickled params tree"):
    w.read_weights(path)
  path.write_bytes(pickle.dumps({"x": np.array([object()], dtype=object)}))
  with pytest.raises(w.VQGANWeightsError, match="refusing to load builtins.object"):
    w.read_weights(path)


def test_garbage_and_truncated_lwm_files(tmp_path):
  path = tmp_path / "vqgan"
  path.write_bytes(b"PK\x03\x04 not a pickle")
  with pytest.raises(w.VQGANWeightsError, match="not a pickle file"):
    w.read_weights(path)
  whole = pickle.dumps(_lwm_tree(write_random_vqgan(tmp_path / "d", "diffusers", SMALL)))
  for cut in (3, len(whole) // 2, len(whole) - 1):
    path.write_bytes(whole[:cut])
    with pytest.raises(w.VQGANWeightsError, match="not a plain pickled params tree"):
      w.read_weights(path)
  path.write_bytes(pickle.dumps([np.zeros(2)]))
  with pytest.raises(w.VQGANWeightsError, match="holds a list, expected a dict"):
    w.read_weights(path)


def test_writers_refuse_what_their_layout_cannot_hold(tmp_path):
  params = write_random_vqgan(tmp_path / "d", "diffusers", SMALL)
  with pytest.raises(w.VQGANWeightsError, match="fixes 32 norm groups"):
    w.write_lwm(tmp_path / "l", VQGANConfig(block_channels=(16, 16), norm_groups=8), params)
  params.pop("quant_conv/bias")
  with pytest.raises(w.VQGANWeightsError, match="missing 'quant_conv/bias'"):
    w.write_diffusers(tmp_path / "d2", SMALL, params)
  assert not (tmp_path / "d2").exists() or not any((tmp_path / "d2").iterdir())
  assert json.loads((tmp_path / "d" / w.CONFIG_FILE).read_text())["mid_block_add_attention"] is False
  with pytest.raises(w.VQGANWeightsError, match="missing 'quant_conv/bias'"):
    VQGANCodec(SMALL, params)
  assert w.nest({"a/b": 1, "a/c": 2}) == {"a": {"b": 1, "c": 2}}
