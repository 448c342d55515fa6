"""Constants shared by the RL tests."""

PROMPTS = ["a red circle", "two blue squares"]
"""Two prompts of different lengths (T5/CLIP padding differs per prompt)."""

SIDE = 32
"""Image side in pixels for the tiny generators."""
