"""The judge: a query (instruction, prompt, reference, candidate) becomes P("yes"), its losses, its export.

Importing the package registers the ``reward_model`` RL reward (:mod:`rewarddance.judge.reward`).
"""

from rewarddance.judge import reward  # noqa: F401 - registers the "reward_model" reward
