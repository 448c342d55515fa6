"""Lightning callbacks every task attaches (``configure_callbacks``), and what tasks run around training.

- :mod:`.nonfinite`: the non-finite guard every task attaches;
- :mod:`.evaluation`: the evaluator seam (judging samples against their prompts' metadata, GenEval-style);
- :mod:`.rl_evaluation`: the fixed-prompt evaluation of RL runs and its reward-hacking check;
- :mod:`.rl_curves`: the RL curves plot;
- :mod:`.averaging`: weight averaging over the tail of the step budget (the quickstart's end point).
"""

from rewarddance.callbacks.averaging import TailAveraging
from rewarddance.callbacks.nonfinite import NonFiniteError, NonFiniteGuard, check_finite, gradient_norms, task_callbacks

__all__ = ["NonFiniteError", "NonFiniteGuard", "TailAveraging", "check_finite", "gradient_norms", "task_callbacks"]
