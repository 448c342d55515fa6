"""rewarddance: generative reward models for visual generation, and RL against them."""

__version__ = "0.1.0"
