"""Shared fixtures for the RL math tests: one thread, and tiny generators built once per session."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from rewarddance.models.generators import Generator, load_generator


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # tests/conftest.py sets this too; repeated so this folder also runs fast alone (see tests/models/conftest.py).
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny() -> Callable[[str], Generator]:
    """``tiny("sd3")``: the tiny generator of a family, built on first use (~0.05 s) and shared.

    Sharing is safe: the adapters replay ``scheduler.set_timesteps`` before every run. Tests that replace a
    scheduler or change weights load their own generator.
    """
    cache: dict[str, Generator] = {}

    def get(family: str) -> Generator:
        if family not in cache:
            cache[family] = load_generator(f"tiny-{family}")
        return cache[family]

    return get
