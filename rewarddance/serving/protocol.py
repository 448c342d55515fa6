"""What the reward server accepts: the JSON bodies of ``POST /score`` and ``POST /best_of_n``, checked and decoded.

Two kinds of problem are told apart, because a client acts on them differently:

- A malformed *request* (not JSON, no ``items``, too many items, an image over the size limits, unknown
  fields) raises :class:`RequestError` with an HTTP status (400, or 413 for sizes) and the reason; nothing
  of it is scored.
- A bad *item* (no prompt, an image that is not base64 PNG/JPEG, a missing or unexpected reference) becomes
  its reason in place of the item: it gets a null reward, the other items are scored as usual.

The same functions run in the API server (to refuse a request before it is queued, since a queued request
shares its batch with others) and in the inference worker (to decode the images it scores).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image

ACCEPTED_FORMATS = ("PNG", "JPEG")
"""Image formats the server decodes (what generators write and what PIL reads without plug-ins)."""


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may carry.

    Args:
        max_items: Items of a ``/score`` request, or candidates of a ``/best_of_n`` request.
        max_image_bytes: Encoded size of one image (after base64 decoding).
        max_image_pixels: Width x height of one image, read from its header before it is decoded, so a small
            file that would decode to a huge image (a decompression bomb) is refused without decoding it.
        max_text_chars: Length of a prompt or criteria text.
        max_request_bytes: The whole HTTP body (checked while it is received).
    """

    max_items: int = 64
    max_image_bytes: int = 8 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_text_chars: int = 8192
    max_request_bytes: int = 256 * 1024 * 1024


class RequestError(ValueError):
    """A request refused as a whole: ``status`` is the HTTP status to answer (400, 413), the message the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class ScoreItem:
    """One decoded item of a ``/score`` request.

    ``tag`` (the item's GenEval tag or category) and ``key`` (its sample key) are passed on to
    :meth:`RewardModel.score` as ``tags=`` and ``keys=``: a model that retrieves its in-context examples per
    query chooses them by tag, and never shows an item the pool sample with its own key. Other models ignore them.
    """

    prompt: str
    image: Image.Image
    reference: Image.Image | None = None
    criteria: str | None = None
    tag: str | None = None
    key: str | None = None


@dataclass
class BestOfNRequest:
    """A decoded ``/best_of_n`` request: each candidate is an image, or the reason it could not be read."""

    prompt: str
    reference: Image.Image
    candidates: list[Image.Image | str]
    criteria: str | None = None
    tag: str | None = None


ITEM_FIELDS = ("prompt", "image", "reference", "criteria", "tag", "key")
BEST_OF_N_FIELDS = ("prompt", "reference", "candidates", "criteria", "tag")


def parse_json(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or :class:`RequestError` 400 saying why not."""
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RequestError(400, f"the body is not JSON ({err})") from err
    if not isinstance(payload, dict):
        raise RequestError(400, f"the body must be a JSON object, got {type(payload).__name__}")
    return payload


def decode_image(value: Any, field: str, limits: Limits, *, decode: bool = True) -> Image.Image:
    """A base64 PNG/JPEG (optionally a ``data:image/...;base64,`` URL) as an RGB image.

    With ``decode=False`` only the header is read (format and size: every check that can refuse the whole
    request) and the image is returned undecoded: the API server checks a request that way, and leaves decoding
    the pixels to the worker.

    Raises:
        RequestError: 413 when the image exceeds ``limits`` (the whole request is refused).
        ValueError: The value is not a decodable PNG/JPEG (the item alone fails), with the reason.
    """
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field}: expected a base64 PNG or JPEG string, got {type(value).__name__}")
    if value.startswith("data:"):
        header, _, value = value.partition(",")
        if not header.endswith(";base64"):
            raise ValueError(f"{field}: a data URL must be base64 ('data:image/png;base64,...')")
    # base64 carries 3 bytes per 4 characters: refuse an oversized image before decoding it.
    if len(value) * 3 // 4 > limits.max_image_bytes + 3:
        raise RequestError(413, f"{field}: the image is over {limits.max_image_bytes} bytes")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValueError(f"{field}: not valid base64 ({err})") from err
    try:
        image = Image.open(io.BytesIO(data))
    except Exception as err:  # PIL raises several types for data that is not an image
        raise ValueError(f"{field}: not a PNG or JPEG image ({type(err).__name__}: {err})") from err
    if image.format not in ACCEPTED_FORMATS:
        raise ValueError(f"{field}: a {image.format} image; send PNG or JPEG")
    width, height = image.size
    if width * height > limits.max_image_pixels:
        raise RequestError(413, f"{field}: the image is {width}x{height}, over {limits.max_image_pixels} pixels")
    if not decode:
        return image
    try:
        return image.convert("RGB")
    except Exception as err:  # a truncated or corrupt file fails only when its pixels are read
        raise ValueError(f"{field}: the image cannot be decoded ({type(err).__name__}: {err})") from err


def _text(value: Any, field: str, limits: Limits, *, required: bool) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise ValueError(f"{field}: expected a non-empty string, got {value!r:.60}")
    if len(value) > limits.max_text_chars:
        raise ValueError(f"{field}: {len(value)} characters, over the limit of {limits.max_text_chars}")
    return value


def _unknown(fields: Mapping[str, Any], allowed: tuple[str, ...]) -> list[str]:
    return sorted(set(fields) - set(allowed))


def parse_score_request(
    payload: Mapping[str, Any], *, pairwise: bool, limits: Limits, decode: bool = True
) -> list[ScoreItem | str]:
    """The items of a ``/score`` body, each decoded or replaced by the reason it cannot be scored.

    Args:
        payload: The JSON body: ``{"items": [{"prompt", "image", "reference" (pairwise models), "criteria", "tag",
            "key"}]}``.
        pairwise: Whether the model compares each image with a reference (then every item needs one).
        limits: The size bounds.
        decode: False: check the images' headers only (see :func:`decode_image`).

    Raises:
        RequestError: The request as a whole is malformed or too large.
    """
    extra = _unknown(payload, ("items",))
    if extra:
        raise RequestError(400, f"unknown fields {extra}; a /score body is {{'items': [...]}}")
    items = payload.get("items")
    if not isinstance(items, list):
        raise RequestError(400, f"'items' must be a list of objects, got {type(items).__name__}")
    if not items:
        raise RequestError(400, "'items' is empty: nothing to score")
    if len(items) > limits.max_items:
        raise RequestError(413, f"{len(items)} items, over the limit of {limits.max_items} per request")
    return [_score_item(i, item, pairwise, limits, decode) for i, item in enumerate(items)]


def _score_item(i: int, item: Any, pairwise: bool, limits: Limits, decode: bool) -> ScoreItem | str:
    where = f"items[{i}]"
    try:
        if not isinstance(item, dict):
            raise ValueError(f"expected an object with {list(ITEM_FIELDS)}, got {type(item).__name__}")
        extra = _unknown(item, ITEM_FIELDS)
        if extra:
            raise ValueError(f"unknown fields {extra} (an item has {list(ITEM_FIELDS)})")
        prompt = _text(item.get("prompt"), "prompt", limits, required=True)
        criteria = _text(item.get("criteria"), "criteria", limits, required=False)
        tag = _text(item.get("tag"), "tag", limits, required=False)
        key = _text(item.get("key"), "key", limits, required=False)
        image = decode_image(item.get("image"), "image", limits, decode=decode)
        reference = None
        if pairwise:
            if item.get("reference") is None:
                raise ValueError("reference: missing; the model is pairwise (P(image better than reference))")
            reference = decode_image(item["reference"], "reference", limits, decode=decode)
        elif item.get("reference") is not None:
            raise ValueError("reference: given, but the model is pointwise and takes no reference")
        return ScoreItem(str(prompt), image, reference, criteria, tag, key)
    except RequestError as err:
        raise RequestError(err.status, f"{where}.{err.reason}") from err
    except ValueError as err:
        return f"{where}: {err}"


def parse_best_of_n_request(payload: Mapping[str, Any], *, limits: Limits, decode: bool = True) -> BestOfNRequest:
    """A ``/best_of_n`` body: ``{"prompt", "reference", "candidates": [base64...], "criteria", "tag"}``.

    The prompt, the reference and the tag are shared by every candidate, so a bad one refuses the request (400);
    a bad candidate gets a null reward and its reason.

    Raises:
        RequestError: The request as a whole is malformed or too large.
    """
    extra = _unknown(payload, BEST_OF_N_FIELDS)
    if extra:
        raise RequestError(400, f"unknown fields {extra}; a /best_of_n body has {list(BEST_OF_N_FIELDS)}")
    candidates = payload.get("candidates")
    if not isinstance(candidates, list) or not candidates:
        raise RequestError(400, "'candidates' must be a non-empty list of base64 images")
    if len(candidates) > limits.max_items:
        raise RequestError(413, f"{len(candidates)} candidates, over the limit of {limits.max_items} per request")
    try:
        prompt = _text(payload.get("prompt"), "prompt", limits, required=True)
        criteria = _text(payload.get("criteria"), "criteria", limits, required=False)
        tag = _text(payload.get("tag"), "tag", limits, required=False)
        reference = decode_image(payload.get("reference"), "reference", limits, decode=decode)
    except RequestError:
        raise
    except ValueError as err:
        raise RequestError(400, str(err)) from err
    decoded: list[Image.Image | str] = []
    for i, candidate in enumerate(candidates):
        try:
            decoded.append(decode_image(candidate, f"candidates[{i}]", limits, decode=decode))
        except RequestError:
            raise
        except ValueError as err:
            decoded.append(str(err))
    return BestOfNRequest(str(prompt), reference, decoded, criteria, tag)


def encode_image(image: Image.Image, format: str = "PNG") -> str:
    """An image as the base64 string the server reads (PNG: lossless, so the server scores the same pixels)."""
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
