"""lwm_plugin/longqa_gen/qa_decoder.py on a tiny random model (the demo's tiny text shapes and tokenizer),
and the completions client against a loopback server serving that model through the same decoder.

Plumbing, not quality (a random model writes no QA): the prompts reach the model wrapped in the chat
template, seeds decide the samples, and the endpoint path gives the in-process path's texts token for
token (the server adds `<s>` to the chat text, as vLLM does). Slow: MaxText builds and compiles the model.
"""

import jax
import numpy as np
import pytest
from helpers.completions_server import CompletionsServer, serve_texts
from helpers.random_llama import write_random_llama

from data_loaders import vision_prompts as vp
from lwm_plugin.longqa_gen.qa_decoder import DecoderSpec
from lwm_plugin.longqa_gen.qa_endpoint import CompletionsClient
from lwm_plugin.model_source import UsageError

pytestmark = pytest.mark.slow

CONFIG = "tiny_text_chat_4k.yml"


def tiny_overrides(data_dir, batch=4, length=384):
  """The demo's chat stage as a 1-device decoder (dot-product attention, a short cache)."""
  return (f"lwm_data_dir={data_dir}", "attention=dot_product", "ici_context_parallelism=1",
          f"per_device_batch_size={batch}", f"max_target_length={length}")


@pytest.fixture(autouse=True, scope="module")
def _maxtext_promotes_ranks():
  """MaxText's prefill-mode rotary embedding broadcasts by rank promotion (conftest makes that raise)."""
  with jax.numpy_rank_promotion("allow"):
    yield


@pytest.fixture(name="generator", scope="module")
def fixture_generator(tiny_lwm_data):
  hf = write_random_llama(tiny_lwm_data.parent / "hf_qa", 1024, seed=5)
  gen = DecoderSpec(CONFIG, str(hf), tiny_overrides(tiny_lwm_data), max_new_tokens=16, temperature=1.0)()
  seen = []
  prefill = gen.decoder.prefill

  def recording_prefill(prompts):
    seen.append([np.asarray(p).tolist() for p in prompts])
    return prefill(prompts)

  gen.decoder.prefill = recording_prefill
  return gen, seen


PROMPTS = ["Ask about the harbour.", "What did the fox say?", "Name a river.", "Count to five.", "Why?"]


def test_prompts_reach_the_model_in_the_chat_template_and_seeds_decide(generator):
  gen, seen = generator
  seen.clear()
  texts = gen.generate(PROMPTS, seed=5)
  assert len(texts) == 5 and all(isinstance(t, str) for t in texts)
  # Two prefills (decode batch 4): the prompts in order, each the chat template's ids.
  assert seen == [[vp.chat_prompt_ids(gen.vocab, p).tolist() for p in PROMPTS[:4]],
                  [vp.chat_prompt_ids(gen.vocab, PROMPTS[4]).tolist()]]
  assert all(ids[:1] == [gen.vocab.bos_id] for batch in seen for ids in batch)
  assert gen.generate(PROMPTS, seed=5) == texts
  assert gen.generate(PROMPTS, seed=6) != texts


def test_the_endpoint_serving_the_model_gives_the_same_texts(generator):
  gen, seen = generator
  seen.clear()
  direct = gen.generate(PROMPTS[:3], seed=11)
  direct_ids = list(seen)

  def complete(texts, seed, max_tokens):
    assert max_tokens == gen.spec.max_new_tokens
    with jax.numpy_rank_promotion("allow"):  # the server's thread does not see the fixture's setting
      return gen.complete(texts, seed)

  seen.clear()
  with CompletionsServer(serve_texts(complete)) as server:
    client = CompletionsClient(server.url, max_tokens=16, temperature=1.0)
    assert client.generate(PROMPTS[:3], seed=11) == direct
  assert seen == direct_ids  # `<s>` + the chat text tokenizes as the chat template's ids


def test_a_prompt_longer_than_the_cache_is_refused(generator):
  gen, _ = generator
  with pytest.raises(UsageError, match="lower --chunk-tokens"):
    gen.generate(["word " * 400], seed=0)
