"""Lightning callbacks every task attaches (``configure_callbacks``)."""

from rewarddance.callbacks.nonfinite import NonFiniteError, NonFiniteGuard, check_finite, gradient_norms, task_callbacks

__all__ = ["NonFiniteError", "NonFiniteGuard", "check_finite", "gradient_norms", "task_callbacks"]
