"""``python -m rewarddance serve``: an exported reward model behind HTTP, for RL running elsewhere."""

from __future__ import annotations

import functools
import os
import signal
from pathlib import Path
from typing import Any, Literal

from rewarddance.errors import BadFileError, UsageError

BIND_HOSTS = ("127.0.0.1", "0.0.0.0", "::")
"""Addresses LitServe binds to: loopback only, or every interface (IPv4, IPv6)."""


def serve(
    model: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch_size: int = 8,
    batch_timeout: float = 0.01,
    api_key: str | None = None,
    forward_batch_size: int = 16,
    max_items: int = 64,
    max_image_bytes: int = 8 * 1024 * 1024,
    max_image_pixels: int = 4096 * 4096,
    request_timeout: float = 60.0,
    accelerator: Literal["auto", "cpu", "cuda"] = "auto",
    dtype: str | None = None,
) -> None:
    """Serve a reward model export over HTTP (LitServe): GET /health, POST /score, POST /best_of_n.

    POST /score takes {"items": [{"prompt", "image", "reference" (pairwise models), "criteria" (optional)}]},
    images as base64 PNG or JPEG, and answers {"rewards": [float or null], "errors": [null or reason]}, one per
    item in order: a bad item gets its reason and a null reward, the others are scored. A malformed request
    (not JSON, no items, too many, an image over the limits) gets a 4xx with the reason. POST /best_of_n takes
    {"prompt", "reference", "candidates": [images], "criteria"} (pairwise models; the shared-prefix path).
    Requests arriving within --batch_timeout of each other are scored together (up to --max_batch_size); the
    rewards equal RewardModel.score on the same images. See docs/serving.md.

    Args:
        model: A reward-model folder exported by fit (what RewardModel.from_pretrained reads).
        host: Address to bind: 127.0.0.1 (this machine only), 0.0.0.0 or :: (every interface; give an API key).
        port: TCP port (1024-65535).
        max_batch_size: Requests scored together at most (dynamic batching; 1 turns it off).
        batch_timeout: Seconds to wait for more requests before scoring a batch.
        api_key: A key every request must carry (Authorization: Bearer KEY, or X-API-Key: KEY); default the
            REWARDDANCE_API_KEY environment variable, which keeps it out of the process list.
        forward_batch_size: Items per forward pass of the model.
        max_items: Items (or best-of-N candidates) per request at most.
        max_image_bytes: Encoded size of one image at most.
        max_image_pixels: Width x height of one image at most (read from its header before decoding).
        request_timeout: Seconds a request may wait for its answer (then 504).
        accelerator: auto (a GPU if there is one), cpu, cuda.
        dtype: Model parameter dtype (bfloat16 on GPUs); default what the export holds.
    """
    from rewarddance.serving.protocol import Limits
    from rewarddance.serving.server import RewardAPI, build_server, resolve_api_key, warn_if_exposed

    # Every argument is checked before the model loads, so a mistake costs no loading time.
    if host not in BIND_HOSTS:
        raise UsageError(f"--host must be one of {list(BIND_HOSTS)}, got {host!r}")
    if not 1024 <= port <= 65535:
        raise UsageError(f"--port must be between 1024 and 65535, got {port}")
    for name, value in (("max_batch_size", max_batch_size), ("forward_batch_size", forward_batch_size),
                        ("max_items", max_items), ("max_image_bytes", max_image_bytes),
                        ("max_image_pixels", max_image_pixels)):  # fmt: skip
        if value < 1:
            raise UsageError(f"--{name} must be at least 1, got {value}")
    if batch_timeout < 0 or request_timeout <= 0:
        raise UsageError("--batch_timeout must be >= 0 and --request_timeout > 0")
    if not Path(model).is_dir():
        raise UsageError(f"--model {model!r} is not a folder (give a reward-model export)")
    key = resolve_api_key(api_key)
    limits = Limits(max_items=max_items, max_image_bytes=max_image_bytes, max_image_pixels=max_image_pixels)
    api = RewardAPI(
        model,
        max_batch_size=max_batch_size,
        batch_timeout=batch_timeout,
        api_key=key,
        limits=limits,
        forward_batch_size=forward_batch_size,
        dtype=dtype,
    )
    try:
        server = build_server(api, timeout=request_timeout, accelerator=accelerator)
    except FileNotFoundError as err:
        raise BadFileError(str(err)) from err
    warn_if_exposed(host, key)
    print(f"serving {model} on http://{host}:{port} (POST /score, POST /best_of_n, GET /health)", flush=True)
    # LitServer shuts its worker processes down on KeyboardInterrupt only: make SIGTERM (what a process manager
    # or a test's teardown sends) take the same path, so no worker outlives the server.
    signal.signal(signal.SIGTERM, functools.partial(_interrupt, os.getpid()))
    server.run(host=host, port=port, generate_client_file=False, num_api_servers=1)


def _interrupt(server_pid: int, signum: int, frame: Any) -> None:
    if os.getpid() != server_pid:
        # LitServe forks its HTTP servers from this process, handler included; uvicorn has shut down gracefully
        # when it re-raises the signal, so such a child just leaves (no KeyboardInterrupt trace in the log).
        os._exit(0)
    raise KeyboardInterrupt(f"signal {signum}")
