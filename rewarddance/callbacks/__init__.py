"""Lightning callbacks every task attaches (``configure_callbacks``), and what tasks run around training.

- :mod:`.nonfinite`: the non-finite guard every task attaches;
- :mod:`.evaluation`: the evaluator seam (judging samples against their prompts' metadata, GenEval-style);
- :mod:`.rl_evaluation`: the fixed-prompt evaluation of RL runs and its reward-hacking check;
- :mod:`.rl_curves`: the RL curves plot.
"""

from rewarddance.callbacks.nonfinite import NonFiniteError, NonFiniteGuard, check_finite, gradient_norms, task_callbacks

__all__ = ["NonFiniteError", "NonFiniteGuard", "check_finite", "gradient_norms", "task_callbacks"]
