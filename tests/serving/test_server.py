"""`python -m rewarddance serve`: live servers on loopback answer like RewardModel.score, refuse bad requests."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from fastapi import HTTPException
from PIL import Image
from starlette.requests import Request

from rewarddance.cli import main
from rewarddance.serving.protocol import encode_image
from rewarddance.serving.server import RewardAPI, warn_if_exposed

from .conftest import API_KEY

PROMPTS = ["a red circle", "two blue squares", "a green triangle", "a white star", "a black cross"]
COLOURS = ["red", "blue", "green", "white", "black"]


def images(*colours: str, size: int = 64) -> list[Image.Image]:
    return [Image.new("RGB", (size, size), c) for c in colours]


def post(url: str, path: str, body, key: str | None = None, timeout: float = 60.0) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(url + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def test_served_rewards_equal_score_even_when_requests_are_batched_together(servers, models):
    url = servers["pointwise"].url
    shots = images(*COLOURS)
    expected = models["pointwise"].score(PROMPTS, shots)
    # Five concurrent one-item requests: the server batches them (max_batch_size 8, 50 ms).
    with ThreadPoolExecutor(5) as pool:
        answers = list(
            pool.map(
                lambda i: post(url, "/score", {"items": [{"prompt": PROMPTS[i], "image": encode_image(shots[i])}]}),
                range(5),
            )
        )
    assert all(status == 200 for status, _ in answers), answers
    served = torch.tensor([answer["rewards"][0] for _, answer in answers])
    torch.testing.assert_close(served, expected, atol=1e-5, rtol=1e-4)
    assert all(answer["rationales"] == [None] for _, answer in answers)  # a plain model writes none


def test_a_bad_item_gets_null_and_its_reason_while_the_others_are_scored(servers, models):
    shots = images("red", "blue")
    body = {
        "items": [
            {"prompt": PROMPTS[0], "image": encode_image(shots[0])},
            {"prompt": PROMPTS[1], "image": "not-base64!"},
            {"prompt": PROMPTS[1], "image": encode_image(shots[1])},
        ]
    }
    status, answer = post(servers["pointwise"].url, "/score", body)
    assert status == 200
    assert answer["rewards"][1] is None and "items[1]: image: not valid base64" in answer["errors"][1]
    assert answer["errors"][0] is None and answer["errors"][2] is None
    expected = models["pointwise"].score([PROMPTS[0], PROMPTS[1]], shots)
    torch.testing.assert_close(
        torch.tensor([answer["rewards"][0], answer["rewards"][2]]), expected, atol=1e-5, rtol=1e-4
    )


def test_malformed_requests_get_4xx_with_the_reason(servers):
    url = servers["pointwise"].url
    item = {"prompt": "p", "image": encode_image(images("red")[0])}
    cases = [
        (b"not json", 400, "not JSON"),
        ({"items": []}, 400, "empty"),
        ({"items": [item] * 65}, 413, "over the limit of 64"),
        ({"prompt": "p", "candidates": [item["image"]]}, 400, "/best_of_n"),
    ]
    for body, status, reason in cases:
        got, answer = post(url, "/score", body)
        assert got == status and reason in answer["detail"], (body if isinstance(body, bytes) else list(body), answer)
    got, answer = post(url, "/best_of_n", {"prompt": "p", "reference": item["image"], "candidates": [item["image"]]})
    assert got == 400 and "pointwise" in answer["detail"]


def test_the_api_key_is_required_and_health_answers_once_loaded(servers, models):
    url = servers["pairwise"].url
    candidate, reference = (encode_image(im) for im in images("red", "blue"))
    body = {"items": [{"prompt": "a red circle", "image": candidate, "reference": reference}]}
    for key in (None, "wrong-key"):
        status, answer = post(url, "/score", body, key=key)
        assert status == 401 and "API key" in answer["detail"]
        status, _ = post(url, "/best_of_n", {"prompt": "p", "reference": reference, "candidates": [candidate]}, key=key)
        assert status == 401
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(url + "/health", timeout=10)
    assert error.value.code == 401
    health = urllib.request.Request(url + "/health", headers={"X-API-Key": API_KEY})
    with urllib.request.urlopen(health, timeout=10) as answer:
        assert answer.status == 200
    status, answer = post(url, "/score", body, key=API_KEY)
    assert status == 200
    expected = models["pairwise"].score(["a red circle"], *[images("red"), images("blue")])
    assert answer["rewards"][0] == pytest.approx(float(expected[0]), abs=1e-5)


def test_best_of_n_endpoint_equals_score_candidates(servers, models):
    candidates = images("red", "green", "white")
    reference = images("blue")[0]
    body = {
        "prompt": "a red circle",
        "reference": encode_image(reference),
        "candidates": [encode_image(candidates[0]), "broken", encode_image(candidates[1]), encode_image(candidates[2])],
    }
    status, answer = post(servers["pairwise"].url, "/best_of_n", body, key=API_KEY)
    assert status == 200 and answer["rewards"][1] is None and "candidates[1]" in answer["errors"][1]
    expected = models["pairwise"].score(["a red circle"] * 3, candidates, [reference] * 3)
    served = torch.tensor([answer["rewards"][i] for i in (0, 2, 3)])
    torch.testing.assert_close(served, expected, atol=1e-5, rtol=1e-4)
    assert answer["rationales"] == [None] * 4


def test_a_request_without_the_key_is_refused_before_its_body_is_read(exports):
    """The key check is LitServe's endpoint dependency: it runs before the request is queued, and reads nothing."""
    api = RewardAPI(exports["pointwise"], api_key="right")
    api.check_export()
    received = []

    async def receive():
        received.append(True)
        return {"type": "http.request", "body": b'{"items": []}', "more_body": False}

    for headers in ([], [(b"authorization", b"Bearer wrong")], [(b"x-api-key", b"wrong")]):
        scope = {"type": "http", "method": "POST", "path": "/score", "headers": headers, "query_string": b""}
        with pytest.raises(HTTPException) as error:
            asyncio.run(api.authorize(Request(scope, receive)))
        assert error.value.status_code == 401
    assert received == []


def test_binding_beyond_loopback_without_a_key_warns_loudly():
    with pytest.warns(UserWarning, match="WITHOUT an API key"):
        warn_if_exposed("0.0.0.0", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_exposed("0.0.0.0", "a-key")
        warn_if_exposed("127.0.0.1", None)


def test_bad_command_lines_fail_before_the_model_loads(tmp_path, capsys):
    for args, message in (
        (["--host", "10.0.0.1"], "--host must be one of"),
        (["--port", "80"], "--port must be between"),
        (["--max_batch_size", "0"], "--max_batch_size must be at least 1"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["serve", "--model", str(tmp_path), *args])
        assert exit_info.value.code == 1
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("max_batch_size", [1, 4])
def test_the_api_scores_like_the_model_with_and_without_batching(exports, models, max_batch_size):
    """LitServe calls predict with a list of requests when batching, and with the request itself without."""
    api = RewardAPI(exports["pointwise"], max_batch_size=max_batch_size, forward_batch_size=2)
    api.setup("cpu")
    shots = images(*COLOURS[:3])
    bodies = [
        {"items": [{"prompt": PROMPTS[0], "image": encode_image(shots[0])}, {"prompt": "", "image": "x"}]},
        {"items": [{"prompt": p, "image": encode_image(im)} for p, im in zip(PROMPTS[1:3], shots[1:3])]},
    ]
    requests = [api.decode_request(body) for body in bodies]
    answers = [api.predict(r) for r in requests] if max_batch_size == 1 else api.predict(api.batch(requests))
    rewards = [answers[0]["rewards"][0], *answers[1]["rewards"]]
    assert answers[0]["rewards"][1] is None and "prompt" in answers[0]["errors"][1]
    expected = models["pointwise"].score(PROMPTS[:3], shots)
    torch.testing.assert_close(torch.tensor(rewards), expected, atol=1e-5, rtol=1e-4)


def test_an_item_the_model_cannot_score_fails_alone(exports, models, monkeypatch):
    api = RewardAPI(exports["pointwise"], max_batch_size=4)
    api.setup("cpu")
    real_score = api.reward_model.score

    def score(prompts, *args, **kwargs):  # the model raises on one item, as on an input its processor refuses
        if "boom" in prompts:
            raise RuntimeError("cannot process boom")
        return real_score(prompts, *args, **kwargs)

    monkeypatch.setattr(api.reward_model, "score", score)
    shots = images("red", "blue")
    bodies = [
        {
            "items": [
                {"prompt": PROMPTS[0], "image": encode_image(shots[0])},
                {"prompt": "boom", "image": encode_image(shots[0])},
            ]
        },
        {"items": [{"prompt": PROMPTS[1], "image": encode_image(shots[1])}]},
    ]
    answers = api.predict([api.decode_request(body) for body in bodies])
    assert answers[0]["rewards"][1] is None and "cannot process boom" in answers[0]["errors"][1]
    expected = models["pointwise"].score(PROMPTS[:2], shots)
    torch.testing.assert_close(
        torch.tensor([answers[0]["rewards"][0], answers[1]["rewards"][0]]), expected, atol=1e-5, rtol=1e-4
    )
