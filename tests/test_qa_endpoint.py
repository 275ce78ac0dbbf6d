"""lwm_plugin/longqa_gen/qa_endpoint.py against a loopback server with scripted replies (no model here;
tests/test_qa_decoder.py serves the tiny model through the same client)."""

import json
import socket
import time

import pytest
from helpers.completions_server import CompletionsServer, choices_reply

from lwm_plugin.longqa_gen.qa_endpoint import CompletionsClient, GeneratorError, completions_url


def test_completions_url():
  assert completions_url("http://h:8000") == "http://h:8000/v1/completions"
  assert completions_url("http://h:8000/") == "http://h:8000/v1/completions"
  assert completions_url("https://h/v1") == "https://h/v1/completions"
  assert completions_url("http://h/api/v1/completions") == "http://h/api/v1/completions"
  for bad in ("h:8000", "ftp://h/x", "http://"):
    with pytest.raises(ValueError, match="expected an http"):
      completions_url(bad)


def test_request_body_and_choices_put_back_in_prompt_order():
  with CompletionsServer(lambda body: choices_reply(["first", "second", "third"], order=[2, 0, 1])) as server:
    client = CompletionsClient(server.url, max_tokens=40, temperature=0.5, top_p=0.9, model="m")
    assert client.generate(["a?", "b?", "c?"], seed=7) == ["first", "second", "third"]
  (body,) = server.requests
  assert body == {"prompt": ["You are a helpful assistant. USER: a? ASSISTANT:",
                             "You are a helpful assistant. USER: b? ASSISTANT:",
                             "You are a helpful assistant. USER: c? ASSISTANT:"],
                  "max_tokens": 40, "temperature": 0.5, "top_p": 0.9, "seed": 7, "model": "m"}


@pytest.mark.parametrize("status, body, match", [
    (500, b"model crashed", r"HTTP 500 .*model crashed"),
    (200, b"<html>oops</html>", "the reply is not JSON"),
    (200, b'{"data": []}', "no 'choices' list"),
    (200, json.dumps({"choices": [{"index": 0, "text": 3}]}).encode(), "choice 0 is not an object with a string"),
    (200, json.dumps({"choices": [{"index": 0, "text": "x"}, {"index": 0, "text": "y"}]}).encode(),
     r"choice 1 has index 0; expected each of 0\.\.1 once"),
    (200, json.dumps({"choices": [{"index": 1, "text": "x"}]}).encode(), "1 choices for 2 prompts"),
])
def test_server_failures_are_clear_errors(status, body, match):
  with CompletionsServer(lambda _: (status, body)) as server:
    with pytest.raises(GeneratorError, match=match) as info:
      CompletionsClient(server.url).generate(["a", "b"], seed=0)
  assert server.url in str(info.value)


def test_timeout_and_no_server():
  def slow(_):
    time.sleep(1.5)
    return choices_reply(["late"])

  with CompletionsServer(slow) as server:
    with pytest.raises(GeneratorError, match="no answer within 0.3 s"):
      CompletionsClient(server.url, timeout_s=0.3).generate(["a"], seed=0)
  with socket.socket() as s:  # a port nobody listens on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  with pytest.raises(GeneratorError, match="cannot reach the endpoint"):
    CompletionsClient(f"http://127.0.0.1:{port}").generate(["a"], seed=0)


def test_settings_are_checked():
  with pytest.raises(ValueError, match="max_tokens 0"):
    CompletionsClient("http://h", max_tokens=0)
  assert CompletionsClient("http://h").generate([], seed=0) == []
