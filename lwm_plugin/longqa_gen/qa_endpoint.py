"""The QA generator interface, and one implementation: any OpenAI-compatible completions endpoint.

A generator turns a list of prompts (the user content of a one-turn chat: `data_loaders.longqa.
chunk_prompt`) and a seed into one completion string per prompt, in order (`TextGenerator`). Two
implementations: `qa_decoder.DecoderGenerator` (a MaxText checkpoint or Hugging Face directory decoded
in process with the project's KV cache) and `CompletionsClient` here, for a larger model served
elsewhere (e.g. vLLM): `POST {URL}/v1/completions` with

    {"prompt": [chat text, ...], "max_tokens": N, "temperature": T, "top_p": P, "seed": S, "model": M?}

where each chat text is the LWM chat template as a string (`chat_template.chat_prompt`: "You are a
helpful assistant. USER: {prompt} ASSISTANT:"; the server adds BOS as its tokenizer does). The answer
must be `{"choices": [{"index": i, "text": "..."}, ...]}` with each index 0..n-1 exactly once.

Only the standard library (urllib) is used. Every failure is a `GeneratorError` naming the URL: an
HTTP status (with the start of the body), no connection, no answer within `timeout_s`, a body that is
not JSON or not of that shape. Nothing is retried silently: the pipeline's retries are for
generations that do not parse, not for a broken server.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Protocol, Sequence

from data_loaders.chat_template import chat_prompt

COMPLETIONS_PATH = "/v1/completions"


class TextGenerator(Protocol):
  """Prompts (user content) + a seed -> one completion per prompt, in order; the same seed gives the same texts."""

  def generate(self, prompts: Sequence[str], seed: int) -> list[str]: ...


class GeneratorError(RuntimeError):
  """A generator that cannot answer (server down, HTTP error, malformed reply)."""


def completions_url(url: str) -> str:
  """`URL` (a server root, `.../v1` or the full `.../completions` address) -> the completions address."""
  parts = urllib.parse.urlsplit(url)
  if parts.scheme not in ("http", "https") or not parts.netloc:
    raise ValueError(f"--endpoint {url!r}: expected an http:// or https:// URL such as http://localhost:8000")
  path = parts.path.rstrip("/")
  if not path.endswith("/completions"):
    path = path + "/completions" if path.endswith("/v1") else path + COMPLETIONS_PATH
  return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def _texts(url: str, reply: Any, n: int) -> list[str]:
  """The completions of a parsed reply, by index; GeneratorError if it is not the expected shape."""
  choices = reply.get("choices") if isinstance(reply, dict) else None
  if not isinstance(choices, list):
    raise GeneratorError(f"{url}: the reply has no 'choices' list: {json.dumps(reply)[:300]}")
  texts: dict[int, str] = {}
  for k, choice in enumerate(choices):
    if not isinstance(choice, dict) or not isinstance(choice.get("text"), str):
      raise GeneratorError(f"{url}: choice {k} is not an object with a string 'text': {json.dumps(choice)[:300]}")
    index = choice.get("index", k)
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < n or index in texts:
      raise GeneratorError(f"{url}: choice {k} has index {index!r}; expected each of 0..{n - 1} once")
    texts[index] = choice["text"]
  if len(texts) != n:
    raise GeneratorError(f"{url}: {len(texts)} choices for {n} prompts")
  return [texts[i] for i in range(n)]


class CompletionsClient:
  """`TextGenerator` over an OpenAI-compatible completions endpoint (see the module docstring)."""

  def __init__(self, url: str, *, max_tokens: int = 256, temperature: float = 0.7, top_p: float | None = None,
               model: str | None = None, timeout_s: float = 600.0):
    if max_tokens < 1 or temperature < 0 or timeout_s <= 0 or (top_p is not None and not 0 < top_p <= 1):
      raise ValueError(f"endpoint settings: max_tokens {max_tokens} (>= 1), temperature {temperature} (>= 0), "
                       f"top_p {top_p} (in (0, 1]), timeout {timeout_s} s (> 0)")
    self.url = completions_url(url)
    self.max_tokens, self.temperature, self.top_p, self.model = max_tokens, temperature, top_p, model
    self.timeout_s = timeout_s

  def __call__(self) -> CompletionsClient:
    """The client is its own picklable factory (a pipeline worker builds its generator in `setup`)."""
    return self

  def request_body(self, prompts: Sequence[str], seed: int) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": [chat_prompt(p) for p in prompts], "max_tokens": self.max_tokens,
                            "temperature": self.temperature, "seed": int(seed)}
    if self.top_p is not None:
      body["top_p"] = self.top_p
    if self.model is not None:
      body["model"] = self.model
    return body

  def generate(self, prompts: Sequence[str], seed: int) -> list[str]:
    if not prompts:
      return []
    data = json.dumps(self.request_body(prompts, seed)).encode()
    request = urllib.request.Request(self.url, data=data, method="POST",
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
    try:
      with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
        raw = response.read()
    except urllib.error.HTTPError as e:
      body = e.read()[:500].decode("utf-8", "replace")
      raise GeneratorError(f"{self.url}: HTTP {e.code} {e.reason}: {body}") from None
    except (TimeoutError, socket.timeout):
      raise GeneratorError(f"{self.url}: no answer within {self.timeout_s:g} s") from None
    except urllib.error.URLError as e:
      if isinstance(e.reason, (TimeoutError, socket.timeout)):
        raise GeneratorError(f"{self.url}: no answer within {self.timeout_s:g} s") from None
      raise GeneratorError(f"{self.url}: cannot reach the endpoint ({e.reason})") from None
    except OSError as e:
      raise GeneratorError(f"{self.url}: the connection failed ({e})") from None
    try:
      reply = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise GeneratorError(f"{self.url}: the reply is not JSON ({e}): {raw[:300]!r}") from None
    return _texts(self.url, reply, len(prompts))
