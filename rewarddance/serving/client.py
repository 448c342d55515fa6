"""Rewards computed by a server: the rewarddance reward server (:class:`RemoteReward`) or any OpenAI-compatible
chat-completions endpoint with logprobs, such as vLLM or SGLang serving a generative judge (:class:`OpenAIReward`).

Both are GRPO / best-of-N rewards (``differentiable = False``: no gradient crosses HTTP). Both send images as
PNG, which is lossless over the 8-bit images the in-process path scores (:func:`rewarddance.models.pixels.
to_pil_images`), so a served reward equals the in-process :meth:`RewardModel.score` on the same images.

Failure is never silent: a request is retried on connection errors, timeouts and 5xx answers, with exponential
backoff, a bounded number of times; then :class:`RemoteRewardError` names the server, the attempts and the last
error. An answer with the wrong number of rewards, or a null reward, is an error too (naming the sample), never a
0 and never a reward assigned to another sample. :meth:`RemoteReward.submit` returns a future, so a caller can
sample its next batch while the server scores this one.

:class:`RemoteReward` sends each prompt's GenEval ``tag`` (from the prompt metadata) with its items, so a model that
retrieves its in-context examples by tag is asked as the in-process ``reward_model`` reward asks it, and keeps the
rationales a reasons-first model served in :attr:`RemoteReward.last_rationales`, as ``RewardModelReward`` does.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

import torch
from torch import Tensor

from rewarddance.errors import RewardDanceError, UsageError
from rewarddance.models.pixels import to_pil_images
from rewarddance.rl.reference import ReferenceCache, ReferenceSelection
from rewarddance.rl.rewards import CandidateSampler, Reward
from rewarddance.serving.protocol import encode_image

API_KEY_ENV = "REWARDDANCE_API_KEY"
RETRYABLE_STATUSES = (408, 429, 500, 502, 503, 504)
"""Answers worth retrying: the server is busy, restarting or timed out; any other 4xx is a bug in the request."""


class RemoteRewardError(RewardDanceError):
    """The reward server could not be used: down past the retries, or an answer that cannot be trusted."""


class JsonClient:
    """JSON over HTTP with a timeout and bounded retries with exponential backoff (stdlib only).

    Args:
        url: The server's base URL (``http://host:port``).
        api_key: Sent as ``Authorization: Bearer KEY`` when set.
        timeout: Seconds per attempt (connect and read).
        retries: Attempts after the first one.
        backoff: Seconds before the first retry; doubled each time, capped at ``max_backoff``.
        max_backoff: Longest wait between attempts.
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
    ) -> None:
        if retries < 0 or timeout <= 0 or backoff < 0:
            raise UsageError(f"{url}: retries must be >= 0, timeout > 0 and backoff >= 0")
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout, self.retries, self.backoff, self.max_backoff = timeout, retries, backoff, max_backoff
        self.attempts = 0  # every HTTP attempt, for the logs: retries show as attempts above requests
        self.failures = 0  # attempts that failed and were retried
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:  # a lock does not pickle; a copy gets its own
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def request(self, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """GET ``path`` (``body`` None) or POST ``body`` as JSON; the decoded JSON answer.

        Raises:
            RemoteRewardError: A non-retryable answer (the server's reason included), or no answer after the retries.
        """
        data = None if body is None else json.dumps(body).encode()
        url = self.url + path
        last = ""
        started = time.monotonic()
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(self.backoff * 2 ** (attempt - 1), self.max_backoff))
            with self._lock:
                self.attempts += 1
            request = urllib.request.Request(url, data=data, headers=self._headers())
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                    return json.loads(answer.read())
            except urllib.error.HTTPError as err:
                detail = err.read().decode(errors="replace")[:500]
                if err.code not in RETRYABLE_STATUSES:
                    raise RemoteRewardError(f"{url} answered {err.code}: {detail}") from err
                last = f"HTTP {err.code}: {detail}"
            except (urllib.error.URLError, OSError, json.JSONDecodeError) as err:  # refused, reset, timed out
                last = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
            with self._lock:
                self.failures += 1
        raise RemoteRewardError(
            f"{url} did not answer after {self.retries + 1} attempts over {time.monotonic() - started:.1f} s "
            f"(timeout {self.timeout} s each); last error: {last}. Is the reward server running "
            "(python -m rewarddance serve --model ...)?"
        )


class RemoteReward(Reward):
    """A reward model served by ``python -m rewarddance serve``, as a GRPO / best-of-N reward.

    Pointwise and regressive models score each image. A pairwise model judges each image against references
    chosen per prompt exactly as the in-process ``reward_model`` reward does (``best_of_n`` samples of the starting
    generator ranked by pairwise wins, the ``top_k`` best kept), with the server as the judge; the reward is the
    mean P(image better) over the prompt's references.

    Args:
        url: The server, e.g. ``http://127.0.0.1:8000``.
        api_key: The server's key; default the ``REWARDDANCE_API_KEY`` environment variable.
        criteria: Criteria name or text for every item; null: the model's own.
        timeout: Seconds per HTTP attempt.
        retries: Attempts after the first, on connection errors, timeouts and 5xx answers.
        backoff: Seconds before the first retry, doubled after each.
        chunk_size: Items per request; chunks are sent concurrently so the server batches them together.
        max_concurrent: Requests in flight at once.
        best_of_n: Pairwise: starting-model samples per prompt the references are chosen from.
        top_k: Pairwise: references per prompt.
        which: Pairwise: ``top`` or ``bottom`` references by win count.
        both_orders: Pairwise: judge each pair in both orders while ranking.
        seed: Pairwise: seed of the reference samples (per prompt: derived from it and the prompt text).

    Attributes:
        last_rationales: What a reasons-first model wrote before its judgments in the last call to complete, one per
            sample (pairwise: one line per reference, ``reference j: ...``); None when the server returned none
            (models without rationales).
    """

    differentiable = False

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        criteria: str | None = None,
        timeout: float = 60.0,
        retries: int = 4,
        backoff: float = 0.5,
        chunk_size: int = 16,
        max_concurrent: int = 4,
        best_of_n: int = 16,
        top_k: int = 2,
        which: Literal["top", "bottom"] = "top",
        both_orders: bool = True,
        seed: int = 0,
    ) -> None:
        if chunk_size < 1 or max_concurrent < 1:
            raise UsageError(f"remote reward: chunk_size and max_concurrent must be >= 1 ({url})")
        if not 1 <= top_k <= best_of_n:
            raise UsageError(f"remote reward: top_k must be in [1, best_of_n={best_of_n}], got {top_k}")
        self.client = JsonClient(
            url, api_key=api_key or os.environ.get(API_KEY_ENV), timeout=timeout, retries=retries, backoff=backoff
        )
        self.criteria, self.chunk_size = criteria, chunk_size
        self.best_of_n, self.top_k, self.which, self.both_orders, self.seed = best_of_n, top_k, which, both_orders, seed
        self.max_concurrent = max_concurrent
        self.pairwise: bool | None = None
        self.sampler: CandidateSampler | None = None
        self.cache = ReferenceCache()
        self._collectors: ThreadPoolExecutor | None = None
        self._senders: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.requests = 0
        self.seconds = 0.0  # wall time spent waiting for the server in __call__ (what overlapping hides)
        self.last_rationales: list[str] | None = None

    # -- Reward protocol ------------------------------------------------------------------------------------

    def setup(self, sampler: CandidateSampler | None = None) -> None:
        """Ask the server which model it serves (a clear error now if it is down); keep the sampler (pairwise)."""
        info = self.client.request("/info")
        model = (info or {}).get("model") or {}
        if "paradigm" not in model:
            raise RemoteRewardError(f"{self.client.url}/info does not describe a rewarddance reward model: {info}")
        self.pairwise = model.get("kind") == "generative" and model["paradigm"] == "pairwise"
        self.sampler = sampler
        if self.pairwise and sampler is None:
            raise ValueError(f"{self.client.url} serves a pairwise model: it needs a sampler for its references")

    @property
    def needs_references(self) -> bool:
        return bool(self.pairwise)

    def log_values(self) -> dict[str, float]:
        values = {
            "remote/requests": float(self.requests),
            "remote/attempts": float(self.client.attempts),
            "remote/retries": float(self.client.failures),
            "remote/wait_seconds": self.seconds,
        }
        if self.pairwise:
            values["references/prompts"] = float(len(self.cache))
        return values

    def prepare(self, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]]) -> None:
        if self.pairwise:
            for prompt, tag in zip(prompts, prompt_tags(metadata, len(prompts))):
                self.references(prompt, tag)

    def __call__(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]]) -> Tensor:
        started = time.monotonic()
        try:
            return self.submit(images, prompts, metadata).result()
        finally:
            self.seconds += time.monotonic() - started

    def submit(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]]) -> Future[Tensor]:
        """Start scoring ``images`` and return at once: ``future.result()`` is the ``[B]`` rewards (float32, CPU).

        The images are encoded now (the caller may reuse the tensor); the requests run in background threads.
        When the future is done, :attr:`last_rationales` holds this call's rationales.
        """
        if images.shape[0] != len(prompts):
            raise ValueError(f"remote reward: {images.shape[0]} images but {len(prompts)} prompts")
        encoded = [encode_image(image) for image in to_pil_images(images)]
        tags = prompt_tags(metadata, len(prompts))
        if not self.pairwise:
            items = [with_tag({"prompt": p, "image": e}, t) for p, e, t in zip(prompts, encoded, tags)]
            return self._pools()[0].submit(self._score_and_keep_rationales, items, 1)
        # Each image against each of its prompt's k references, averaged (as the in-process reward does).
        k = self.top_k
        items = []
        for prompt, image, tag in zip(prompts, encoded, tags):
            references = [encode_image(r) for r in to_pil_images(self.references(prompt, tag).references)]
            items += [with_tag({"prompt": prompt, "image": image, "reference": r}, tag) for r in references]
        return self._pools()[0].submit(self._score_and_keep_rationales, items, k)

    # -- internals ------------------------------------------------------------------------------------------

    def _pools(self) -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]:
        """(collectors, senders): a submitted call waits on its chunks in a collector; senders only send, so
        however many calls are outstanding, the chunks they wait for always make progress."""
        if self._collectors is None or self._senders is None:
            self._collectors = ThreadPoolExecutor(max_workers=4, thread_name_prefix="remote-reward-collect")
            self._senders = ThreadPoolExecutor(max_workers=self.max_concurrent, thread_name_prefix="remote-reward")
        return self._collectors, self._senders

    def _score_and_keep_rationales(self, items: list[dict[str, Any]], per_sample: int) -> Tensor:
        rewards, rationales = self._score_items(items, per_sample)
        if rationales is not None and per_sample > 1:  # pairwise: one line per reference, as RewardModelReward
            rationales = [
                "\n".join(f"reference {j + 1}: {rationales[i * per_sample + j]}" for j in range(per_sample))
                for i in range(len(rationales) // per_sample)
            ]
        self.last_rationales = rationales
        return rewards

    def _score_items(self, items: list[dict[str, Any]], per_sample: int) -> tuple[Tensor, list[str] | None]:
        """Rewards of ``items`` in order (chunks sent concurrently), averaged over each sample's ``per_sample``, and
        the items' rationales (None unless the server returned one for every item)."""
        if self.criteria is not None:
            items = [{**item, "criteria": self.criteria} for item in items]
        chunks = [items[s : s + self.chunk_size] for s in range(0, len(items), self.chunk_size)]
        senders = self._pools()[1]
        futures = [
            senders.submit(self._score_chunk, chunk, start * self.chunk_size) for start, chunk in enumerate(chunks)
        ]
        answers = [future.result() for future in futures]
        rewards = [r for chunk_rewards, _ in answers for r in chunk_rewards]
        rationales = [t for _, chunk_rationales in answers for t in chunk_rationales]
        tensor = torch.tensor(rewards, dtype=torch.float32).view(-1, per_sample).mean(dim=1)
        if not all(isinstance(t, str) for t in rationales):
            return tensor, None
        return tensor, [str(t) for t in rationales]

    def _score_chunk(self, chunk: list[dict[str, Any]], offset: int) -> tuple[list[float], list[str | None]]:
        answer = self.client.request("/score", {"items": chunk})
        with self._lock:
            self.requests += 1
        url = self.client.url
        return checked_rewards(answer, chunk, offset, url), checked_rationales(answer, chunk, url)

    def references(self, prompt: str, tag: str | None = None) -> ReferenceSelection:
        """A pairwise prompt's cached references, chosen on a miss from ``best_of_n`` starting-model samples
        (judged with the prompt's ``tag``, for a model that retrieves its examples by tag)."""
        if self.sampler is None:
            raise RuntimeError("remote reward: no starting-model sampler; call setup(sampler)")
        sampler = self.sampler
        seed = (self.seed * 1_000_003 + zlib.crc32(prompt.encode())) % 2**31
        return self.cache.get_or_select(
            prompt,
            lambda: sampler(prompt, self.best_of_n, seed),
            lambda first, second: self._judge(prompt, first, second, tag),
            k=self.top_k,
            which=self.which,
            both_orders=self.both_orders,
        )

    def _judge(self, prompt: str, first: Tensor, second: Tensor, tag: str | None = None) -> Tensor:
        """P(``second`` better than ``first``) from the server, for a batch of pairs of one prompt."""
        items = [
            with_tag({"prompt": prompt, "image": encode_image(b), "reference": encode_image(a)}, tag)
            for a, b in zip(to_pil_images(first), to_pil_images(second))
        ]
        return self._score_items(items, 1)[0]

    def __repr__(self) -> str:
        return f"RemoteReward(url={self.client.url!r})"

    def __getstate__(self) -> dict[str, Any]:  # threads and locks stay behind (Lightning may copy the reward)
        state = self.__dict__.copy()
        state["_collectors"] = state["_senders"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def prompt_tags(metadata: Sequence[Mapping[str, Any]] | None, n: int) -> list[str | None]:
    """Each prompt's GenEval ``tag`` from its metadata, None where absent (what the in-process reward passes on)."""
    if not metadata:
        return [None] * n
    return [str(m["tag"]) if isinstance(m, Mapping) and m.get("tag") else None for m in metadata]


def with_tag(item: dict[str, Any], tag: str | None) -> dict[str, Any]:
    """``item`` with its ``tag`` field when there is one (servers before tags refuse unknown fields)."""
    return {**item, "tag": tag} if tag is not None else item


def checked_rationales(answer: Any, items: Sequence[Mapping[str, Any]], url: str) -> list[str | None]:
    """The rationales of a ``/score`` answer: one per item, null where the model wrote none.

    An answer without ``rationales`` (a server from before they were served) gives nulls.

    Raises:
        RemoteRewardError: ``rationales`` is not a list of one string or null per item.
    """
    rationales = answer.get("rationales") if isinstance(answer, dict) else None
    if rationales is None:
        return [None] * len(items)
    if (
        not isinstance(rationales, list)
        or len(rationales) != len(items)
        or not all(r is None or isinstance(r, str) for r in rationales)
    ):
        raise RemoteRewardError(
            f"{url}/score answered rationales {str(rationales)[:200]} for {len(items)} items: expected one string or "
            "null per item"
        )
    return rationales


def checked_rewards(answer: Any, items: Sequence[Mapping[str, Any]], offset: int, url: str) -> list[float]:
    """The rewards of a ``/score`` answer, after checking it has one finite reward per item.

    Raises:
        RemoteRewardError: The answer is not ``{"rewards": [...], "errors": [...]}`` with one entry per item, or
            an item has no reward (its sample index, prompt and the server's reason are named).
    """
    rewards = answer.get("rewards") if isinstance(answer, dict) else None
    errors = answer.get("errors") if isinstance(answer, dict) else None
    if not isinstance(rewards, list) or len(rewards) != len(items):
        got = len(rewards) if isinstance(rewards, list) else type(rewards).__name__
        raise RemoteRewardError(f"{url}/score answered {got} rewards for {len(items)} items: refusing to guess which")
    for i, reward in enumerate(rewards):
        if not isinstance(reward, (int, float)) or not math.isfinite(reward):
            reason = errors[i] if isinstance(errors, list) and i < len(errors) else "no reason given"
            raise RemoteRewardError(
                f"{url}/score gave no reward for item {offset + i} (prompt {items[i].get('prompt')!r:.80}): {reason}"
            )
    return [float(r) for r in rewards]
