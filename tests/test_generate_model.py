"""`lwm-generate` and `lwm-eval needle --haystack` on a real tiny model, against a full-forward reference.

A random Llama (tiny.yml shapes, the tiny multimodal vocabulary of 1408 ids) is written as a Hugging
Face directory and given to `lwm-generate`, which imports it and decodes with the KV cache. The
reference recomputes the whole forward pass for every token (tests/helpers/full_forward_decoder.py)
and runs the same loop: greedy text answers, CFG image generation and the needle answers must be
the same token ids. Slow (several MaxText compiles, about a minute or two on 2 cores).
"""

from __future__ import annotations

import contextlib
import json

import jax
import numpy as np
import pytest
from helpers.full_forward_decoder import FullForwardDecoder
from helpers.random_llama import write_random_llama
from helpers.vqgan_files import TINY_GRID, write_random_vqgan
from PIL import Image

from data_loaders import synthetic_corpus as sc
from data_loaders import vision_prompts as vp
from data_loaders.vocab import MultimodalVocab
from lwm_plugin import integration
from lwm_plugin.config.files import resolve_config_file
from lwm_plugin.evaluation import cli as eval_cli
from lwm_plugin.evaluation import needle
from lwm_plugin.generation import generate_cli, loop
from lwm_plugin.integration import inference
from lwm_plugin.vision.vqgan import load_vqgan

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True, scope="module")
def _maxtext_promotes_ranks():
  """MaxText's prefill-mode rotary embedding broadcasts by rank promotion (conftest makes that raise)."""
  with jax.numpy_rank_promotion("allow"):
    yield

CONFIG = "tiny_cpu_lwm_data.yml"  # dot_product attention, 1 device, batch 4, 64 codes
SHORT = "max_target_length=320"   # every run fits (a 56-token image prompt + 257); the reference's step costs ~ this


@pytest.fixture(name="work", scope="module")
def fixture_work(tiny_lwm_data):
  """The tiny data's parent (the config reads ./tiny_lwm_data), with the random model in hf/."""
  root = tiny_lwm_data.parent
  write_random_llama(root / "hf", 1408, seed=3)
  return root


@pytest.fixture(name="reference", scope="module")
def fixture_reference(work):
  """(the vocabulary, the full-forward decoder) of the model lwm-generate imported into imp/."""
  with contextlib.chdir(work):
    assert generate_cli.main(["--config", CONFIG, "--model", "hf", "--import-dir", "imp", "--prompt", "hello",
                              "--max-new-tokens", "1"]) == 0
    integration.install()
    config = inference.load_config(["test", resolve_config_file(CONFIG), "run_name=reference",
                                    "enable_checkpointing=false",
                                    f"load_parameters_path={work / 'imp' / '0' / 'items'}", SHORT])
    decoder = FullForwardDecoder(config)
  vocab = MultimodalVocab.from_tokenizer(work / "tiny_lwm_data" / "tokenizer.model", codebook_size=64)
  return vocab, decoder


def _results(path):
  return json.loads(path.read_text())["results"]


def test_text_answers_match_the_full_forward(work, reference, monkeypatch, capsys):
  vocab, ref = reference
  monkeypatch.chdir(work)
  prompts = ["What is the special magic Oslo number?", "the old farmer walked past"]
  argv = ["--config", CONFIG, "--model", "imp/0/items", "--max-new-tokens", "6", "--output", "t.json", SHORT]
  assert generate_cli.main([*argv, "--prompt", prompts[0], "--prompt", prompts[1]]) == 0
  results = _results(work / "t.json")
  assert [r["prompt_ids"] for r in results] == [vp.chat_prompt_ids(vocab, p).tolist() for p in prompts]
  want = loop.generate_text(ref, [vp.chat_prompt_ids(vocab, p) for p in prompts], max_new_tokens=6,
                            stop_ids=[vocab.eos_id], allowed_V=vp.text_mask(vocab, ref.vocab_size))
  assert [r["new_ids"] for r in results] == [g.new_ids.tolist() for g in want]
  for r in results:
    assert all(i < vocab.text_size for i in r["new_ids"]) and r["timing"]["new_tokens"] == len(r["new_ids"])
    assert r["timing"]["prefill_s"] > 0 and r["timing"]["decode_s"] > 0
  out = capsys.readouterr().out.splitlines()
  assert out == [r["text"] for r in results]


def test_guided_image_generation_matches_the_full_forward(work, reference, monkeypatch):
  vocab, ref = reference
  monkeypatch.chdir(work)
  assert generate_cli.main(["--config", CONFIG, "--model", "imp/0/items", "--generate", "image", "--prompt",
                            "a red circle", "--cfg-scale", "3", "--codes-output", "c.jsonl", "--output", "g.json",
                            SHORT]) == 0
  (result,) = _results(work / "g.json")
  prompt = vp.generation_prompt_ids(vocab, "a red circle", "image")
  assert result["prompt_ids"] == prompt.tolist() and result["text"] is None
  (want,) = loop.generate_vision(ref, [prompt], vp.unconditional_ids(vocab), schedule=vp.frame_schedule(vocab, 1),
                                 code_mask_V=vp.code_mask(vocab, ref.vocab_size), cfg_scale=3.0)
  assert result["new_ids"] == want.new_ids.tolist()
  (line,) = [json.loads(x) for x in (work / "c.jsonl").read_text().splitlines()]
  assert line["prompt"] == "a red circle"
  assert np.array_equal(np.asarray(line["vision"]) + vocab.vision_start, np.asarray(want.new_ids[:256])[None])
  assert want.new_ids[-1] == vocab.eov_id


def test_needle_with_a_haystack_file_matches_the_full_forward(work, reference, monkeypatch):
  vocab, ref = reference
  monkeypatch.chdir(work)
  haystack = work / "haystack.txt"
  haystack.write_text(" ".join(sc.filler_sentences(np.random.default_rng(5), 200)))
  argv = ["needle", "--config", CONFIG, "--model", "imp/0/items", "--haystack", str(haystack), "--prompt-format",
          "lwm", "--context-lengths", "250", "--depths", "0,1", "--seed", "4", "--output", "nd", SHORT]
  assert eval_cli.main(argv) == 0
  doc = json.loads((work / "nd" / "needle_single.json").read_text())
  grid = needle.build_grid(vocab, needle.NeedleTask(1, 1), [250], [0.0, 1.0], 1, 4,
                           haystack=needle.read_haystack(haystack, vocab), prompt_format="lwm")
  want = loop.generate_text(ref, [t.tokens for t in grid], max_new_tokens=32, stop_ids=[vocab.eos_id],
                            allowed_V=vp.text_mask(vocab, ref.vocab_size))
  texts = [vocab.decode_text([int(i) for i in g.new_ids if i != vocab.eos_id]) for g in want]
  assert [t["response"] for t in doc["trials"]] == texts
  assert [t["prompt_tokens"] for t in doc["trials"]] == [len(t.tokens) for t in grid]
  assert all(230 <= len(t.tokens) <= 250 for t in grid)


@pytest.fixture(name="vqgan", scope="module")
def fixture_vqgan(work):
  """A small random VQGAN with LWM's 16 x 16 grid and the tiny vocabulary's 64 codes (diffusers layout)."""
  write_random_vqgan(work / "vq", "diffusers", TINY_GRID, seed=2)
  return work / "vq"


def test_an_image_question_reads_the_picture_through_the_vqgan(work, reference, vqgan, monkeypatch):
  """`--image` = LWM's crop + the VQGAN's codes in the vision chat prompt; the answer equals the full forward's."""
  vocab, ref = reference
  monkeypatch.chdir(work)
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, (300, 200, 3), np.uint8)).save(work / "pic.png")
  question = "Colour?"  # 256 codes + the template fit the 316-token prompt cache of SHORT
  assert generate_cli.main(["--config", CONFIG, "--model", "imp/0/items", "--vqgan", "vq", "--image", "pic.png",
                            "--prompt", question, "--max-new-tokens", "4", "--output", "i.json", SHORT]) == 0
  (result,) = _results(work / "i.json")
  # Independently: PIL's shorter-side resize to 256 + centre crop, x / 127.5 - 1, then the codec.
  image = Image.open(work / "pic.png").convert("RGB")
  w, h = image.size
  image = image.resize((256, round(h * 256 / w)), Image.Resampling.BICUBIC)
  top = (image.size[1] - 256) // 2
  pixels = np.asarray(image, np.float32)[top:top + 256] / 127.5 - 1
  codes_FxT = load_vqgan(vqgan).encode(pixels[None]).reshape(1, -1)
  prompt = vp.chat_prompt_ids(vocab, question, vision_FxT=codes_FxT)
  assert result["prompt_ids"] == prompt.tolist()
  (want,) = loop.generate_text(ref, [prompt], max_new_tokens=4, stop_ids=[vocab.eos_id],
                               allowed_V=vp.text_mask(vocab, ref.vocab_size))
  assert result["new_ids"] == want.new_ids.tolist()


def test_generated_codes_are_decoded_to_a_png_given_the_vqgan(work, reference, vqgan, monkeypatch):
  monkeypatch.chdir(work)
  assert generate_cli.main(["--config", CONFIG, "--model", "imp/0/items", "--generate", "image", "--prompt",
                            "a blue cross", "--codes-output", "gen.jsonl", "--vqgan", "vq", SHORT]) == 0
  (line,) = [json.loads(x) for x in (work / "gen.jsonl").read_text().splitlines()]
  pixels = load_vqgan(vqgan).decode(np.asarray(line["vision"]).reshape(1, 16, 16))[0]
  want = np.clip(np.round((pixels + 1) * 127.5), 0, 255).astype(np.uint8)
  got = np.asarray(Image.open(work / "gen" / "1.png").convert("RGB"))
  assert got.shape == (256, 256, 3) and np.abs(got.astype(int) - want).max() <= 1
