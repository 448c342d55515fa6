"""Inference-time scaling: plain sampling, best-of-N by a verifier, and search over denoising paths.

- :mod:`~rewarddance.inference.generation`: :func:`generate`, one prompt's images by any of the three modes, with
  the denoiser evaluations spent (``nfe``), so quality can be plotted against compute.
- :mod:`~rewarddance.inference.verifier`: the :class:`Verifier` (a reward model, pairwise ones in a round robin, or
  any registered reward).
- :mod:`~rewarddance.inference.search`: search over paths, generic over ``denoise``/``renoise`` callables.
"""

from rewarddance.inference.generation import MODES, Generation, Mode, generate
from rewarddance.inference.search import PathSearchResult, search_over_paths
from rewarddance.inference.verifier import Verifier

__all__ = ["MODES", "Generation", "Mode", "PathSearchResult", "Verifier", "generate", "search_over_paths"]
