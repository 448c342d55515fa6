"""Training-time surgery on a backbone: LoRA on the language model, freezing, gradient checkpointing.

LoRA targets are a regex on the language model's projections. Plain names such as
``["q_proj", "up_proj"]`` would also hit the vision tower: Qwen2.5-VL's vision MLP uses
``gate_proj/up_proj/down_proj`` too (``model.visual.blocks.<i>.mlp.gate_proj`` in transformers'
``Qwen2_5_VLForConditionalGeneration``; ``tests/models/test_peft_utils.py`` checks that no vision
module gets an adapter). The reward is read from the LM head, and the paper
scales the VLM as a whole, so adapters go where next-token prediction happens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

LANGUAGE_MODEL_LORA_REGEX = (
    r".*\.(language_model|text_model)\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
)
"""Matches the attention and MLP projections of the language model of every supported family."""


class FreezeError(ValueError):
    """What to freeze could not be found: a pattern matches nothing, or a family has no known vision patterns."""


@dataclass
class LoraSettings:
    """LoRA hyperparameters.

    Attributes:
        r: Rank of the update.
        alpha: Scaling numerator (the update is scaled by alpha / r).
        dropout: Dropout on the LoRA input.
        target_modules: Regex (full match on module names) of the layers that get adapters.
            The default covers the language model only; see the module docstring.
        modules_to_save: Module names trained fully and saved with the adapter (e.g.
            ``["multi_modal_projector"]``).
        use_rslora: Scale by alpha / sqrt(r), which keeps updates comparable across ranks.
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str = LANGUAGE_MODEL_LORA_REGEX
    modules_to_save: list[str] = field(default_factory=list)
    use_rslora: bool = False

    def to_peft_config(self) -> LoraConfig:
        """Build the ``peft.LoraConfig``."""
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            modules_to_save=list(self.modules_to_save) or None,
            use_rslora=self.use_rslora,
            bias="none",
        )


def freeze_parameters(model: nn.Module, patterns: Sequence[str]) -> int:
    """Set ``requires_grad=False`` on parameters whose name matches any pattern (``re.search``).

    Args:
        model: Any module.
        patterns: Regexes on parameter names, as given by ``model.named_parameters()``.

    Returns:
        Number of parameters (elements) frozen.

    Raises:
        FreezeError: If the patterns match nothing: a silent no-op would leave a "frozen" tower training.
    """
    compiled = [re.compile(p) for p in patterns]
    frozen = 0
    for name, param in model.named_parameters():
        if any(c.search(name) for c in compiled):
            param.requires_grad_(False)
            frozen += param.numel()
    if patterns and frozen == 0:
        shown = ", ".join(f"'{p}'" for p in patterns)
        raise FreezeError(
            f"No parameter of {type(model).__name__} matches any of {shown} (regexes on parameter names)."
        )
    return frozen


def vision_parameter_patterns(model: nn.Module) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Parameter-name regexes of a model's vision encoder and projector, from its registry entry.

    Args:
        model: A VLM of a registered family (or a PEFT wrapper around one).

    Returns:
        ``(vision_patterns, projector_patterns)`` for :func:`freeze_parameters`; the projector is
        Qwen's merger or InternVL's ``multi_modal_projector``.

    Raises:
        FreezeError: If no registered family has the model's ``model_type``.
    """
    # Imported here: the registry imports the heavier processor and model modules.
    from rewarddance.models.backbones import BACKBONES

    model_type = unwrap_peft(model).config.model_type
    for spec in BACKBONES.values():
        if spec.model_type == model_type:
            return spec.vision_patterns, spec.projector_patterns
    raise FreezeError(f"No registered backbone family has model_type {model_type!r}.")


def prepare_for_training(
    model: nn.Module,
    lora: LoraSettings | None = None,
    *,
    freeze_vision: bool = False,
    freeze_projector: bool = False,
    gradient_checkpointing: bool = False,
    freeze_patterns: Sequence[str] = (),
) -> nn.Module:
    """Make a loaded VLM ready to train: freeze, checkpoint, add LoRA, in that order.

    LoRA freezes every non-adapter parameter itself, so the freeze options matter for full
    fine-tuning and for modules listed in ``LoraSettings.modules_to_save``.

    Args:
        model: An ``AutoModelForImageTextToText`` model of a registered family.
        lora: LoRA settings (adapters on the language model only), or None for full fine-tuning.
        freeze_vision: Freeze the vision encoder (the projector stays trainable).
        freeze_projector: Freeze the vision-to-language projector.
        gradient_checkpointing: Recompute activations in the backward pass (``use_reentrant=False``,
            which works with frozen embeddings and LoRA without ``enable_input_require_grads``).
        freeze_patterns: Further parameter-name regexes to freeze.

    Returns:
        The model, wrapped in a ``PeftModel`` when ``lora`` is given.
    """
    patterns = list(freeze_patterns)
    if freeze_vision or freeze_projector:
        vision, projector = vision_parameter_patterns(model)
        patterns += list(vision if freeze_vision else ()) + list(projector if freeze_projector else ())
    if patterns:
        freeze_parameters(model, patterns)
    if gradient_checkpointing:
        # Non-reentrant checkpointing needs no enable_input_require_grads for frozen inputs.
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name warns
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        # The KV cache is useless in training and conflicts with checkpointing.
        model.config.use_cache = False
    if lora is not None:
        model = get_peft_model(model, lora.to_peft_config())
    return model


def lora_module_names(model: nn.Module) -> list[str]:
    """Names of the modules that carry a LoRA adapter (for checks and logs).

    Args:
        model: A model, usually a ``PeftModel``.

    Returns:
        Names of modules having a ``lora_A`` sub-module.
    """
    return [name for name, module in model.named_modules() if hasattr(module, "lora_A") and len(module.lora_A) > 0]


def trainable_parameter_count(model: nn.Module) -> tuple[int, int]:
    """Return (trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The underlying transformers model of a ``PeftModel`` (or the model itself)."""
    return model.get_base_model() if isinstance(model, PeftModel) else model
