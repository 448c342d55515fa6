"""What the server refuses as a whole (4xx with a reason) and what it refuses per item (null reward + reason)."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from rewarddance.serving.protocol import (
    Limits,
    RequestError,
    ScoreItem,
    encode_image,
    parse_best_of_n_request,
    parse_json,
    parse_score_request,
)

LIMITS = Limits(max_items=4, max_image_bytes=4096, max_image_pixels=32 * 32, max_text_chars=100)


def png(colour: str = "red", size: int = 16) -> str:
    return encode_image(Image.new("RGB", (size, size), colour))


def test_a_good_request_decodes_every_item_in_order():
    items = parse_score_request(
        {"items": [{"prompt": "a red circle", "image": png("red")}, {"prompt": "blue", "image": png("blue")}]},
        pairwise=False,
        limits=LIMITS,
    )
    assert all(isinstance(item, ScoreItem) for item in items)
    assert [item.prompt for item in items] == ["a red circle", "blue"]  # type: ignore[union-attr]
    assert items[1].image.getpixel((0, 0)) == (0, 0, 255)  # type: ignore[union-attr]


def test_tag_and_key_are_read_per_item_and_tag_per_best_of_n_request():
    good, tagged = {"prompt": "p", "image": png()}, {"prompt": "p", "image": png(), "tag": "counting", "key": "s-1"}
    plain, item = parse_score_request({"items": [good, tagged]}, pairwise=False, limits=LIMITS)
    assert isinstance(plain, ScoreItem) and plain.tag is None and plain.key is None
    assert isinstance(item, ScoreItem) and (item.tag, item.key) == ("counting", "s-1")
    body = {"prompt": "p", "reference": png(), "candidates": [png()], "tag": "colors"}
    assert parse_best_of_n_request(body, limits=LIMITS).tag == "colors"
    with pytest.raises(RequestError, match="tag"):
        parse_best_of_n_request({**body, "tag": 3}, limits=LIMITS)


def test_jpeg_and_data_urls_are_accepted():
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), "green").save(buffer, format="JPEG")
    jpeg = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
    (item,) = parse_score_request({"items": [{"prompt": "p", "image": jpeg}]}, pairwise=False, limits=LIMITS)
    assert isinstance(item, ScoreItem) and item.image.size == (16, 16)


def gif() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, format="GIF")
    return base64.b64encode(buffer.getvalue()).decode()


def truncated_png() -> str:
    data = base64.b64decode(png(size=24))
    return base64.b64encode(data[: len(data) // 2]).decode()


BAD_ITEMS = {
    "not an object": ("a string", "expected an object"),
    "no prompt": ({"image": png()}, "prompt"),
    "empty prompt": ({"prompt": "  ", "image": png()}, "prompt"),
    "prompt too long": ({"prompt": "x" * 101, "image": png()}, "over the limit"),
    "no image": ({"prompt": "p"}, "image"),
    "image not a string": ({"prompt": "p", "image": 12}, "base64"),
    "not base64": ({"prompt": "p", "image": "@@@"}, "not valid base64"),
    "not an image": ({"prompt": "p", "image": base64.b64encode(b"hello world!").decode()}, "not a PNG or JPEG"),
    "a GIF": ({"prompt": "p", "image": gif()}, "GIF"),
    "truncated PNG": ({"prompt": "p", "image": truncated_png()}, "cannot be decoded"),
    "unknown field": ({"prompt": "p", "image": png(), "imgae": png()}, "unknown fields"),
    "reference to a pointwise model": ({"prompt": "p", "image": png(), "reference": png()}, "pointwise"),
    "tag not a string": ({"prompt": "p", "image": png(), "tag": ["colors"]}, "tag: expected"),
    "key too long": ({"prompt": "p", "image": png(), "key": "k" * 101}, "key: 101 characters"),
}


@pytest.mark.parametrize("kind", list(BAD_ITEMS))
def test_a_bad_item_gets_its_reason_and_the_others_are_kept(kind):
    bad, reason = BAD_ITEMS[kind]
    good = {"prompt": "p", "image": png()}
    items = parse_score_request({"items": [good, bad, good]}, pairwise=False, limits=LIMITS)
    assert isinstance(items[0], ScoreItem) and isinstance(items[2], ScoreItem)
    assert isinstance(items[1], str) and items[1].startswith("items[1]") and reason in items[1], items[1]


def test_a_pairwise_model_needs_a_reference_per_item():
    items = parse_score_request(
        {"items": [{"prompt": "p", "image": png(), "reference": png("blue")}, {"prompt": "p", "image": png()}]},
        pairwise=True,
        limits=LIMITS,
    )
    assert isinstance(items[0], ScoreItem) and items[0].reference is not None
    assert isinstance(items[1], str) and "reference: missing" in items[1]


BAD_REQUESTS = {
    "not JSON": (b"{items: nope", 400, "not JSON"),
    "a JSON list": (b"[1, 2]", 400, "JSON object"),
    "not UTF-8": (b"\xff\xfe\x00", 400, "not JSON"),
}

BAD_BODIES = {
    "no items": ({}, 400, "'items' must be a list"),
    "items not a list": ({"items": {"prompt": "p"}}, 400, "must be a list"),
    "empty items": ({"items": []}, 400, "empty"),
    "too many items": ({"items": [{"prompt": "p", "image": png()}] * 5}, 413, "over the limit of 4"),
    "unknown top-level field": ({"items": [{"prompt": "p", "image": png()}], "extra": 1}, 400, "unknown fields"),
    "image over the byte limit": ({"items": [{"prompt": "p", "image": "A" * 8000}]}, 413, "over 4096 bytes"),
    "image over the pixel limit": ({"items": [{"prompt": "p", "image": png(size=40)}]}, 413, "40x40"),
    "best-of-N body on /score": ({"prompt": "p", "candidates": [png()]}, 400, "unknown fields"),
}


@pytest.mark.parametrize("kind", list(BAD_REQUESTS))
def test_a_body_that_is_not_a_json_object_is_refused(kind):
    body, status, reason = BAD_REQUESTS[kind]
    with pytest.raises(RequestError) as error:
        parse_json(body)
    assert error.value.status == status and reason in error.value.reason


@pytest.mark.parametrize("kind", list(BAD_BODIES))
def test_a_malformed_request_is_refused_as_a_whole(kind):
    body, status, reason = BAD_BODIES[kind]
    with pytest.raises(RequestError) as error:
        parse_score_request(body, pairwise=False, limits=LIMITS)
    assert error.value.status == status and reason in error.value.reason, error.value.reason


def test_best_of_n_bad_candidate_is_per_item_but_a_bad_reference_refuses_the_request():
    request = parse_best_of_n_request(
        {"prompt": "p", "reference": png("blue"), "candidates": [png(), "@@@", png("green")]}, limits=LIMITS
    )
    assert isinstance(request.candidates[1], str) and "candidates[1]" in request.candidates[1]
    assert not isinstance(request.candidates[0], str) and not isinstance(request.candidates[2], str)
    with pytest.raises(RequestError, match="reference"):
        parse_best_of_n_request({"prompt": "p", "reference": "@@@", "candidates": [png()]}, limits=LIMITS)
    with pytest.raises(RequestError, match="over the limit"):
        parse_best_of_n_request({"prompt": "p", "reference": png(), "candidates": [png()] * 5}, limits=LIMITS)


def test_checking_headers_only_finds_every_request_level_problem_without_decoding():
    """The API server parses with decode=False: sizes refuse the request; pixels are decoded in the worker."""
    with pytest.raises(RequestError, match="40x40"):
        parse_score_request(
            {"items": [{"prompt": "p", "image": png(size=40)}]}, pairwise=False, limits=LIMITS, decode=False
        )
    body = {"items": [{"prompt": "p", "image": truncated_png()}, {"prompt": "p", "image": png()}]}
    checked = parse_score_request(body, pairwise=False, limits=LIMITS, decode=False)
    assert all(isinstance(item, ScoreItem) for item in checked)  # a truncated file shows only when decoded
    decoded = parse_score_request(body, pairwise=False, limits=LIMITS)
    assert isinstance(decoded[0], str) and "cannot be decoded" in decoded[0] and isinstance(decoded[1], ScoreItem)
