"""Per-GPU memory planning for reward-model training, from the architecture config alone.

- :mod:`~rewarddance.planning.architectures`: a backbone's shapes and exact parameter counts, read on the
  ``meta`` device (:func:`describe_backbone`); configs of the paper's sizes (:data:`KNOWN_CONFIGS`).
- :mod:`~rewarddance.planning.estimates`: the estimate (:func:`estimate_memory`), its formulas, and the
  tables of ``docs/memory.md`` (:func:`grid_table`).
- :mod:`~rewarddance.planning.measure`: a measured training step of a tiny model on CPU
  (:func:`measure_training_peak`) and the comparison with the estimate (:func:`validate`).

``python -m rewarddance plan`` is the command line over this package.
"""

from rewarddance.planning.architectures import (
    KNOWN_CONFIGS,
    PAPER_SIZES,
    Architecture,
    TextArch,
    VisionArch,
    describe_backbone,
)
from rewarddance.planning.estimates import (
    DEFAULT_HEADROOM,
    DEFAULT_RESERVED_GIB,
    GIB,
    GRID,
    Attention,
    LogitsMode,
    MemoryPlan,
    Precision,
    PrecisionBytes,
    Strategy,
    estimate_memory,
    format_plan,
    grid_table,
    lm_layer_activation_bytes,
    paper_backbones,
    precision_bytes,
    vision_layer_activation_bytes,
)
from rewarddance.planning.measure import (
    VALIDATION_SETTINGS,
    VALIDATION_TOLERANCE,
    LiveTensorBytes,
    Measurement,
    Validation,
    measure_training_peak,
    validate,
)

__all__ = [
    "DEFAULT_HEADROOM",
    "DEFAULT_RESERVED_GIB",
    "GIB",
    "GRID",
    "KNOWN_CONFIGS",
    "PAPER_SIZES",
    "VALIDATION_SETTINGS",
    "VALIDATION_TOLERANCE",
    "Architecture",
    "Attention",
    "LiveTensorBytes",
    "LogitsMode",
    "Measurement",
    "MemoryPlan",
    "Precision",
    "PrecisionBytes",
    "Strategy",
    "TextArch",
    "Validation",
    "VisionArch",
    "describe_backbone",
    "estimate_memory",
    "format_plan",
    "grid_table",
    "lm_layer_activation_bytes",
    "measure_training_peak",
    "paper_backbones",
    "precision_bytes",
    "validate",
    "vision_layer_activation_bytes",
]
