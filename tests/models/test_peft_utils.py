"""LoRA on the language model only, freezing, gradient checkpointing, and a training sanity step."""

from __future__ import annotations

import re

import pytest
import torch

from rewarddance.models import (
    BACKBONES,
    LoraSettings,
    last_token_logits,
    load_backbone,
    lora_module_names,
    prepare_for_training,
    trainable_parameter_count,
    yes_no_log_probs,
)
from rewarddance.models.lora import freeze_parameters, vision_parameter_patterns

FAMILIES = sorted(BACKBONES)
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _yes_no_loss(backbone, model, batch, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the yes/no answer (1 = yes) at the last position."""
    log_probs = yes_no_log_probs(last_token_logits(model, batch), backbone.yes_token_id, backbone.no_token_id)
    return -(targets * log_probs[:, 0] + (1 - targets) * log_probs[:, 1]).mean()


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_adapters_only_on_the_language_model(family: str) -> None:
    backbone = load_backbone(f"tiny-{family}")
    model = prepare_for_training(backbone.model, LoraSettings(r=4, alpha=8))
    names = lora_module_names(model)
    n_layers = backbone.tiny_size.num_layers
    assert len(names) == n_layers * len(PROJECTIONS)
    assert all(".language_model." in name for name in names)
    assert {name.rsplit(".", 1)[1] for name in names} == set(PROJECTIONS)

    vision, projector = vision_parameter_patterns(model)
    vision_modules = [n for n, _ in model.named_modules() if any(re.search(p, n + ".") for p in vision + projector)]
    assert vision_modules  # the patterns do find the vision tower ...
    assert not set(vision_modules) & set(names)  # ... and it got no adapter

    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


@pytest.mark.parametrize("family", FAMILIES)
def test_full_finetuning_step_lowers_the_loss_and_freezes_vision(family: str, prompts, visuals) -> None:
    backbone = load_backbone(f"tiny-{family}")
    model = prepare_for_training(backbone.model, freeze_vision=True)
    vision, projector = vision_parameter_patterns(model)
    params = dict(model.named_parameters())
    vision_names = [n for n in params if any(re.search(p, n) for p in vision)]
    assert vision_names and not any(params[n].requires_grad for n in vision_names)
    assert all(params[n].requires_grad for n in params if any(re.search(p, n) for p in projector))
    before = {n: params[n].detach().clone() for n in vision_names}

    model.train()
    batch = backbone.encode(prompts, visuals)
    targets = torch.tensor([1.0, 0.0])
    # lr measured to descend monotonically on every tiny family (3e-4 already oscillates on some).
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    losses = []
    for _ in range(3):
        loss = _yes_no_loss(backbone, model, batch, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses == sorted(losses, reverse=True) and losses[-1] < 0.95 * losses[0], losses
    assert all(torch.equal(params[n], before[n]) for n in vision_names)


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_with_gradient_checkpointing_trains(family: str, prompts, visuals) -> None:
    backbone = load_backbone(f"tiny-{family}")
    model = prepare_for_training(backbone.model, LoraSettings(r=4, alpha=8, dropout=0.0), gradient_checkpointing=True)
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    model.train()
    batch = backbone.encode(prompts, visuals)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(3):
        loss = _yes_no_loss(backbone, model, batch, torch.tensor([1.0, 0.0]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses == sorted(losses, reverse=True) and losses[-1] < 0.95 * losses[0], losses
    trainable, total = trainable_parameter_count(model)
    assert 0 < trainable < total / 5


def test_gradient_checkpointing_gives_the_same_gradients(prompts, visuals) -> None:
    grads = []
    for checkpointing in (False, True):
        backbone = load_backbone("tiny-qwen2-vl")
        model = prepare_for_training(backbone.model, gradient_checkpointing=checkpointing)
        model.train()
        _yes_no_loss(backbone, model, backbone.encode(prompts, visuals), torch.tensor([1.0, 0.0])).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5, msg=name)


def test_freeze_patterns_that_match_nothing_are_an_error() -> None:
    backbone = load_backbone("tiny-internvl")
    with pytest.raises(ValueError, match="matches"):
        freeze_parameters(backbone.model, [r"no_such_module\."])
