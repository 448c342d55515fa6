"""rewarddance: generative reward models for visual generation, and RL against them."""

from rewarddance._noise import silence_known_noise

# Before anything imports diffusers or starts a fit: see rewarddance/_noise.py.
silence_known_noise()

__version__ = "0.1.0"
