"""Measuring a real training step of a tiny backbone on CPU, to check the estimate against it.

:class:`LiveTensorBytes` follows every tensor storage from creation to release, so the peak it keeps
is the device-independent equivalent of ``torch.cuda.max_memory_allocated``;
:func:`measure_training_peak` runs a training step under it and :func:`validate` puts the estimate
(:func:`rewarddance.planning.estimates.estimate_memory`) next to the measurement.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from rewarddance.models.backbones import load_backbone
from rewarddance.models.lora import LoraSettings, prepare_for_training
from rewarddance.planning.estimates import Attention, LogitsMode, MemoryPlan, Precision, estimate_memory

VALIDATION_TOLERANCE = 0.30
"""Relative error within which the estimate must match a measured peak (tests enforce it)."""

# --------------------------------------------------------------------------------------------
# Measuring a real step on CPU (validation)
# --------------------------------------------------------------------------------------------


class LiveTensorBytes(TorchDispatchMode):
    """Follows every tensor storage created under it until it is freed; keeps the peak of the sum.

    A storage is counted once however many views share it, from the op that creates it to the
    release of its last reference (a weakref finalizer), which is what the CUDA caching
    allocator's ``memory_allocated`` counts, minus its 512-byte rounding. Storages that exist
    before (parameters, optimizer state, inputs) are added with :meth:`add_existing`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._seen: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def add_existing(self, tensors: Any) -> int:
        """Count tensors allocated before the mode started; returns the bytes newly counted."""
        before = self.current
        for t in tree_flatten(tensors)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t)
        return self.current - before

    def _release(self, nbytes: int) -> None:
        self.current -= nbytes

    def _track(self, t: torch.Tensor) -> None:
        if t.device.type == "meta":
            return
        storage = t.untyped_storage()
        if storage in self._seen:
            return
        nbytes = storage.nbytes()
        self._seen[storage] = nbytes
        weakref.finalize(storage, self._release, nbytes)
        self.current += nbytes
        self.peak = max(self.peak, self.current)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out


@dataclass
class Measurement:
    """Peak tensor memory of one measured training step.

    Attributes:
        peak: Highest live tensor bytes during forward + backward + AdamW step + zero_grad.
        parameters: Parameter bytes (live throughout).
        optimizer: AdamW state bytes (live throughout).
        inputs: Batch tensor bytes (live throughout).
        seq_len: LM tokens per sample.
        image_tokens: LM tokens per image, as the processor produced them (markers included).
        text_tokens: ``seq_len - images * image_tokens``.
    """

    peak: int
    parameters: int
    optimizer: int
    inputs: int
    seq_len: int
    image_tokens: int
    text_tokens: int

    @property
    def step_peak(self) -> int:
        """Peak of what the step allocates (activations, gradients, temporaries)."""
        return self.peak - self.parameters - self.optimizer - self.inputs


def measure_training_peak(
    backbone: str = "tiny-qwen2.5-vl",
    *,
    size: str | None = "small",
    micro_batch_size: int = 4,
    words: int = 100,
    images: int = 2,
    precision: Precision = "bf16-mixed",
    lora_rank: int | None = None,
    activation_checkpointing: bool = False,
    freeze_vision: bool = False,
    logits: LogitsMode = "answer",
    attention: Attention = "sdpa",
    seed: int = 0,
    **tiny_overrides: Any,
) -> Measurement:
    """Run two training steps of a tiny backbone on CPU and measure the second one's peak.

    The first step allocates AdamW's state; the second runs under a dispatch mode that follows
    every tensor storage from creation to release (:class:`LiveTensorBytes`), so the peak is the
    device-independent equivalent of ``torch.cuda.max_memory_allocated``. Samples are identical,
    so the batch has no padding.

    Args:
        backbone: A tiny backbone name.
        size: Tiny preset.
        micro_batch_size: Samples.
        words: Filler words in the prompt (sets the text length).
        images: Images per sample.
        precision: ``bf16-mixed`` runs under CPU autocast with fp32 weights (what DDP does);
            ``bf16-true`` casts the model to bf16; ``32-true`` runs in fp32.
        lora_rank: LoRA rank (rewarddance's default LoraSettings otherwise), or None.
        activation_checkpointing: Enable transformers' non-reentrant gradient checkpointing.
        freeze_vision: Freeze the vision tower.
        logits: ``answer`` (last position, yes/no cross-entropy) or ``full`` (LM loss on every token).
        attention: Attention implementation.
        seed: Weight seed.
        **tiny_overrides: TinySize fields.

    Returns:
        The :class:`Measurement`.
    """
    bb = load_backbone(backbone, size=size, attn_implementation=attention, seed=seed, **tiny_overrides)
    lora = LoraSettings(r=lora_rank) if lora_rank is not None else None
    model = prepare_for_training(
        bb.model, lora, freeze_vision=freeze_vision, gradient_checkpointing=activation_checkpointing
    )
    if precision == "bf16-true":
        model = model.to(torch.bfloat16)
    model.train()
    tiny = bb.tiny_size
    side = tiny.image_size if tiny is not None else 448
    image = Image.new("RGB", (side, side), (200, 40, 40))
    prompt = " ".join(["<image>"] * images + ["word"] * words + ["Is the second image better?"])
    inputs = bb.encode([prompt] * micro_batch_size, [[image] * images] * micro_batch_size)
    per_image = bb.image_tokens(side, side) + (0 if bb.family == "internvl" else 2)
    seq_len = int(inputs["input_ids"].shape[1])
    tensors = {k: v for k, v in inputs.items() if torch.is_tensor(v)}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, foreach=False)
    target = torch.full((micro_batch_size,), bb.yes_token_id)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            if logits == "full":
                loss = model(**tensors, labels=tensors["input_ids"], use_cache=False).loss
            else:
                out = model(**tensors, logits_to_keep=1, use_cache=False)
                loss = nn.functional.cross_entropy(out.logits[:, -1].float(), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    tracker = LiveTensorBytes()
    parameters = tracker.add_existing(list(model.parameters()))
    optimizer_bytes = tracker.add_existing(list(optimizer.state.values()))
    input_bytes = tracker.add_existing(list(tensors.values()))
    with tracker:
        step()
    return Measurement(
        peak=tracker.peak,
        parameters=parameters,
        optimizer=optimizer_bytes,
        inputs=input_bytes,
        seq_len=seq_len,
        image_tokens=per_image,
        text_tokens=seq_len - images * per_image,
    )


@dataclass
class Validation:
    """An estimate next to a measurement of the same setting.

    Attributes:
        label: Setting.
        estimate: Estimated bytes (no headroom).
        measured: Measured peak bytes.
        plan: The estimate.
        measurement: The measurement.
    """

    label: str
    estimate: float
    measured: int
    plan: MemoryPlan
    measurement: Measurement

    @property
    def error(self) -> float:
        """``estimate / measured - 1`` (positive: the estimate is conservative)."""
        return self.estimate / self.measured - 1


VALIDATION_SETTINGS: list[dict[str, Any]] = [
    {"backbone": "tiny-qwen2.5-vl", "precision": "bf16-mixed"},
    {"backbone": "tiny-qwen2.5-vl", "precision": "bf16-mixed", "activation_checkpointing": True},
    {"backbone": "tiny-internvl", "precision": "bf16-mixed"},
    {"backbone": "tiny-internvl", "precision": "bf16-mixed", "activation_checkpointing": True},
    {"backbone": "tiny-qwen3-vl", "precision": "bf16-true"},
    {"backbone": "tiny-qwen3-vl", "precision": "bf16-true", "activation_checkpointing": True},
]
"""The tiny settings the tests validate (``small`` preset, 4 samples of ~250 tokens with 2 images)."""


def validate(
    settings: Mapping[str, Any], *, micro_batch_size: int = 4, words: int = 100, images: int = 2
) -> Validation:
    """Measure one tiny setting and estimate it (single GPU, no DDP buckets) for comparison.

    Args:
        settings: :func:`measure_training_peak` keyword arguments (``backbone``, ``precision``, ...).
        micro_batch_size: Samples.
        words: Prompt filler words.
        images: Images per sample.

    Returns:
        The :class:`Validation`.
    """
    settings = dict(settings)
    size = settings.pop("size", "small")
    measured = measure_training_peak(
        size=size, micro_batch_size=micro_batch_size, words=words, images=images, **settings
    )
    backbone = settings.pop("backbone")
    plan = estimate_memory(
        backbone,
        size=size,
        strategy="ddp",
        gpus=1,
        nodes=1,
        micro_batch_size=micro_batch_size,
        text_tokens=measured.text_tokens,
        images=images,
        kernels="cpu",
        **settings,
    )
    if plan.seq_len != measured.seq_len:
        raise AssertionError(f"image-token formula disagrees with the processor: {plan.seq_len} vs {measured.seq_len}")
    label = ", ".join([backbone, *(f"{k}={v}" for k, v in settings.items())])
    return Validation(label=label, estimate=plan.total, measured=measured.peak, plan=plan, measurement=measured)
