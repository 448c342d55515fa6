"""Served context: a reasons-first model's rationales come back beside its rewards, and an item's tag reaches a model
that retrieves its in-context examples by tag, so served answers equal in-process RewardModel.score."""

from __future__ import annotations

import json
import urllib.request

import pytest
import torch
from PIL import Image

from rewarddance.judge.reward_model import RewardModel
from rewarddance.models.pixels import to_pil_images
from rewarddance.serving import RemoteReward, RemoteRewardError
from rewarddance.serving.client import checked_rationales
from rewarddance.serving.protocol import encode_image
from rewarddance.serving.server import RewardAPI

from .conftest import context_export

PROMPTS = ["a red circle", "two squares", "a green triangle"]
TAGS = ["colors", "counting", "colors"]
OTHER_TAGS = ["counting", "colors", "counting"]


def shots() -> list[Image.Image]:
    return [Image.new("RGB", (64, 64), c) for c in ("red", "blue", "green")]


def items(tags: list[str] | None) -> list[dict]:
    out = [{"prompt": p, "image": encode_image(i)} for p, i in zip(PROMPTS, shots())]
    return [{**item, "tag": t} for item, t in zip(out, tags)] if tags else out


def example_keys(model: RewardModel, tags: list[str]) -> list[list[str]]:
    return [[e.key for e in q.examples] for q in model.queries(PROMPTS, shots(), tags=tags)]


@pytest.fixture(scope="module")
def context_model(context_model_dir):
    return RewardModel.from_pretrained(context_model_dir)


def test_the_tag_changes_the_examples_and_the_reward(context_model):
    """What the served tests rely on: the tags choose other examples, and the reward moves with them."""
    assert example_keys(context_model, TAGS)[0] == ["colors-yes", "colors-no"]
    assert example_keys(context_model, OTHER_TAGS)[0] == ["counting-yes", "counting-no"]
    first = context_model.score(PROMPTS, shots(), tags=TAGS)
    second = context_model.score(PROMPTS, shots(), tags=OTHER_TAGS)
    assert (first - second).abs().min() > 1e-3
    assert all(isinstance(r, str) and r for r in context_model.last_rationales)


def _api(folder) -> RewardAPI:
    api = RewardAPI(folder)
    grad = torch.is_grad_enabled()
    try:
        api.setup("cpu")  # what the LitServe worker runs; it turns gradients off for its process
    finally:
        torch.set_grad_enabled(grad)
    return api


def test_the_api_returns_rationales_and_passes_tags_and_keys(context_model_dir, context_model):
    """RewardAPI as the worker runs it (no HTTP): /score items and /best_of_n candidates, in-process, fast."""
    api = _api(context_model_dir)
    keyed = [{**item, "key": "colors-yes"} for item in items(TAGS)]
    answer, unkeyed = api.predict([api.decode_request({"items": keyed}), api.decode_request({"items": items(TAGS)})])
    expected = context_model.score(PROMPTS, shots(), tags=TAGS, keys=["colors-yes"] * 3)
    torch.testing.assert_close(torch.tensor(answer["rewards"]), expected, atol=1e-5, rtol=1e-4)
    assert answer["rationales"] == context_model.last_rationales and answer["errors"] == [None] * 3
    # The key keeps the item's own pool sample out of its context, so it is not ignored: other rewards.
    (query,) = context_model.queries(PROMPTS[:1], shots()[:1], tags=TAGS[:1], keys=["colors-yes"])
    assert "colors-yes" not in [e.key for e in query.examples]
    assert abs(answer["rewards"][0] - unkeyed["rewards"][0]) > 1e-4


def test_best_of_n_returns_each_candidates_rationale(tmp_path):
    folder = context_export(tmp_path / "pairwise", paradigm="pairwise")
    model = RewardModel.from_pretrained(folder)
    api = _api(folder)
    reference, candidates = Image.new("RGB", (64, 64), "gray"), shots()
    body = {
        "prompt": "a red circle",
        "reference": encode_image(reference),
        "candidates": [encode_image(c) for c in candidates] + ["not-base64!"],
        "tag": "counting",
    }
    (answer,) = api.predict([api.decode_request(body)])
    expected = model.score(["a red circle"] * 3, candidates, [reference] * 3, tags=["counting"] * 3)
    torch.testing.assert_close(torch.tensor(answer["rewards"][:3]), expected, atol=1e-5, rtol=1e-4)
    assert answer["rationales"][:3] == model.last_rationales and all(answer["rationales"][:3])
    assert answer["rewards"][3] is None and answer["rationales"][3] is None and "base64" in answer["errors"][3]
    untagged = model.score(["a red circle"] * 3, candidates, [reference] * 3, tags=["colors"] * 3)
    assert (expected - untagged).abs().min() > 1e-3  # the tag was used, not dropped


def test_a_malformed_rationales_field_is_refused():
    chunk = [{"prompt": "p"}, {"prompt": "q"}]
    assert checked_rationales({"rewards": [0.1, 0.2]}, chunk, "http://x") == [None, None]  # a server without them
    assert checked_rationales({"rationales": ["a", None]}, chunk, "http://x") == ["a", None]
    for bad in (["a"], "ab", [1, 2]):
        with pytest.raises(RemoteRewardError, match="one string or null per item"):
            checked_rationales({"rationales": bad}, chunk, "http://x")


def _post(url: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())


@pytest.mark.slow  # starts its own server: ~15 s of one core
def test_served_rationales_and_tags_equal_in_process_score(context_server, context_model):
    url = context_server.url
    for tags in (TAGS, OTHER_TAGS):
        answer = _post(url, "/score", {"items": items(tags)})
        expected = context_model.score(PROMPTS, shots(), tags=tags)
        torch.testing.assert_close(torch.tensor(answer["rewards"]), expected, atol=1e-5, rtol=1e-4)
        assert answer["rationales"] == context_model.last_rationales and all(answer["rationales"])
    # RemoteReward sends each prompt's GenEval tag and keeps the rationales, as RewardModelReward does.
    reward = RemoteReward(url, chunk_size=2)
    reward.setup()
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    rewards = reward(images, PROMPTS, [{"tag": t} for t in TAGS])
    expected = context_model.score(PROMPTS, to_pil_images(images), tags=TAGS)
    torch.testing.assert_close(rewards, expected, atol=1e-5, rtol=1e-4)
    assert reward.last_rationales == context_model.last_rationales and len(reward.last_rationales) == 3
