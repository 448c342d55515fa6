"""RemoteReward and OpenAIReward: the same rewards as in-process, in order, and a clear stop when a server fails."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from rewarddance.errors import RewardDanceError
from rewarddance.models.pixels import to_pil_images
from rewarddance.rl.rewards import build_reward
from rewarddance.serving import OpenAIReward, RemoteReward, RemoteRewardError
from rewarddance.serving.process import free_port

from .fake_servers import http_server, openai_judge

PROMPTS = ["a red circle", "two blue squares", "a green triangle", "a white star", "a black cross", "a red circle"]


def batch(n: int = 6, size: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=generator)


def test_remote_reward_equals_in_process_score_in_order(servers, models):
    reward = build_reward({"kind": "remote", "url": servers["pointwise"].url, "chunk_size": 2, "max_concurrent": 3})
    assert isinstance(reward, RemoteReward) and not reward.differentiable
    reward.setup()
    images = batch()
    rewards = reward(images, PROMPTS, [{}] * len(PROMPTS))
    expected = models["pointwise"].score(PROMPTS, to_pil_images(images))
    torch.testing.assert_close(rewards, expected, atol=1e-5, rtol=1e-4)
    assert reward.log_values()["remote/requests"] == 3  # 6 images in chunks of 2


def test_submit_overlaps_the_callers_work(servers, models):
    reward = RemoteReward(servers["pointwise"].url)
    reward.setup()
    first, second = batch(seed=1), batch(seed=2)
    pending = reward.submit(first, PROMPTS, [{}] * 6)
    first.zero_()  # the caller reuses its tensor at once: the images were encoded at submit
    later = reward(second, PROMPTS, [{}] * 6)
    expected_first = models["pointwise"].score(PROMPTS, to_pil_images(batch(seed=1)))
    torch.testing.assert_close(pending.result(timeout=60), expected_first, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(later, models["pointwise"].score(PROMPTS, to_pil_images(second)), atol=1e-5, rtol=1e-4)


def test_remote_reward_with_the_api_key_from_the_environment(servers, monkeypatch):
    from .conftest import API_KEY

    reward = RemoteReward(servers["pairwise"].url, retries=0)
    with pytest.raises(RemoteRewardError, match="401"):
        reward.setup()  # no key: refused, not retried
    monkeypatch.setenv("REWARDDANCE_API_KEY", API_KEY)
    reward = RemoteReward(servers["pairwise"].url, retries=0)
    with pytest.raises(ValueError, match="pairwise model: it needs a sampler"):
        reward.setup()  # reached the server, which said it is pairwise


def test_a_server_that_stays_down_is_a_clear_error_not_a_zero():
    reward = RemoteReward(f"http://127.0.0.1:{free_port()}", retries=2, backoff=0.05, timeout=2)
    started = time.monotonic()
    with pytest.raises(RewardDanceError, match=r"did not answer after 3 attempts"):
        reward.setup()
    reward.pairwise = False  # as if setup had succeeded before the server went down
    with pytest.raises(RemoteRewardError, match="Is the reward server running"):
        reward(batch(2), PROMPTS[:2], [{}, {}])
    assert time.monotonic() - started < 10  # bounded: 2 x (0.05 + 0.1) s of backoff


def test_wrong_counts_and_nulls_are_refused_and_503_is_retried():
    calls = {"score": 0}
    lock = threading.Lock()

    def handle(path, body):
        if path == "/info":
            return 200, {"model": {"kind": "generative", "paradigm": "pointwise"}}
        with lock:
            calls["score"] += 1
            n = calls["score"]
        items = body["items"]
        if items[0]["prompt"] == "short":
            return 200, {"rewards": [0.5] * (len(items) - 1), "errors": [None] * (len(items) - 1)}
        if items[0]["prompt"] == "null":
            return 200, {"rewards": [0.5, None], "errors": [None, "image: broken"]}
        if n % 2:  # every other call: the server is restarting
            return 503, {"detail": "not ready"}
        return 200, {"rewards": [float(i) for i in range(len(items))], "errors": [None] * len(items)}

    with http_server(handle) as url:
        reward = RemoteReward(url, retries=3, backoff=0.01, chunk_size=8)
        reward.setup()
        with pytest.raises(RemoteRewardError, match="answered 1 rewards for 2 items"):
            reward(batch(2), ["short", "short"], [{}, {}])
        with pytest.raises(RemoteRewardError, match=r"no reward for item 1 .*image: broken"):
            reward(batch(2), ["null", "null"], [{}, {}])
        rewards = reward(batch(3), ["a", "b", "c"], [{}] * 3)
        assert rewards.tolist() == [0.0, 1.0, 2.0]
        assert reward.log_values()["remote/retries"] >= 1


def test_openai_reward_reads_p_yes_from_top_logprobs(models):
    model = models["pointwise"]
    question = "Judge this image. Prompt: {prompt}"
    with http_server(openai_judge(model, lambda text: text.removeprefix("Judge this image. Prompt: "))) as url:
        reward = build_reward({"kind": "openai", "url": url + "/v1", "model": "judge", "question": question})
        assert isinstance(reward, OpenAIReward) and not reward.differentiable
        images = batch(4)
        rewards = reward(images, PROMPTS[:4], [{}] * 4)
    # P(yes) / (P(yes) + P(no)) over the vocabulary's log-probs is the model's own yes/no normalisation.
    expected = model.score(PROMPTS[:4], to_pil_images(images))
    torch.testing.assert_close(rewards, expected, atol=1e-5, rtol=1e-4)


def test_openai_reward_without_the_answer_words_is_an_error():
    def handle(path, body):
        top = [{"token": "maybe", "logprob": -0.1}]
        return 200, {"choices": [{"logprobs": {"content": [{"token": "maybe", "top_logprobs": top}]}}]}

    with http_server(handle) as url:
        reward = OpenAIReward(url, "judge", retries=0)
        with pytest.raises(RemoteRewardError, match=r"image 0\).*neither 'yes' nor 'no'"):
            reward(batch(1), ["p"], [{}])


def test_pairwise_remote_reward_judges_each_image_against_its_prompts_references(servers, models, monkeypatch):
    from .conftest import API_KEY

    monkeypatch.setenv("REWARDDANCE_API_KEY", API_KEY)
    reward = build_reward({"kind": "remote", "url": servers["pairwise"].url, "best_of_n": 3, "top_k": 2})
    reward.setup(sampler=lambda prompt, n, seed: batch(n, seed=seed % 1000))
    assert reward.needs_references
    prompts = ["a red circle", "a white star", "a red circle"]
    reward.prepare(prompts, [{}] * 3)
    images = batch(3, seed=5)
    rewards = reward(images, prompts, [{}] * 3)
    model = models["pairwise"]
    candidates = to_pil_images(images)
    expected = []
    for prompt, candidate in zip(prompts, candidates):
        references = to_pil_images(reward.references(prompt).references)
        expected.append(model.score([prompt] * 2, [candidate] * 2, references).mean())
    torch.testing.assert_close(rewards, torch.stack(expected), atol=1e-5, rtol=1e-4)
    assert reward.log_values()["references/prompts"] == 2
