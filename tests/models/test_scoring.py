"""Reading the reward P("yes"): hand-worked numbers, logits_to_keep=1, left padding."""

from __future__ import annotations

import math

import pytest
import torch

from rewarddance.models import BACKBONES, last_token_logits, load_backbone, yes_no_log_probs, yes_probability

FAMILIES = sorted(BACKBONES)


def test_yes_no_log_probs_by_hand() -> None:
    # vocab of 4: yes = id 1 with logit 2, no = id 3 with logit 0, two others at 0 and ln 2.
    logits = torch.tensor([[0.0, 2.0, math.log(2.0), 0.0]])
    pair = yes_no_log_probs(logits, yes_token_id=1, no_token_id=3)
    # softmax over {yes, no}: e^2 / (e^2 + 1) = sigmoid(2)
    assert pair.exp()[0, 0].item() == pytest.approx(1 / (1 + math.exp(-2)), abs=1e-6)
    assert pair.exp().sum().item() == pytest.approx(1.0, abs=1e-6)
    vocab = yes_no_log_probs(logits, 1, 3, normalization="vocab")
    z = 1 + math.exp(2) + 2 + 1
    assert vocab.exp()[0].tolist() == pytest.approx([math.exp(2) / z, 1 / z], abs=1e-6)
    with pytest.raises(ValueError, match="normalization"):
        yes_no_log_probs(logits, 1, 3, normalization="softmax")  # type: ignore[arg-type]


def test_yes_no_log_probs_are_float32_for_bf16_logits() -> None:
    logits = torch.randn(3, 10).to(torch.bfloat16)
    assert yes_no_log_probs(logits, 0, 1).dtype == torch.float32


@pytest.mark.parametrize("family", FAMILIES)
def test_last_position_only_equals_full_logits_and_padding_is_harmless(family: str, prompts, visuals) -> None:
    backbone = load_backbone(f"tiny-{family}")
    batch = backbone.encode(prompts, visuals)
    with torch.no_grad():
        full = backbone.model(**batch).logits
        last = last_token_logits(backbone.model, batch)
        torch.testing.assert_close(last, full[:, -1], atol=1e-5, rtol=0)

        # Sample 0 is left-padded in the batch; alone it has no padding at all.
        for i, (prompt, sample_visuals) in enumerate(zip(prompts, visuals)):
            single = backbone.encode([prompt], [sample_visuals])
            assert single["attention_mask"].all()
            torch.testing.assert_close(last_token_logits(backbone.model, single)[0], last[i], atol=1e-5, rtol=0)

        reward = yes_probability(backbone.model, batch, backbone.yes_token_id, backbone.no_token_id)
        reward_vocab = backbone.reward(batch, normalization="vocab")
    torch.testing.assert_close(reward, backbone.reward(batch))
    # The vocabulary softmax shares its numerator with the two-way one and has a larger denominator.
    assert (reward_vocab <= reward).all()


def test_reward_is_differentiable(prompts, visuals) -> None:
    backbone = load_backbone("tiny-qwen2-vl")
    reward = backbone.reward(backbone.encode(prompts, visuals))
    reward.sum().backward()
    assert backbone.model.lm_head.weight.grad is not None
