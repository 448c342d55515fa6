"""Best-of-N scoring that encodes the shared prefix (instruction + reference) once."""

import pytest
import torch
from PIL import Image

from rewarddance.models import load_backbone
from rewarddance.models.scoring import rewards_with_shared_prefix, shared_prefix_length, yes_probability

FAMILIES = ["qwen2-vl", "qwen2.5-vl", "qwen3-vl", "internvl"]
PROMPT = "Prompt: a red circle. Image 1: <image> Image 2: <image> Is image 2 better than image 1?"


def _inputs(backbone, n=5):
    reference = Image.new("RGB", (64, 64), "red")
    candidates = [Image.effect_noise((64, 64), 30 + 7 * i).convert("RGB") for i in range(n)]
    return backbone.encode([PROMPT] * n, [[reference, c] for c in candidates])


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prefix_rewards_equal_full_forward(family):
    backbone = load_backbone(f"tiny-{family}")
    model = backbone.model.eval()
    inputs = _inputs(backbone)
    with torch.no_grad():
        full = yes_probability(model, inputs, backbone.yes_token_id, backbone.no_token_id)
        shared = rewards_with_shared_prefix(
            model, inputs, backbone.yes_token_id, backbone.no_token_id, backbone.image_token_id
        )
    assert full.shape == shared.shape == (5,)
    assert torch.allclose(full, shared, atol=1e-6)
    assert full.std() > 0  # the candidates really differ, so equality is not trivial


def test_rows_that_do_not_share_a_prefix_are_refused():
    backbone = load_backbone("tiny-qwen2-vl")
    red, blue = Image.new("RGB", (64, 64), "red"), Image.new("RGB", (64, 64), "blue")
    inputs = backbone.encode([PROMPT, PROMPT.replace("red", "big")], [[red, blue], [red, blue]])
    with pytest.raises(ValueError):
        shared_prefix_length(inputs["input_ids"], backbone.image_token_id, 1)
