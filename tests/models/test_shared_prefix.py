"""Best-of-N scoring that encodes the shared prefix (instruction + reference) once."""

import pytest
import torch
from PIL import Image

from rewarddance.judge.readout import PrefixNotShared, rewards_with_shared_prefix, yes_probability
from rewarddance.models import load_backbone
from rewarddance.models.inputs import encode_images

FAMILIES = ["qwen2-vl", "qwen2.5-vl", "qwen3-vl", "internvl"]
PROMPT = "Prompt: a red circle. Image 1: <image> Image 2: <image> Is image 2 better than image 1?"
REFERENCE = Image.new("RGB", (64, 64), "red")


def _candidates(n=5, size=(64, 64)):
    return [Image.effect_noise(size, 30 + 7 * i).convert("RGB") for i in range(n)]


def _shared(backbone, prompt, candidates, candidate_images=1):
    """The shared-prefix path: the first question encoded whole, the other candidates' images alone."""
    frames = [[c] if isinstance(c, Image.Image) else c for c in candidates]
    pair = backbone.encode([prompt], [[REFERENCE, candidates[0]]])
    others = encode_images(backbone.processor, [f for c in frames[1:] for f in c])
    with torch.no_grad():
        return rewards_with_shared_prefix(
            backbone.model, pair, others, backbone.yes_token_id, backbone.no_token_id, backbone.image_token_id,
            candidate_images=candidate_images,
        )  # fmt: skip


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prefix_rewards_equal_full_forward(family):
    backbone = load_backbone(f"tiny-{family}")
    backbone.model.eval()
    candidates = _candidates()
    full_inputs = backbone.encode([PROMPT] * 5, [[REFERENCE, c] for c in candidates])
    with torch.no_grad():
        full = yes_probability(backbone.model, full_inputs, backbone.yes_token_id, backbone.no_token_id)
    shared = _shared(backbone, PROMPT, candidates)
    assert full.shape == shared.shape == (5,)
    assert torch.allclose(full, shared, atol=1e-6)
    assert full.std() > 0  # the candidates really differ, so equality is not trivial
    # The candidates' pixels, processed alone, are exactly those the processor makes for the full questions
    # (every image is processed on its own, with the processor's own image settings).
    alone = encode_images(backbone.processor, candidates)["pixel_values"]
    full_pixels = full_inputs["pixel_values"]
    per_image = full_pixels.shape[0] // 10  # 5 questions x (reference, candidate), all the same size
    candidate_pixels = full_pixels.view(5, 2 * per_image, *full_pixels.shape[1:])[:, per_image:]
    assert torch.equal(alone, candidate_pixels.reshape(alone.shape))


def test_video_candidates_share_the_reference():
    backbone = load_backbone("tiny-qwen2-vl")
    backbone.model.eval()
    prompt = PROMPT.replace("Image 2: <image>", "Video 2: <video>")
    videos = [_candidates(2), _candidates(2)[::-1], _candidates(3)[1:]]
    full_inputs = backbone.encode([prompt] * 3, [[REFERENCE, v] for v in videos])
    with torch.no_grad():
        full = yes_probability(backbone.model, full_inputs, backbone.yes_token_id, backbone.no_token_id)
    shared = _shared(backbone, prompt, videos, candidate_images=2)
    assert torch.allclose(full, shared, atol=1e-6)
    assert full.std() > 0


def test_candidates_of_another_size_are_refused():
    # A 128x64 image has 40 placeholder tokens, a 64x64 one 64: the sequences differ in length. (InternVL
    # resizes every image to its one tile, so there every size gives the same sequence.)
    backbone = load_backbone("tiny-qwen2-vl")
    with pytest.raises(PrefixNotShared, match="differ in size"):
        _shared(backbone, PROMPT, _candidates(2) + _candidates(1, size=(128, 64)))
