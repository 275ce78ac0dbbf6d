"""A loopback OpenAI-compatible completions server (stdlib `http.server` in a thread) for tests.

`CompletionsServer(respond)`: every `POST /v1/completions` body (parsed JSON) is recorded in
`requests` and answered with `respond(body) -> (status, bytes)`. `choices_reply(texts)` is the body of
a normal answer; `serve_texts(complete)` makes a `respond` from `complete(prompts, seed, max_tokens)
-> texts` (e.g. the project's own decoder, `DecoderGenerator.complete`).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


def choices_reply(texts: list[str], order: list[int] | None = None) -> tuple[int, bytes]:
  order = list(range(len(texts))) if order is None else order
  return 200, json.dumps({"object": "text_completion",
                          "choices": [{"index": i, "text": texts[i], "finish_reason": "stop"} for i in order]}).encode()


def serve_texts(complete: Callable[[list[str], int, int], list[str]]) -> Callable[[dict], tuple[int, bytes]]:
  def respond(body: dict[str, Any]) -> tuple[int, bytes]:
    return choices_reply(complete(body["prompt"], body["seed"], body["max_tokens"]))
  return respond


class CompletionsServer:
  def __init__(self, respond: Callable[[dict[str, Any]], tuple[int, bytes]]):
    self.requests: list[dict[str, Any]] = []
    server = self

    class Handler(BaseHTTPRequestHandler):
      def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/completions":
          status, data = 404, b'{"error": "not found"}'
        else:
          server.requests.append(body)
          try:
            status, data = respond(body)
          except Exception as e:  # pylint: disable=broad-except  # a test's failure, shown to the client
            status, data = 500, json.dumps({"error": f"{type(e).__name__}: {e}"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

      def log_message(self, *args):
        pass

    self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
    self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

  def __enter__(self) -> CompletionsServer:
    self.thread.start()
    return self

  def __exit__(self, *exc):
    self.httpd.shutdown()
    self.httpd.server_close()
    self.thread.join()
