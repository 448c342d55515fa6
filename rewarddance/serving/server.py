"""The reward server: an exported reward model behind HTTP, on LitServe (dynamic batching, workers, health checks).

Endpoints (JSON in, JSON out):

- ``GET /health``: 200 once the model is loaded in every worker, 503 before.
- ``POST /score``: ``{"items": [{"prompt", "image", "reference", "criteria", "tag", "key"}]}`` ->
  ``{"rewards": [float|null], "rationales": [str|null], "errors": [null|str]}``, one entry per item, in order
  (:mod:`rewarddance.serving.protocol`). A rationale is what a reasons-first model generated before its judgment
  (:attr:`RewardModel.last_rationales`); null for models that generate none and for items that failed.
- ``POST /best_of_n``: ``{"prompt", "reference", "candidates": [...], "criteria", "tag"}`` -> the same answer, one
  entry per candidate, scored on the shared-prefix path (:meth:`RewardModel.score_candidates`, pairwise models).

``tag`` and ``key`` go to :meth:`RewardModel.score` as ``tags=`` and ``keys=``: a model that retrieves its in-context
examples per query (``example_pool`` in its export) serves the same rewards as in-process scoring with that tag.

Requests that arrive within ``batch_timeout`` of each other are scored together, up to ``max_batch_size``
requests: LitServe collects them, :meth:`RewardAPI.predict` scores every item of the batch in forward passes of
``forward_batch_size``, and the answers are split back per request. Items are left-padded, so a reward does not
depend on which other items share its batch: served rewards equal :meth:`RewardModel.score` on the same inputs.

With an API key, every request (health included) must carry it, as ``Authorization: Bearer KEY`` (what
OpenAI-compatible clients send) or ``X-API-Key: KEY``; otherwise it gets 401 before its body is read.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import os
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import litserve as ls
import torch
from fastapi import Depends, HTTPException, Request
from litserve.server import RegularRequestHandler

from rewarddance.judge.reward_model import EXPORT_CONFIG, RewardModel
from rewarddance.serving.protocol import (
    BestOfNRequest,
    Limits,
    RequestError,
    ScoreItem,
    parse_best_of_n_request,
    parse_json,
    parse_score_request,
)

API_KEY_ENV = "REWARDDANCE_API_KEY"
"""Environment variable read when no ``api_key`` is given (keeps the key out of the process list)."""

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

SCORE_PATH = "/score"
BEST_OF_N_PATH = "/best_of_n"

logger = logging.getLogger(__name__)


class ExposedWithoutKeyWarning(UserWarning):
    """The server listens beyond loopback and accepts requests from anyone who can reach it."""


def resolve_api_key(api_key: str | None) -> str | None:
    """``api_key``, else the ``REWARDDANCE_API_KEY`` environment variable, else None (no key)."""
    return api_key or os.environ.get(API_KEY_ENV) or None


def warn_if_exposed(host: str, api_key: str | None) -> None:
    """Warn loudly when ``host`` is beyond loopback and no key protects the server."""
    if host not in LOOPBACK_HOSTS and not api_key:
        message = (
            f"the reward server listens on {host}, beyond this machine, WITHOUT an API key: anyone who can reach "
            f"the port can use the model. Give --api_key (or set {API_KEY_ENV}), or bind to 127.0.0.1."
        )
        logger.warning("!" * 20 + " " + message)
        warnings.warn(message, ExposedWithoutKeyWarning, stacklevel=2)


def request_key(request: Request) -> str | None:
    """The key a request carries: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``."""
    authorization = request.headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return request.headers.get("x-api-key")


class RewardAPI(ls.LitAPI):
    """The LitServe API of one reward model export; both endpoints share its worker (one copy of the model).

    Args:
        model: The export folder (:meth:`RewardModel.from_pretrained`).
        max_batch_size: Requests scored together at most.
        batch_timeout: Seconds LitServe waits for more requests to fill a batch.
        api_key: Required from every request when set.
        limits: Request and image size bounds.
        forward_batch_size: Items per forward pass (:meth:`RewardModel.score`'s ``batch_size``).
        dtype: Parameter dtype for the model (``"bfloat16"`` on GPUs); default what the export holds.
    """

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        max_batch_size: int = 8,
        batch_timeout: float = 0.01,
        api_key: str | None = None,
        limits: Limits | None = None,
        forward_batch_size: int = 16,
        dtype: str | None = None,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=SCORE_PATH)
        self.model_dir = str(model)
        self.api_key = api_key
        self.limits = limits or Limits()
        self.forward_batch_size = forward_batch_size
        self.dtype = dtype
        self.pairwise: bool | None = None  # known once the export's config is read (setup, or check_export)
        self.reward_model: RewardModel | None = None

    def check_export(self) -> dict[str, Any]:
        """Read the export's config (cheap: no weights) so the API server knows the paradigm; returns it."""
        path = Path(self.model_dir) / EXPORT_CONFIG
        if not path.is_file():
            raise FileNotFoundError(f"{self.model_dir} has no {EXPORT_CONFIG}: not a rewarddance reward model export")
        config = json.loads(path.read_text())
        self.pairwise = config.get("kind") == "generative" and config.get("paradigm") == "pairwise"
        return config

    # -- the API server side: runs before a request is queued -----------------------------------------------

    async def authorize(self, request: Request) -> None:
        """Refuse a request before it is queued: a wrong key (401), then a malformed body (400/413).

        LitServe runs this as a FastAPI dependency of each endpoint, in the API server, before the request
        joins a batch. A request refused here is never scored, and never fails the batch it would have joined
        (an error raised in the worker fails every request of the batch).
        """
        if self.api_key is not None:
            given = request_key(request)
            if given is None or not hmac.compare_digest(given.encode(), self.api_key.encode()):
                raise HTTPException(401, "missing or wrong API key: send 'Authorization: Bearer <key>'")
        if request.method != "POST":
            return
        try:
            payload = parse_json(await request.body())
            # Headers only: the worker decodes the pixels (per-item errors), this process stays light.
            self._parse(request.url.path, payload, decode=False)
        except RequestError as err:
            raise HTTPException(err.status, err.reason) from err

    def _parse(
        self, path: str, payload: dict[str, Any], *, decode: bool = True
    ) -> list[ScoreItem | str] | BestOfNRequest:
        if path == BEST_OF_N_PATH:
            if not self.pairwise:
                raise RequestError(
                    400, "the model is pointwise: it scores candidates without a reference; post them to /score"
                )
            return parse_best_of_n_request(payload, limits=self.limits, decode=decode)
        if "candidates" in payload:
            raise RequestError(400, "a best-of-N body ('candidates'): post it to /best_of_n")
        return parse_score_request(payload, pairwise=bool(self.pairwise), limits=self.limits, decode=decode)

    # -- the inference worker side -------------------------------------------------------------------------

    def setup(self, device: str) -> None:
        self.check_export()
        torch.set_grad_enabled(False)
        self.reward_model = RewardModel.from_pretrained(self.model_dir, device=device, dtype=self.dtype)

    def decode_request(self, request):  # type: ignore[no-untyped-def]
        # No annotation on purpose: LitServe reads it as the endpoint's body type (FastAPI's Request without one).
        # The body is the JSON object authorize() checked already: parsing cannot raise a RequestError here.
        return self._parse(BEST_OF_N_PATH if "candidates" in request else SCORE_PATH, request)

    def predict(self, x: Any) -> Any:
        """Score a batch of requests (a list of decoded requests; one answer each), or with ``max_batch_size`` 1,
        where LitServe passes the decoded request itself, that request (its answer)."""
        if self.max_batch_size == 1:
            return self.score_requests([x])[0]
        return self.score_requests(x)

    def score_requests(self, requests: list[list[ScoreItem | str] | BestOfNRequest]) -> list[dict[str, list[Any]]]:
        """Score every item of several requests together; each answer lists one reward (and rationale) or error per
        item, in order."""
        answers: list[dict[str, list[Any]]] = []
        pending: list[tuple[int, int, ScoreItem]] = []  # (request, item, decoded item) of all /score requests
        for r, request in enumerate(requests):
            if isinstance(request, BestOfNRequest):
                answers.append(self._best_of_n(request))
                continue
            n = len(request)
            answers.append({"rewards": [None] * n, "rationales": [None] * n, "errors": [None] * n})
            for i, item in enumerate(request):
                if isinstance(item, str):
                    answers[r]["errors"][i] = item
                else:
                    pending.append((r, i, item))
        by_criteria: dict[str | None, list[tuple[int, int, ScoreItem]]] = defaultdict(list)
        for entry in pending:  # score() takes one criteria per call
            by_criteria[entry[2].criteria].append(entry)
        for criteria, entries in by_criteria.items():
            rewards, rationales, errors = self._score([e[2] for e in entries], criteria)
            for (r, i, _), reward, rationale, error in zip(entries, rewards, rationales, errors):
                answer = answers[r]
                answer["rewards"][i], answer["rationales"][i], answer["errors"][i] = reward, rationale, error
        return answers

    def encode_response(self, output: dict[str, list[Any]]) -> dict[str, list[Any]]:
        return output

    def _score(
        self, items: list[ScoreItem], criteria: str | None
    ) -> tuple[list[float | None], list[str | None], list[str | None]]:
        """Rewards and rationales of items sharing a criteria; an item that makes the model fail gets the error, not
        the others."""
        model = self.reward_model
        if model is None:
            raise RuntimeError("RewardAPI.predict before setup")
        pairwise = model.paradigm == "pairwise"

        def score(part: list[ScoreItem]) -> tuple[list[float | None], list[str | None]]:
            rewards = model.score(
                [it.prompt for it in part],
                [it.image for it in part],
                [it.reference for it in part] if pairwise else None,
                criteria=criteria,
                batch_size=self.forward_batch_size,
                tags=[it.tag for it in part],
                keys=[it.key for it in part],
            )
            # Read right after the call: this worker scores one batch at a time, so no other call sets them between.
            rationales = model.last_rationales
            return [float(x) for x in rewards], list(rationales) if rationales else [None] * len(part)

        try:
            rewards, rationales = score(items)
            return rewards, rationales, [None] * len(items)
        except Exception as err:
            if len(items) == 1:  # an error raised from predict would fail every request of the LitServe batch
                return [None], [None], [f"the model could not score this item: {type(err).__name__}: {err}"]
        # Some item breaks the batch (a criteria name the template lacks, an image the processor refuses): score
        # each alone so the others still get their rewards.
        out: list[float | None] = []
        reasons: list[str | None] = []
        errors: list[str | None] = []
        for it in items:
            try:
                (reward,), (rationale,) = score([it])
                out.append(reward)
                reasons.append(rationale)
                errors.append(None)
            except Exception as err:
                out.append(None)
                reasons.append(None)
                errors.append(f"the model could not score this item: {type(err).__name__}: {err}")
        return out, reasons, errors

    def _best_of_n(self, request: BestOfNRequest) -> dict[str, list[Any]]:
        model = self.reward_model
        if model is None:
            raise RuntimeError("RewardAPI.predict before setup")
        good = [(i, c) for i, c in enumerate(request.candidates) if not isinstance(c, str)]
        rewards: list[float | None] = [None] * len(request.candidates)
        rationales: list[str | None] = [None] * len(request.candidates)
        errors: list[str | None] = [c if isinstance(c, str) else None for c in request.candidates]
        if good:
            try:
                scored = model.score_candidates(
                    request.prompt, [c for _, c in good], request.reference, criteria=request.criteria, tag=request.tag
                )
            except Exception as err:
                for i, _ in good:
                    errors[i] = f"the model could not score the candidates: {type(err).__name__}: {err}"
            else:
                # A reasons-first model scores the candidates one by one (score()), which sets the rationales; the
                # shared-prefix path generates none and clears them.
                reasons = model.last_rationales or [None] * len(good)
                for (i, _), reward, rationale in zip(good, scored.tolist(), reasons):
                    rewards[i], rationales[i] = float(reward), rationale
        return {"rewards": rewards, "rationales": rationales, "errors": errors}


def build_server(api: RewardAPI, *, timeout: float = 60.0, accelerator: str = "auto") -> ls.LitServer:
    """The LitServer of ``api``, with ``/best_of_n`` routed into the same worker as ``/score``.

    Args:
        api: The reward API.
        timeout: Seconds a request may wait for its answer before LitServe answers 504.
        accelerator: ``"auto"`` (a GPU when there is one), ``"cpu"``, ``"cuda"``.
    """
    config = api.check_export()
    server = ls.LitServer(
        api,
        accelerator=accelerator,
        timeout=timeout,
        max_payload_size=api.limits.max_request_bytes,
        # GET /info shows these: RemoteReward reads the paradigm from it.
        model_metadata={
            "path": api.model_dir,
            "kind": config.get("kind"),
            "paradigm": config.get("paradigm"),
            "family": config.get("family"),
            "endpoints": [SCORE_PATH, BEST_OF_N_PATH],
            "limits": dataclasses.asdict(api.limits),
        },
    )
    # A second LitAPI would load a second copy of the model in its own worker; instead /best_of_n feeds the
    # /score queue (the worker tells the two bodies apart by their fields, which authorize() has checked).
    handler = RegularRequestHandler(api, server)

    async def best_of_n(request: Request) -> Any:
        return await handler.handle_request(request, Request)

    server.app.add_api_route(BEST_OF_N_PATH, best_of_n, methods=["POST"], dependencies=[Depends(api.authorize)])
    return server
