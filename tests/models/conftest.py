"""Shared inputs for the backbone tests: a fixed two-sample batch of shapes images."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from PIL import Image, ImageDraw


def _shape_image(colour: str, size: tuple[int, int] = (64, 64), shape: str = "circle") -> Image.Image:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    box = (size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=colour)
    return image


@pytest.fixture
def shape_image() -> Callable[..., Image.Image]:
    """Factory of white images with one coloured shape, like the shapes world."""
    return _shape_image


@pytest.fixture
def prompts() -> list[str]:
    """Two prompts; the first is shorter, so it is left-padded in a batch."""
    return [
        "<image> Does the image match the prompt: a red circle? Please answer yes or no.",
        '<image> <image> Please evaluate two images generated from the prompt: "a blue square". '
        'Is image 2 better than image 1? Please answer "yes" or "no".',
    ]


@pytest.fixture
def visuals() -> list[list[Image.Image]]:
    """Images matching :func:`prompts`; one is not square (exercises resizing)."""
    return [[_shape_image("red")], [_shape_image("blue", shape="square"), _shape_image("green", size=(80, 48))]]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # tests/conftest.py sets this too; repeated so this folder also runs fast alone: torch's default
    # of one thread per core oversubscribes the cores when several test processes share a machine.
    torch.set_num_threads(1)
