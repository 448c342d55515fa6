"""Prompts and conversations to model inputs: placeholders, videos as frames, answer labels."""

from __future__ import annotations

import pytest
import torch

from rewarddance.models import BACKBONES, load_backbone, prompt_to_messages, sample_frames

FAMILIES = sorted(BACKBONES)


def test_sample_frames_takes_segment_middles() -> None:
    assert sample_frames(list(range(10)), 3) == [1, 5, 8]
    assert sample_frames(list(range(4)), 8) == [0, 1, 2, 3]
    assert sample_frames(list(range(16)), 4) == [2, 6, 10, 14]
    with pytest.raises(ValueError):
        sample_frames([0], 0)


def test_prompt_to_messages_checks_placeholders(shape_image) -> None:
    image = shape_image("red")
    messages = prompt_to_messages("<image> is it <video>?", [image, [image, image]])
    assert [item["type"] for item in messages[0]["content"]] == ["image", "text", "video", "text"]
    with pytest.raises(ValueError, match="placeholders"):
        prompt_to_messages("<image> <image>", [image])
    with pytest.raises(ValueError, match="placeholders"):
        prompt_to_messages("no placeholder", [image])
    with pytest.raises(ValueError, match="list of frames"):
        prompt_to_messages("<image>", [[image]])


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_and_conversation_give_the_same_inputs(family: str, prompts, visuals) -> None:
    backbone = load_backbone(f"tiny-{family}")
    conversations = [prompt_to_messages(p, v) for p, v in zip(prompts, visuals)]
    from_prompts = backbone.encode(prompts, visuals)
    from_conversations = backbone.encode(conversations, visuals)
    for key in from_prompts:
        assert torch.equal(from_prompts[key], from_conversations[key]), key
    text = backbone.tokenizer.decode(from_prompts["input_ids"][0], skip_special_tokens=False)
    assert text.rstrip().endswith("assistant")  # ends at the generation prompt: the answer position


@pytest.mark.parametrize("family", FAMILIES)
def test_video_frames_go_through_the_image_path(family: str, shape_image) -> None:
    backbone = load_backbone(f"tiny-{family}")
    clip = [shape_image(c) for c in ("red", "orange", "yellow", "green", "blue", "purple")]
    frames = sample_frames(clip, 3)
    as_video = backbone.encode(["<video> Is the motion smooth?"], [[frames]])
    as_images = backbone.encode(["<image><image><image> Is the motion smooth?"], [frames])
    for key in as_video:
        assert torch.equal(as_video[key], as_images[key]), key
    assert (as_video["input_ids"] == backbone.image_token_id).sum() == 3 * 16
    with torch.no_grad():
        assert backbone.reward(as_video).shape == (1,)


@pytest.mark.parametrize("family", FAMILIES)
def test_answers_become_labels_at_the_end(family: str, prompts, visuals) -> None:
    backbone = load_backbone(f"tiny-{family}")
    answers = ["yes", "no. The square is red, not blue"]
    batch = backbone.encode(prompts, visuals, answers=answers)
    eos = backbone.tokenizer.eos_token
    for row, answer in zip(batch["labels"], answers):
        kept = row[row != -100]
        assert backbone.tokenizer.decode(kept) == answer + eos
        assert (row[-len(kept) :] != -100).all()  # the answer is the tail of the left-padded row
    first = batch["labels"][0][batch["labels"][0] != -100][0]
    assert first == backbone.yes_token_id

    # The prompt part is the same as without answers: the reward position stays comparable.
    prompt_only = backbone.encode(prompts[:1], visuals[:1])
    n = prompt_only["input_ids"].shape[1]
    with_answer = backbone.encode(prompts[:1], visuals[:1], answers=["yes"])
    assert torch.equal(with_answer["input_ids"][0, :n], prompt_only["input_ids"][0])


def test_max_length_and_padding_side_are_checked(prompts, visuals) -> None:
    backbone = load_backbone("tiny-qwen2-vl")
    with pytest.raises(ValueError, match="max_length"):
        backbone.encode(prompts, visuals, max_length=10)
    backbone.tokenizer.padding_side = "right"
    with pytest.raises(ValueError, match="left padding"):
        backbone.encode(prompts, visuals)


@pytest.mark.parametrize("family", FAMILIES)
def test_text_only_samples_mix_with_image_samples(family: str, shape_image) -> None:
    backbone = load_backbone(f"tiny-{family}")
    alone = backbone.encode(["Is a circle round?"], [[]])
    mixed = backbone.encode(["Is a circle round?", "<image> Is this circle red?"], [[], [shape_image("red")]])
    with torch.no_grad():
        torch.testing.assert_close(backbone.reward(alone)[0], backbone.reward(mixed)[0], atol=1e-5, rtol=0)
