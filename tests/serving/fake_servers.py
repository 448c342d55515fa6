"""Small HTTP servers a test starts in a thread: an OpenAI-compatible judge backed by a real tiny RewardModel,
and a /score server that misbehaves on purpose (wrong count, nulls, 503s)."""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch
from PIL import Image

from rewarddance.judge.readout import generative_log_probs
from rewarddance.judge.reward_model import RewardModel

Handler = Callable[[str, dict[str, Any]], tuple[int, Any]]


@contextmanager
def http_server(handle: Handler) -> Iterator[str]:
    """Serve ``handle(path, body) -> (status, json)`` on an ephemeral loopback port; yields the base URL."""

    class RequestHandler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            self._answer(*handle(self.path, body))

        def do_GET(self) -> None:
            self._answer(*handle(self.path, {}))

        def _answer(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), RequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def openai_judge(model: RewardModel, prompt_of: Callable[[str], str]) -> Handler:
    """A chat-completions endpoint that reads the image and question like vLLM would and answers one token with
    ``top_logprobs``: log P(yes) and log P(no) over the vocabulary from the reward model, and a distractor."""
    lock = threading.Lock()

    def handle(path: str, body: dict[str, Any]) -> tuple[int, Any]:
        if path != "/v1/chat/completions":
            return 404, {"error": path}
        content = body["messages"][0]["content"]
        url = next(part["image_url"]["url"] for part in content if part["type"] == "image_url")
        text = next(part["text"] for part in content if part["type"] == "text")
        image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")
        with lock, torch.no_grad():  # one forward at a time, as one GPU would
            queries = model.queries([prompt_of(text)], [image])
            log_probs, _, _ = generative_log_probs(
                model.backbone, model.template, queries, normalization="vocab",
                rationale_format=model.config["rationale_format"], max_length=model.config.get("max_length"),
            )  # fmt: skip
        log_yes, log_no = (float(x) for x in log_probs[0])
        top = [
            {"token": " yes", "logprob": log_yes},
            {"token": "no", "logprob": log_no},
            {"token": "maybe", "logprob": min(log_yes, log_no) - 1.0},
        ][: body.get("top_logprobs", 20)]
        choice = {"index": 0, "message": {"role": "assistant", "content": "yes"},
                  "logprobs": {"content": [{"token": "yes", "logprob": log_yes, "top_logprobs": top}]}}  # fmt: skip
        return 200, {"id": "chatcmpl-test", "object": "chat.completion", "choices": [choice]}

    return handle
