"""Registers the shapes world with the generic registries: the ``rewarddance.plugins`` entry point.

Generic code never imports :mod:`rewarddance.shapes`; it finds what the world offers by name, through
:mod:`rewarddance.registry`, which runs this function the first time a registry misses a name.
"""

from __future__ import annotations


def register() -> None:
    """Add the shapes rewards (``shapes-color``, ``shapes-oracle``)."""
    from rewarddance.rl.rewards import register_reward
    from rewarddance.shapes.rewards import ShapesColorReward, ShapesOracleReward

    register_reward("shapes-color", ShapesColorReward)
    register_reward("shapes-oracle", ShapesOracleReward)
