"""Small LWM/EasyLM Jax checkpoints for tests, written the way EasyLM's StreamingCheckpointer writes them.

`save_checkpoint`: for each (key, value) of `flatten_dict(train_state.params)`, write
`msgpack.Packer().pack((key, flax.serialization.to_bytes(value)))`. Released `params` files hold
`train_state.params`, so keys start with 'params'. Also an independent numpy statement of what
the Hugging Face tensors of such a checkpoint must be (EasyLM's `convert_easylm_to_hf.py`).
"""

import msgpack
import numpy as np
from flax import serialization

SCAN = ("transformer", "h", "scan_decoder")


def lwm_tree(*, E, H, M, L, text_rows, vision_rows, scanned=True, dtype=np.float32, seed=0):
  """Random LWM params {key tuple (without 'params'): array}; vision tables when vision_rows > 0."""
  rng = np.random.default_rng(seed)
  HD = E  # LWM: head_dim = hidden / heads, MHA

  def kernel(*shape):
    return (0.2 * rng.standard_normal(shape)).astype(dtype)

  def norm(*shape):
    return rng.uniform(0.5, 1.5, shape).astype(dtype)

  layer = {
      ("attention", "wq", "kernel"): lambda: kernel(E, HD), ("attention", "wk", "kernel"): lambda: kernel(E, HD),
      ("attention", "wv", "kernel"): lambda: kernel(E, HD), ("attention", "wo", "kernel"): lambda: kernel(HD, E),
      ("feed_forward", "w1", "kernel"): lambda: kernel(E, M), ("feed_forward", "w2", "kernel"): lambda: kernel(M, E),
      ("feed_forward", "w3", "kernel"): lambda: kernel(E, M), ("attention_norm", "kernel"): lambda: norm(E),
      ("ffn_norm", "kernel"): lambda: norm(E),
  }
  tree = {("transformer", "wte", "embedding"): kernel(text_rows, E)}
  if vision_rows:
    tree[("transformer", "vte", "embedding")] = kernel(vision_rows, E)
  for sub, make in layer.items():
    if scanned:
      tree[SCAN + sub] = np.stack([make() for _ in range(L)])
    else:
      for i in range(L):
        tree[("transformer", "h", str(i)) + sub] = make()
  tree[("transformer", "ln_f", "kernel")] = norm(E)
  tree[("lm_head", "kernel")] = kernel(E, text_rows)
  if vision_rows:
    tree[("vision_head", "kernel")] = kernel(E, vision_rows)
  return tree


def write_lwm(path, tree):
  packer = msgpack.Packer()
  with open(path, "wb") as f:
    for key, value in tree.items():
      f.write(packer.pack((("params",) + key, serialization.to_bytes(value))))


def write_lwm_train_state(path, tree, step=7):
  """An EasyLM/LWM `streaming_train_state`: flatten_dict of the flax TrainState {step, params, opt_state},
  with the model under params/params (flax variables) and Adam moments shaped like it under opt_state."""
  packer = msgpack.Packer()
  with open(path, "wb") as f:
    f.write(packer.pack((("step",), serialization.to_bytes(np.asarray(step, np.int32)))))
    for key, value in tree.items():
      f.write(packer.pack((("params", "params") + key, serialization.to_bytes(value))))
    f.write(packer.pack((("opt_state", "0", "count"), serialization.to_bytes(np.asarray(step, np.int32)))))
    for moment in ("mu", "nu"):
      for key, value in tree.items():
        f.write(packer.pack((("opt_state", "0", moment, "params") + key,
                             serialization.to_bytes(np.full_like(value, 0.01)))))


def expected_hf(tree, *, H, L, rows):
  """HF tensors of an LWM tree (EasyLM's converter: transpose kernels, permute wq/wk rows, stack tables)."""
  def permute(w, heads):  # convert_easylm_to_hf.permute: interleaved pairs -> rotate-half
    out_dim, in_dim = w.shape
    return w.reshape(heads, out_dim // heads // 2, 2, in_dim).transpose(0, 2, 1, 3).reshape(out_dim, in_dim)

  scanned = SCAN + ("attention", "wq", "kernel") in tree

  def get(i, *sub):
    return tree[SCAN + sub][i] if scanned else tree[("transformer", "h", str(i)) + sub]

  f32 = lambda x: np.asarray(x, np.float32)
  out = {}
  for i in range(L):
    p = f"model.layers.{i}."
    out[p + "self_attn.q_proj.weight"] = permute(f32(get(i, "attention", "wq", "kernel")).T, H)
    out[p + "self_attn.k_proj.weight"] = permute(f32(get(i, "attention", "wk", "kernel")).T, H)
    out[p + "self_attn.v_proj.weight"] = f32(get(i, "attention", "wv", "kernel")).T
    out[p + "self_attn.o_proj.weight"] = f32(get(i, "attention", "wo", "kernel")).T
    out[p + "mlp.gate_proj.weight"] = f32(get(i, "feed_forward", "w1", "kernel")).T
    out[p + "mlp.down_proj.weight"] = f32(get(i, "feed_forward", "w2", "kernel")).T
    out[p + "mlp.up_proj.weight"] = f32(get(i, "feed_forward", "w3", "kernel")).T
    out[p + "input_layernorm.weight"] = f32(get(i, "attention_norm", "kernel"))
    out[p + "post_attention_layernorm.weight"] = f32(get(i, "ffn_norm", "kernel"))
  out["model.norm.weight"] = f32(tree[("transformer", "ln_f", "kernel")])
  embed = [f32(tree[("transformer", "wte", "embedding")])]
  head = [f32(tree[("lm_head", "kernel")]).T]
  if ("transformer", "vte", "embedding") in tree:
    embed.append(f32(tree[("transformer", "vte", "embedding")]))
    head.append(f32(tree[("vision_head", "kernel")]).T)
  for name, parts in (("model.embed_tokens.weight", embed), ("lm_head.weight", head)):
    table = np.concatenate(parts)
    pad = np.broadcast_to(table.astype(np.float64).mean(0).astype(np.float32), (rows - table.shape[0], table.shape[1]))
    out[name] = np.concatenate([table, pad])
  return out


def lwm_logits(tree, tokens, *, heads, theta, eps):
  """LWM's forward (lwm/llama.py, lwm/vision_llama.py) in float64 numpy, as merged-vocabulary logits.

  Interleaved complex RoPE, causal softmax attention, SwiGLU, RMSNorm; text ids read `wte`, vision
  ids (text_size + v) read `vte`; the logits are LWM's two heads side by side ([lm_head, vision_head]).
  """
  f64 = lambda k: np.asarray(tree[k], np.float64)
  scanned = SCAN + ("attention", "wq", "kernel") in tree
  layer = lambda i, *sub: f64(SCAN + sub)[i] if scanned else f64(("transformer", "h", str(i)) + sub)
  n_layers = f64(SCAN + ("attention_norm", "kernel")).shape[0] if scanned else sum(
      1 for k in tree if k[:2] == ("transformer", "h") and k[3:] == ("attention_norm", "kernel"))
  embed = f64(("transformer", "wte", "embedding"))
  head = f64(("lm_head", "kernel"))
  if ("transformer", "vte", "embedding") in tree:
    embed = np.concatenate([embed, f64(("transformer", "vte", "embedding"))])
    head = np.concatenate([head, f64(("vision_head", "kernel"))], axis=1)

  def rms(x, w):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

  def rope(x_BxSxHxD):
    B, S, H, D = x_BxSxHxD.shape
    freqs = np.outer(np.arange(S), 1.0 / theta ** (np.arange(0, D, 2) / D))
    z = (x_BxSxHxD[..., 0::2] + 1j * x_BxSxHxD[..., 1::2]) * np.exp(1j * freqs)[None, :, None, :]
    return np.stack([z.real, z.imag], axis=-1).reshape(B, S, H, D)

  x = embed[tokens]
  B, S, E = x.shape
  D = E // heads
  causal = np.tril(np.ones((S, S), bool))
  for i in range(n_layers):
    h = rms(x, layer(i, "attention_norm", "kernel"))
    q = rope((h @ layer(i, "attention", "wq", "kernel")).reshape(B, S, heads, D))
    k = rope((h @ layer(i, "attention", "wk", "kernel")).reshape(B, S, heads, D))
    v = (h @ layer(i, "attention", "wv", "kernel")).reshape(B, S, heads, D)
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(D)
    scores = np.where(causal, scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    x = x + np.einsum("bhqk,bkhd->bqhd", probs, v).reshape(B, S, E) @ layer(i, "attention", "wo", "kernel")
    h = rms(x, layer(i, "ffn_norm", "kernel"))
    gate = h @ layer(i, "feed_forward", "w1", "kernel")
    x = x + (gate / (1 + np.exp(-gate)) * (h @ layer(i, "feed_forward", "w3", "kernel"))) @ layer(
        i, "feed_forward", "w2", "kernel")
  return rms(x, f64(("transformer", "ln_f", "kernel"))) @ head
