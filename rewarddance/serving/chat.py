"""A generative judge served by any OpenAI-compatible chat-completions endpoint (vLLM, SGLang), as a reward.

The judge is asked a yes/no question about each image with ``max_tokens: 1`` and ``logprobs``; the reward is
P(yes) / (P(yes) + P(no)) read from the first answer token's ``top_logprobs``, the same two-way normalisation
rewarddance's own models use by default (:mod:`rewarddance.judge.readout`). docs/serving.md gives the vLLM and
SGLang commands.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor

from rewarddance.errors import UsageError
from rewarddance.models.pixels import to_pil_images
from rewarddance.rl.rewards import Reward
from rewarddance.serving.client import API_KEY_ENV, JsonClient, RemoteRewardError
from rewarddance.serving.protocol import encode_image

DEFAULT_QUESTION = (
    "You are judging a generated image. The image was generated from the prompt: {prompt}\n"
    "Does the image match the prompt? Answer yes or no."
)


def yes_probability(answer: Any, yes_word: str, no_word: str, where: str) -> float:
    """P(yes) / (P(yes) + P(no)) from a chat-completions answer's first-token ``top_logprobs``.

    Tokens are compared after stripping spaces (tokenizers spell the word with or without a leading space); the
    probabilities of matching tokens add up. A word absent from the top logprobs counts as probability 0: its
    true probability is below the smallest one listed, so ask for enough ``top_logprobs`` (20).

    Raises:
        RemoteRewardError: The answer has no logprobs, or neither word is among them.
    """
    try:
        top = answer["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    except (KeyError, IndexError, TypeError) as err:
        raise RemoteRewardError(
            f"{where}: the answer has no choices[0].logprobs.content[0].top_logprobs (ask the server for "
            f"logprobs; got {str(answer)[:300]})"
        ) from err
    p_yes = sum(math.exp(t["logprob"]) for t in top if str(t.get("token", "")).strip() == yes_word)
    p_no = sum(math.exp(t["logprob"]) for t in top if str(t.get("token", "")).strip() == no_word)
    if p_yes + p_no == 0:
        listed = [t.get("token") for t in top]
        raise RemoteRewardError(f"{where}: neither {yes_word!r} nor {no_word!r} is in the top logprobs {listed}")
    return p_yes / (p_yes + p_no)


class OpenAIReward(Reward):
    """A yes/no judge behind an OpenAI-compatible ``/chat/completions`` endpoint, as a GRPO / best-of-N reward.

    One request per image (the API takes one conversation per request), ``max_concurrent`` in flight.

    Args:
        url: The API base, e.g. ``http://127.0.0.1:8000/v1`` (``/chat/completions`` is appended).
        model: The served model name (vLLM: ``--served-model-name``).
        question: The question, with ``{prompt}`` where the generation prompt goes; the image comes first.
        api_key: Sent as a bearer token; default the ``REWARDDANCE_API_KEY`` environment variable.
        yes_word: The answer token read as "yes".
        no_word: The answer token read as "no".
        top_logprobs: Alternatives asked for at the answer position (vLLM's default cap is 20).
        timeout: Seconds per HTTP attempt.
        retries: Attempts after the first (connection errors, timeouts, 5xx).
        backoff: Seconds before the first retry, doubled after each.
        max_concurrent: Requests in flight at once.
    """

    differentiable = False

    def __init__(
        self,
        url: str,
        model: str,
        question: str = DEFAULT_QUESTION,
        api_key: str | None = None,
        yes_word: str = "yes",
        no_word: str = "no",
        top_logprobs: int = 20,
        timeout: float = 60.0,
        retries: int = 4,
        backoff: float = 0.5,
        max_concurrent: int = 8,
    ) -> None:
        if "{prompt}" not in question:
            raise UsageError(f"openai reward: the question needs a {{prompt}} placeholder, got {question!r}")
        if top_logprobs < 2 or max_concurrent < 1:
            raise UsageError("openai reward: top_logprobs must be >= 2 and max_concurrent >= 1")
        self.client = JsonClient(
            url, api_key=api_key or os.environ.get(API_KEY_ENV), timeout=timeout, retries=retries, backoff=backoff
        )
        self.model, self.question = model, question
        self.yes_word, self.no_word, self.top_logprobs = yes_word, no_word, top_logprobs
        self.max_concurrent = max_concurrent
        self._pool: ThreadPoolExecutor | None = None

    def body(self, prompt: str, image_base64: str) -> dict[str, Any]:
        """The chat-completions request for one image (public so a test server can see what clients send)."""
        return {
            "model": self.model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image_base64}"}},
                        {"type": "text", "text": self.question.format(prompt=prompt)},
                    ],
                }
            ],
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": self.top_logprobs,
        }

    def log_values(self) -> dict[str, float]:
        return {"openai/attempts": float(self.client.attempts), "openai/retries": float(self.client.failures)}

    def submit(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]]) -> Future[Tensor]:
        """Start scoring; ``future.result()`` is the ``[B]`` rewards (float32, CPU), in the order of ``images``."""
        if images.shape[0] != len(prompts):
            raise ValueError(f"openai reward: {images.shape[0]} images but {len(prompts)} prompts")
        bodies = [self.body(p, encode_image(im)) for p, im in zip(prompts, to_pil_images(images))]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.max_concurrent, thread_name_prefix="openai-reward")
        futures = [self._pool.submit(self._one, body, i) for i, body in enumerate(bodies)]
        result: Future[Tensor] = Future()
        lock = threading.Lock()

        def collect(_: Future[float]) -> None:
            with lock:  # callbacks of the last futures may run at once: one of them sets the result
                if result.done() or not all(f.done() for f in futures):
                    return
                self._finish(result, futures)

        if not futures:
            result.set_result(torch.zeros(0))
        for future in futures:
            future.add_done_callback(collect)
        return result

    @staticmethod
    def _finish(result: Future[Tensor], futures: list[Future[float]]) -> None:
        try:
            result.set_result(torch.tensor([f.result() for f in futures], dtype=torch.float32))
        except Exception as err:  # the first failed image's error, e.g. RemoteRewardError
            result.set_exception(err)

    def _one(self, body: dict[str, Any], index: int) -> float:
        answer = self.client.request("/chat/completions", body)
        return yes_probability(answer, self.yes_word, self.no_word, f"{self.client.url} (image {index})")

    def __call__(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]]) -> Tensor:
        return self.submit(images, prompts, metadata).result()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_pool"] = None
        return state

    def __repr__(self) -> str:
        return f"OpenAIReward(url={self.client.url!r}, model={self.model!r})"
