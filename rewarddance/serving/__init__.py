"""Serving reward models to RL that runs elsewhere, and rewards computed by servers.

- :mod:`rewarddance.serving.server`: ``python -m rewarddance serve``, an export behind HTTP on LitServe.
- :mod:`rewarddance.serving.protocol`: what the server accepts (request and image limits, per-item errors).
- :mod:`rewarddance.serving.client`: :class:`RemoteReward` (reward ``remote``), the client of that server.
- :mod:`rewarddance.serving.chat`: :class:`OpenAIReward` (reward ``openai``), a yes/no judge behind any
  OpenAI-compatible chat-completions endpoint (vLLM, SGLang).

:func:`register` adds ``remote``, ``openai`` and ``combined`` (:class:`rewarddance.rl.combined.CombinedReward`) to
:data:`rewarddance.rl.rewards.REWARDS`; the ``rewarddance.plugins`` entry point runs it the first time a reward
name is not found, so configs can name them without importing this package.
"""

from __future__ import annotations

from rewarddance.rl.combined import CombinedReward
from rewarddance.rl.rewards import register_reward
from rewarddance.serving.chat import OpenAIReward
from rewarddance.serving.client import RemoteReward, RemoteRewardError

__all__ = ["CombinedReward", "OpenAIReward", "RemoteReward", "RemoteRewardError", "register"]

REGISTERED = {"remote": RemoteReward, "openai": OpenAIReward, "combined": CombinedReward}


def register() -> None:
    """Register the ``remote``, ``openai`` and ``combined`` rewards (idempotent)."""
    for name, factory in REGISTERED.items():
        register_reward(name, factory, overwrite=True)
