"""What the memory estimate knows about a backbone, read from its config on the ``meta`` device.

:func:`describe_backbone` instantiates the real transformers class on the ``meta`` device (no memory
is allocated, nothing is downloaded), so parameter counts are exact, and summarises the shapes the
activation formulas need (:class:`Architecture`). The configs of the paper's reward-model sizes are
written into :data:`KNOWN_CONFIGS`, so they are described without the hub.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForImageTextToText
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from rewarddance.errors import UsageError
from rewarddance.models.backbones import BACKBONES, LOCAL_BACKBONES, TINY_PREFIX, BackboneSpec, checkpoint_for
from rewarddance.models.internvl_sizes import INTERNVL2_5_26B, INTERNVL_SIZES, PAPER_SIZE_LABELS, known_architectures
from rewarddance.models.lora import LANGUAGE_MODEL_LORA_REGEX
from rewarddance.models.tiny_backbones import TinySize, tiny_backbone_size

# --------------------------------------------------------------------------------------------
# Architecture data: the InternVL table of rewarddance.models.internvl_sizes (shared with the loader),
# so that planning needs no hub access.
# --------------------------------------------------------------------------------------------

KNOWN_CONFIGS: dict[str, dict[str, Any]] = {hub_id: dict(config) for hub_id, config in known_architectures().items()}
"""Architecture fields of hub checkpoints that :func:`describe_backbone` can plan offline (sources:
``rewarddance/models/internvl_sizes.py`` and ``docs/backbones.md``)."""

PAPER_SIZES: dict[str, str] = {label: INTERNVL_SIZES[label].hub_id for label in PAPER_SIZE_LABELS}
"""The paper's reward-model sizes (InternVL 1B..26B) -> the native checkpoints ``internvl --size`` loads
(26B: the nearest native one, InternVL3-38B-hf; see ``docs/backbones.md``)."""

PAPER_26B = INTERNVL2_5_26B.hub_id
"""The paper's own 26B (InternVL2.5-26B, remote code only), planned in transformers' native form."""


# --------------------------------------------------------------------------------------------
# Architecture summary
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextArch:
    """The language model's shape.

    Attributes:
        hidden_size: Width ``h``.
        num_layers: Decoder layers ``L``.
        num_heads: Query heads ``a``.
        num_kv_heads: Key/value heads ``g``.
        head_dim: Head width ``d``.
        intermediate_size: MLP width ``f``.
        vocab_size: ``V``.
        qk_norm: Per-head RMSNorm on q and k (Qwen3).
        mrope: Multimodal rotary positions (three position ids per token, Qwen-VL).
    """

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    qk_norm: bool
    mrope: bool


@dataclass(frozen=True)
class VisionArch:
    """The vision tower's shape and the ops its layers run.

    Attributes:
        style: ``"internvit"`` (separate q/k/v, CLS token, layer scale, 448 px tiles) or ``"qwen"``
            (fused qkv with 2D RoPE, native resolution, patch merger).
        hidden_size: Width.
        num_layers: Layers.
        num_heads: Attention heads.
        intermediate_size: MLP width.
        patch_size: Patch side in pixels.
        temporal_patch_size: Frames per patch (Qwen repeats a still image over it).
        merge_size: Side of the patch square merged into one LM token (2).
        tile_size: InternViT's tile side in pixels; None for Qwen.
        mlp: ``"swiglu"``, ``"gelu"`` or ``"quick_gelu"``.
        norm: ``"layer_norm"`` or ``"rms_norm"``.
        qk_norm: RMSNorm on q and k (InternViT-6B).
        layer_scale: Learned per-channel scales on both residual branches (InternViT).
        deepstack: Extra patch mergers feeding intermediate features to the LM (Qwen3-VL).
        residual_fp32_under_autocast: The residual stream stays fp32 under autocast (an fp32
            position-embedding add after the patch embedding), so norms read fp32 inputs.
    """

    style: Literal["internvit", "qwen"]
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    patch_size: int
    temporal_patch_size: int
    merge_size: int
    tile_size: int | None
    mlp: Literal["swiglu", "gelu", "quick_gelu"]
    norm: Literal["layer_norm", "rms_norm"]
    qk_norm: bool
    layer_scale: bool
    deepstack: int
    residual_fp32_under_autocast: bool


@dataclass(frozen=True)
class Architecture:
    """Everything the estimate needs about a backbone, read from its config and meta-device model.

    Attributes:
        name: What was described (tiny name, hub id, folder).
        family: Registry family (``internvl``, ``qwen2.5-vl``...).
        source: Where the config came from.
        text: Language-model shape.
        vision: Vision-tower shape.
        image_seq_length: InternVL's LM tokens per 448 px tile (None for Qwen).
        params_total: All parameters (tied weights once).
        params_vision: Vision-tower parameters.
        params_projector: Vision-to-language projector (Qwen merger, InternVL MLP) parameters.
        params_input_embedding: The token-embedding table.
        lm_layer_params: Parameters of the largest decoder layer.
        vision_layer_params: Parameters of the largest vision layer.
        root_params: Parameters outside every decoder/vision layer (embeddings, lm_head, norms,
            projector, patch embedding): FSDP's root unit.
        lm_matmul_params: Weights of all linear layers inside decoder layers.
        vision_matmul_params: Weights of all linear layers inside vision layers.
        lm_head_params: Weights the LM head multiplies with (the embedding table when tied).
        lora_fan: Sum of ``in + out`` features over the projections LoRA adapts by default
            (rewarddance.models.lora.LANGUAGE_MODEL_LORA_REGEX); LoRA rank r adds r * lora_fan.
        default_image_size: Image side used when none is given (a tiny model's own size, else 448).
    """

    name: str
    family: str
    source: str
    text: TextArch
    vision: VisionArch
    image_seq_length: int | None
    params_total: int
    params_vision: int
    params_projector: int
    params_input_embedding: int
    lm_layer_params: int
    vision_layer_params: int
    root_params: int
    lm_matmul_params: int
    vision_matmul_params: int
    lm_head_params: int
    lora_fan: int
    default_image_size: int = 448

    @property
    def params_language(self) -> int:
        """Language-model parameters (embeddings, decoder layers, norm, lm_head)."""
        return self.params_total - self.params_vision - self.params_projector

    def lora_params(self, rank: int) -> int:
        """Trainable parameters of rank-``rank`` adapters on the default LoRA targets."""
        return rank * self.lora_fan

    def image_tokens(self, image_size: int | None = None, tiles: int = 1) -> int:
        """LM tokens of one square image, placeholder markers included.

        InternVL: ``tiles`` 448 px tiles of ``image_seq_length`` tokens each (pixel shuffle 2x2),
        plus ``<img>``/``</img>``. Qwen: the image is resized to a multiple of ``patch * merge``
        pixels and every ``merge x merge`` patch square is one token, plus vision start/end.

        Args:
            image_size: Side in pixels (Qwen); None: the family's default (448, a tiny model's own size).
            tiles: InternVL tiles per image (1 without dynamic tiling).

        Returns:
            Token count per image.
        """
        v = self.vision
        if v.style == "internvit":
            assert self.image_seq_length is not None
            return tiles * self.image_seq_length + 2
        side = self._qwen_side(image_size)
        return side * side + 2

    def vision_patches(self, image_size: int | None = None, tiles: int = 1) -> int:
        """Vision-tower sequence positions of one image (InternViT: + 1 CLS token per tile)."""
        v = self.vision
        if v.style == "internvit":
            assert v.tile_size is not None
            return tiles * ((v.tile_size // v.patch_size) ** 2 + 1)
        side = self._qwen_side(image_size)
        return (side * v.merge_size) ** 2

    def pixel_values(self, image_size: int | None = None, tiles: int = 1) -> int:
        """Number of floats the image processor produces for one image."""
        v = self.vision
        if v.style == "internvit":
            assert v.tile_size is not None
            return tiles * 3 * v.tile_size**2
        return self.vision_patches(image_size) * 3 * v.temporal_patch_size * v.patch_size**2

    def _qwen_side(self, image_size: int | None) -> int:
        v = self.vision
        unit = v.patch_size * v.merge_size
        size = image_size if image_size is not None else self.default_image_size
        return max(1, round(size / unit))


# --------------------------------------------------------------------------------------------
# Describing a backbone: config -> meta-device model -> Architecture
# --------------------------------------------------------------------------------------------


def _config_from_data(data: Mapping[str, Any]) -> Any:
    data = dict(data)
    return CONFIG_MAPPING[data.pop("model_type")](**data)


def _resolve(
    name: str, size: str | None, tiny_overrides: Mapping[str, Any]
) -> tuple[str, str, Any | None, tuple[BackboneSpec, TinySize] | None]:
    """(label, source, config or None, tiny builder args or None) for a backbone name."""
    if name.startswith(TINY_PREFIX) and name[len(TINY_PREFIX) :] in BACKBONES:
        tiny = tiny_backbone_size(size, tiny_overrides)
        return name, f"{name} builder ({tiny})", None, (BACKBONES[name[len(TINY_PREFIX) :]], tiny)
    if tiny_overrides:
        raise UsageError(f"{sorted(tiny_overrides)} only apply to tiny backbones ('{TINY_PREFIX}<family>').")
    if name in LOCAL_BACKBONES:
        name = os.fspath(LOCAL_BACKBONES[name])
    if name in BACKBONES:
        name = checkpoint_for(name, size)  # the loader resolves sizes with the same function
    elif size is not None:
        raise UsageError(f"size={size!r} only applies to family or tiny names, not {name!r}.")
    if name in KNOWN_CONFIGS:
        return name, f"rewarddance.planning.KNOWN_CONFIGS[{name!r}]", _config_from_data(KNOWN_CONFIGS[name]), None
    if Path(name).is_dir():
        try:
            return name, f"{name}/config.json", AutoConfig.from_pretrained(name), None
        except ValueError as err:  # e.g. a model_type only its own remote code defines
            raise UsageError(
                f"cannot plan the backbone in {name!r}: {err}. The planner builds transformers-native "
                "architectures only (a remote-code InternVL converts with transformers' "
                "convert_internvl_weights_to_hf.py)."
            ) from err
    try:  # a hub id already in the local cache
        return name, f"cached config of {name}", AutoConfig.from_pretrained(name, local_files_only=True), None
    except OSError as err:
        raise UsageError(
            f"No offline config for backbone {name!r}: registered families are {sorted(BACKBONES)} (tiny "
            f"variants: tiny-<family>), known hub ids {sorted(KNOWN_CONFIGS)}; otherwise pass a folder "
            "holding its config.json (e.g. `huggingface-cli download <id> config.json --local-dir DIR`)."
        ) from err


def _vision_arch(config: Any, model_type: str) -> VisionArch:
    vc = config.vision_config
    if model_type == "internvl":
        return VisionArch(
            style="internvit",
            hidden_size=vc.hidden_size,
            num_layers=vc.num_hidden_layers,
            num_heads=vc.num_attention_heads,
            intermediate_size=vc.intermediate_size,
            patch_size=int(vc.patch_size[0]),
            temporal_patch_size=1,
            merge_size=round(1 / config.downsample_ratio),
            tile_size=int(vc.image_size[0]),
            mlp="gelu",
            norm="rms_norm" if vc.norm_type == "rms_norm" else "layer_norm",
            qk_norm=bool(vc.use_qk_norm),
            layer_scale=vc.layer_scale_init_value is not None and vc.layer_scale_init_value > 0,
            deepstack=0,
            residual_fp32_under_autocast=True,  # fp32 position embeddings are added after the conv
        )
    common = {
        "style": "qwen",
        "num_layers": vc.depth,
        "num_heads": vc.num_heads,
        "patch_size": int(vc.patch_size),
        "temporal_patch_size": int(vc.temporal_patch_size),
        "merge_size": vc.spatial_merge_size,
        "tile_size": None,
        "qk_norm": False,
        "layer_scale": False,
    }
    if model_type == "qwen2_vl":
        return VisionArch(
            **common,
            hidden_size=vc.embed_dim,
            intermediate_size=vc.embed_dim * vc.mlp_ratio,
            mlp="quick_gelu",
            norm="layer_norm",
            deepstack=0,
            residual_fp32_under_autocast=False,
        )
    if model_type == "qwen2_5_vl":
        return VisionArch(
            **common,
            hidden_size=vc.hidden_size,
            intermediate_size=vc.intermediate_size,
            mlp="swiglu",
            norm="rms_norm",
            deepstack=0,
            residual_fp32_under_autocast=False,
        )
    if model_type == "qwen3_vl":
        return VisionArch(
            **common,
            hidden_size=vc.hidden_size,
            intermediate_size=vc.intermediate_size,
            mlp="gelu",
            norm="layer_norm",
            deepstack=len(vc.deepstack_visual_indexes),
            residual_fp32_under_autocast=False,
        )
    raise UsageError(f"No vision-tower formulas for model_type {model_type!r}.")


def _text_arch(config: Any, model: nn.Module, model_type: str) -> TextArch:
    tc = config.get_text_config()
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    qk_norm = any(name.endswith("self_attn.q_norm") for name, _ in model.named_modules())
    return TextArch(
        hidden_size=tc.hidden_size,
        num_layers=tc.num_hidden_layers,
        num_heads=tc.num_attention_heads,
        num_kv_heads=tc.num_key_value_heads or tc.num_attention_heads,
        head_dim=head_dim,
        intermediate_size=tc.intermediate_size,
        vocab_size=tc.vocab_size,
        qk_norm=qk_norm,
        mrope=model_type != "internvl",
    )


def _count(model: nn.Module, family: BackboneSpec) -> dict[str, int]:
    vision_re = [re.compile(p) for p in family.vision_patterns]
    projector_re = [re.compile(p) for p in family.projector_patterns]
    counts = dict.fromkeys(("total", "vision", "projector"), 0)
    for name, param in model.named_parameters():
        counts["total"] += param.numel()
        if any(r.search(name) for r in projector_re):
            counts["projector"] += param.numel()
        elif any(r.search(name) for r in vision_re):
            counts["vision"] += param.numel()
    lm_layers, vision_layers = [], []
    for name, module in model.named_modules():
        if isinstance(module, GradientCheckpointingLayer):
            params = sum(p.numel() for p in module.parameters())
            matmul = sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))
            is_vision = any(r.search(name + ".") for r in vision_re)
            (vision_layers if is_vision else lm_layers).append((params, matmul))
    lora_re = re.compile(LANGUAGE_MODEL_LORA_REGEX)
    lora_fan = sum(
        m.in_features + m.out_features
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and lora_re.fullmatch(name)
    )
    embedding = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings()
    counts.update(
        input_embedding=embedding,
        lm_head=head.weight.numel() if head is not None else embedding,
        lm_layer=max(p for p, _ in lm_layers),
        vision_layer=max((p for p, _ in vision_layers), default=0),
        root=counts["total"] - sum(p for p, _ in lm_layers + vision_layers),
        lm_matmul=sum(m for _, m in lm_layers),
        vision_matmul=sum(m for _, m in vision_layers),
        lora_fan=lora_fan,
    )
    return counts


@lru_cache(maxsize=64)
def _describe_cached(name: str, size: str | None, overrides: tuple[tuple[str, Any], ...]) -> Architecture:
    label, source, config, tiny = _resolve(name, size, dict(overrides))
    default_image_size = tiny[1].image_size if tiny is not None else 448
    with torch.device("meta"):  # exact parameter shapes, no memory
        if tiny is not None:
            spec, tiny_size = tiny
            model, _ = spec.build_tiny(tiny_size, None)
            config = model.config
        else:
            model = AutoModelForImageTextToText.from_config(config)
    model_type = config.model_type
    family = next((s for s in BACKBONES.values() if s.model_type == model_type), None)
    if family is None:
        raise UsageError(f"{label!r} is a {model_type!r} model, not a registered rewarddance family.")
    counts = _count(model, family)
    return Architecture(
        name=label,
        family=family.name,
        source=source,
        text=_text_arch(config, model, model_type),
        vision=_vision_arch(config, model_type),
        image_seq_length=getattr(config, "image_seq_length", None) if model_type == "internvl" else None,
        params_total=counts["total"],
        params_vision=counts["vision"],
        params_projector=counts["projector"],
        params_input_embedding=counts["input_embedding"],
        lm_layer_params=counts["lm_layer"],
        vision_layer_params=counts["vision_layer"],
        root_params=counts["root"],
        lm_matmul_params=counts["lm_matmul"],
        vision_matmul_params=counts["vision_matmul"],
        lm_head_params=counts["lm_head"],
        lora_fan=counts["lora_fan"],
        default_image_size=default_image_size,
    )


def describe_backbone(name: str, size: str | None = None, **tiny_overrides: Any) -> Architecture:
    """Read a backbone's architecture without its weights.

    The model class is instantiated on the ``meta`` device, so parameter counts are exact (the
    real transformers class, tied weights counted once) and nothing is allocated or downloaded.

    Args:
        name: A tiny name (``tiny-internvl``), a registry family (``internvl`` with ``size``), a hub
            id from :data:`KNOWN_CONFIGS` or the local hub cache, a ``save_pretrained`` folder, or a
            bundled backbone (``shapes-vlm-tiny``).
        size: Family size label (``8B``; the same labels :func:`rewarddance.models.load_backbone`
            takes, resolved by the same function) or tiny preset (``tiny``/``small``).
        **tiny_overrides: :class:`rewarddance.models.backbones.TinySize` fields for tiny names.

    Returns:
        The :class:`Architecture`.

    Raises:
        ValueError: Unknown names/sizes, or a hub id with no offline config.
    """
    return _describe_cached(os.fspath(name), size, tuple(sorted(tiny_overrides.items())))
