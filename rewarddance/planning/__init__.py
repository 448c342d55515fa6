r"""Per-GPU memory planning for reward-model training, from the architecture config alone.

:func:`estimate_memory` answers "does this backbone train on these GPUs?" without loading a
weight: parameters are counted exactly by instantiating the real transformers class on the
``meta`` device (no memory is allocated), and the activations come from per-layer formulas
written op by op for the code paths transformers runs (documented below and in ``docs/memory.md``).
:func:`measure_training_peak` measures a real training step of a tiny model on CPU, so the
formulas can be checked against the allocator-level peak (:func:`validate`).

Notation (per micro-batch of ``b`` samples of ``s`` tokens, ``n = b * s``): ``h`` hidden size,
``f`` MLP width, ``a`` query heads, ``g`` key/value heads, ``d`` head dim, ``V`` vocabulary,
``c`` bytes of a low-precision activation (2 for bf16, 4 in ``32-true``), ``r`` bytes of the
residual stream. Activation bytes saved for backward by one decoder layer (SDPA/flash attention,
which keeps the log-sum-exp instead of the ``s x s`` score matrix)::

    n * [ 2 (4 + r) h                  two RMSNorms: fp32 up-cast of the input + normalised value
        + k_attn h + c a d + 2 c g d   attention input(s), q after RoPE, k and v (GQA not expanded)
        + c a d + 4 a                  attention output (= o_proj input) and fp32 log-sum-exp
        + k_mlp h + 4 c f ]            MLP input(s); gate, up, act(gate), act(gate) * up

``k_attn = k_mlp = c`` when the norm output is shared by the projections; under autocast with
fp32 weights (``bf16-mixed`` with DDP) every projection saves its own bf16 cast of the fp32 norm
output, so ``k_attn = 3 * 2`` and ``k_mlp = 2 * 2``. Qwen3 adds q/k RMSNorms, ``(4 + c)(a + g) d``.
For a Qwen2-style layer (``a d = h``, ``g d = h / 4``) that is ``21 h + 8 f`` bytes per token in
bf16 and ``31 h + 8 f`` under DDP ``bf16-mixed``; with Qwen2.5-7B's ``f = 5.3 h``, ~63 h and ~73 h.
Korthikanti et al. (2022, "Reducing Activation Recomputation in Large Transformer Models") give
``s b h (34 + 5 a s / h)`` for a GPT layer in fp16 (4h GeLU MLP, dropout masks); their ``5 a s / h``
term is the stored ``s x s`` attention matrix, which SDPA/flash attention does not keep
(``attention="eager"`` adds it back as ``(4 + c) a s`` per token: fp32 softmax and its cast).
Vision layers follow the same op-by-op accounting (:func:`vision_layer_activation_bytes`: fused qkv
with 2D RoPE for Qwen, separate q/k/v with layer scale for InternViT, SwiGLU / GeLU / QuickGELU
MLPs) over the vision positions: ``(448 / 14)^2 + 1`` per InternVL tile, ``(side / 14)^2`` per Qwen
image. Checked against the tensors autograd saves on tiny models: within 0.4% per decoder layer,
0.3% per vision layer (3% for Qwen3-VL).

With activation checkpointing (transformers' non-reentrant checkpointing of every decoder and
vision layer) a layer keeps only its input, ``r h`` bytes per token, and the backward pass
recomputes one layer at a time: ``L n r h + n (one layer's activations + r h + 3 c f)``, the last
two being that layer's backward temporaries (residual and MLP gradients).

Static memory per GPU, ``N`` parameters of which ``T`` are trained (LoRA: the adapters only,
``r_lora * sum(in + out)`` over the adapted projections), ``W`` GPUs in all:

==========  ========================  ===================  ============================
precision   parameters (bytes/param)  gradients            AdamW (exp_avg, exp_avg_sq)
==========  ========================  ===================  ============================
bf16-mixed  4 (fp32 master weights)   4                    8
bf16-true   2                         2                    4 (torch keeps the param dtype)
32-true     4                         4                    8
==========  ========================  ===================  ============================

``ddp`` (Lightning's DDP with ``precision="bf16-mixed"``, configs/trainer/ddp.yaml) keeps all of it
on every GPU, plus a flat bucket copy of the gradients when ``W > 1`` (``gradient_as_bucket_view=False``,
Lightning's default) and the bf16 copies of the weights that autocast casts for the matmuls (2 bytes
per matmul weight). ``fsdp`` is rewarddance.distributed.FSDP2Strategy (configs/trainer/fsdp.yaml):
every decoder layer and vision block its own FSDP2 unit, then the root; ``bf16-mixed`` stands for its
FSDP2 mixed precision (bf16 ``param_dtype``, fp32 ``reduce_dtype``, fp32 master weights, trainer
precision 32-true, no autocast). It divides the three by ``W`` and adds the unsharded working set:
the root unit (embeddings, lm_head, projector: kept gathered through the backward) plus two blocks
(current and prefetched) in bf16, and one block's unsharded gradients with their fp32 reduce-scatter
buffer. Its activations are those of ``bf16-true``, not DDP's fp32 residual stream. CPU offload moves
the sharded parameters, gradients and optimizer states to host memory.

Logits: rewarddance's generative reward tasks call the model with ``logits_to_keep=1`` (or the
answer's K + 1 positions with rationales), so the LM head produces ``b K V`` logits; full-vocabulary
cross-entropy over every position (pretraining) costs ``b s V (c + 4 + 4)`` bytes (the logits, the
fp32 up-cast for the loss and the log-softmax saved for backward), which dominates for long
sequences.

The total adds a ``headroom`` fraction (allocator fragmentation, backward temporaries such as
activation gradients and foreach-optimizer buffers) and ``reserved_gib`` (CUDA context, NCCL and
cuBLAS workspaces) before comparing with the GPU's memory.
"""

from __future__ import annotations

import dataclasses
import os
import re
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from rewarddance.errors import UsageError

Strategy = Literal["ddp", "fsdp"]
Precision = Literal["bf16-mixed", "32-true", "bf16-true"]
LogitsMode = Literal["answer", "full"]
Attention = Literal["sdpa", "eager"]

GIB = 2**30
"""Bytes in a GiB; every size in this module is in bytes unless its name says GiB."""

DEFAULT_HEADROOM = 0.10
"""Fraction added to the estimate for fragmentation and backward/optimizer temporaries."""

DEFAULT_RESERVED_GIB = 2.0
"""GiB per GPU not available to tensors: CUDA context, NCCL buffers, cuBLAS workspaces."""

VALIDATION_TOLERANCE = 0.30
"""Relative error within which the estimate must match a measured peak (tests enforce it)."""

# --------------------------------------------------------------------------------------------
# Architecture data: configs of the paper's reward-model sizes, written here because there is
# no hub access. Only architecture fields are kept; everything else is the transformers default.
# --------------------------------------------------------------------------------------------

_INTERNVIT_300M: dict[str, Any] = {
    # InternViT-300M-448px-V2_5, the vision tower of InternVL3-1B/2B/8B and InternVL3.5-1B..14B.
    # transformers' InternVLVisionConfig defaults are this tower ("OpenGVLab/InternVL3-1B-hf style"):
    # 1024 wide, 24 layers, 16 heads, MLP 4096, 448 px, patch 14, LayerNorm, no q/k norm. The qkv
    # bias is on (the remote-code module prints `qkv: Linear(1024, 3072, bias=True)`), which the
    # -hf configs spell attention_bias=true.
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "attention_bias": True,
    "use_qk_norm": False,
    "norm_type": "layer_norm",
    "image_size": [448, 448],
    "patch_size": [14, 14],
}

_INTERNVIT_6B: dict[str, Any] = {
    # InternViT-6B-448px (V1-5 .. V2_5), the vision tower of InternVL2.5-26B and InternVL3-38B/78B:
    # OpenGVLab/InternViT-6B-448px-V1-5 config.json: hidden 3200, 45 layers, 25 heads, MLP 12800,
    # qkv_bias false, qk_normalization true, patch 14, 448 px; norm_type is the remote-code
    # InternVisionConfig default 'rms_norm'. transformers' conversion script renames qkv_bias ->
    # attention_bias and qk_normalization -> use_qk_norm.
    "hidden_size": 3200,
    "num_hidden_layers": 45,
    "num_attention_heads": 25,
    "intermediate_size": 12800,
    "attention_bias": False,
    "use_qk_norm": True,
    "norm_type": "rms_norm",
    "image_size": [448, 448],
    "patch_size": [14, 14],
}

KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    # OpenGVLab/InternVL3-1B-hf config.json: Qwen2.5-0.5B text model (896 wide, 24 layers, 14 heads,
    # 2 KV heads, MLP 4864, vocab 151674 = Qwen2.5's 151665 tokens + 9 InternVL tokens). The
    # checkpoint stores a separate lm_head: model.safetensors is 1.88 GB = 0.94 B bf16 parameters,
    # which is what an untied head gives (a tied one would be 0.80 B).
    "OpenGVLab/InternVL3-1B-hf": {
        "model_type": "internvl",
        "vision_config": _INTERNVIT_300M,
        "text_config": {
            "model_type": "qwen2",
            "hidden_size": 896,
            "intermediate_size": 4864,
            "num_hidden_layers": 24,
            "num_attention_heads": 14,
            "num_key_value_heads": 2,
            "vocab_size": 151674,
        },
        "downsample_ratio": 0.5,
        "image_seq_length": 256,
        "tie_word_embeddings": False,
    },
    # OpenGVLab/InternVL3-2B-hf: Qwen2.5-1.5B text model (1536 wide, 28 layers, 12 heads, 2 KV
    # heads, MLP 8960; Qwen2-VL-2B's config.json has the same language model), vocab 151674;
    # model.safetensors 4.18 GB = 2.09 B parameters, again an untied lm_head.
    "OpenGVLab/InternVL3-2B-hf": {
        "model_type": "internvl",
        "vision_config": _INTERNVIT_300M,
        "text_config": {
            "model_type": "qwen2",
            "hidden_size": 1536,
            "intermediate_size": 8960,
            "num_hidden_layers": 28,
            "num_attention_heads": 12,
            "num_key_value_heads": 2,
            "vocab_size": 151674,
        },
        "downsample_ratio": 0.5,
        "image_seq_length": 256,
        "tie_word_embeddings": False,
    },
    # OpenGVLab/InternVL3_5-4B-HF (InternVL3 has no 4B): Qwen3-4B text model, from Qwen3-4B's
    # config.json: 2560 wide, 36 layers, 32 heads, 8 KV heads, head_dim 128, MLP 9728, vocab
    # 151936, q/k RMSNorm. The InternVL3_5-4B repository holds 9.48 GB of weights = 4.7 B bf16
    # parameters, which needs an untied lm_head (tied: 4.3 B).
    "OpenGVLab/InternVL3_5-4B-HF": {
        "model_type": "internvl",
        "vision_config": _INTERNVIT_300M,
        "text_config": {
            "model_type": "qwen3",
            "hidden_size": 2560,
            "intermediate_size": 9728,
            "num_hidden_layers": 36,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "vocab_size": 151936,
        },
        "downsample_ratio": 0.5,
        "image_seq_length": 256,
        "tie_word_embeddings": False,
    },
    # OpenGVLab/InternVL3-8B-hf: Qwen2.5-7B text model (3584 wide, 28 layers, 28 heads, 4 KV
    # heads, MLP 18944, untied), vocab 151674 (MindSpeed-MM's InternVL3 model_8B.json lists the
    # same numbers).
    "OpenGVLab/InternVL3-8B-hf": {
        "model_type": "internvl",
        "vision_config": _INTERNVIT_300M,
        "text_config": {
            "model_type": "qwen2",
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "vocab_size": 151674,
        },
        "downsample_ratio": 0.5,
        "image_seq_length": 256,
        "tie_word_embeddings": False,
    },
    # OpenGVLab/InternVL2_5-26B (the paper's 26B; remote code only, no -hf checkpoint): InternViT-6B
    # + internlm2_5-20b-chat. transformers' convert_internvl_weights_to_hf.py maps InternVL2_5-26B
    # to InternVLForConditionalGeneration with a LlamaConfig text model (InternLM2's fused wqkv is
    # split into q/k/v, same parameter count). internlm2_5-20b config.json: 6144 wide, 48 layers,
    # 48 heads, 8 KV heads, MLP 16384, vocab 92544, untied. The chat model adds InternVL's 9 special
    # tokens (the conversion script's image token id is 92546, beyond 92544): vocab 92553.
    "OpenGVLab/InternVL2_5-26B": {
        "model_type": "internvl",
        "vision_config": _INTERNVIT_6B,
        "text_config": {
            "model_type": "llama",
            "hidden_size": 6144,
            "intermediate_size": 16384,
            "num_hidden_layers": 48,
            "num_attention_heads": 48,
            "num_key_value_heads": 8,
            "vocab_size": 92553,
        },
        "downsample_ratio": 0.5,
        "image_seq_length": 256,
        "tie_word_embeddings": False,
    },
}
"""Architecture fields of hub checkpoints that :func:`describe_backbone` can plan offline."""

PAPER_SIZES: dict[str, str] = {
    "1B": "OpenGVLab/InternVL3-1B-hf",
    "2B": "OpenGVLab/InternVL3-2B-hf",
    "4B": "OpenGVLab/InternVL3_5-4B-HF",
    "8B": "OpenGVLab/InternVL3-8B-hf",
    "26B": "OpenGVLab/InternVL2_5-26B",
}
"""The paper's reward-model sizes (InternVL 1B..26B) mapped to the closest transformers-native checkpoints."""


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


def _registry() -> Any:
    # Imported lazily: the registry pulls in the processors and the tokenizer trainer.
    from rewarddance.models import backbones

    return backbones


def _config_from_data(data: Mapping[str, Any]) -> Any:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    data = dict(data)
    return CONFIG_MAPPING[data.pop("model_type")](**data)


def _resolve(name: str, size: str | None, tiny_overrides: Mapping[str, Any]) -> tuple[str, str, Any | None, Any | None]:
    """(label, source, config or None, tiny builder args or None) for a backbone name."""
    reg = _registry()
    if name.startswith(reg.TINY_PREFIX) and name[len(reg.TINY_PREFIX) :] in reg.BACKBONES:
        tiny = reg._tiny_size(size, tiny_overrides)
        return name, f"{name} builder ({tiny})", None, (reg.BACKBONES[name[len(reg.TINY_PREFIX) :]], tiny)
    if tiny_overrides:
        raise UsageError(f"{sorted(tiny_overrides)} only apply to tiny backbones ('{reg.TINY_PREFIX}<family>').")
    local = getattr(reg, "LOCAL_BACKBONES", {})
    if name in local:
        name = os.fspath(local[name])
    if name in reg.BACKBONES:
        family = reg.BACKBONES[name]
        label = size or family.default_size
        if label in family.hub_ids:
            name = family.hub_ids[label]
        elif family.name == "internvl" and label in PAPER_SIZES:
            name = PAPER_SIZES[label]
        else:
            choices = sorted(set(family.hub_ids) | (set(PAPER_SIZES) if family.name == "internvl" else set()))
            raise UsageError(f"{family.name!r} has no size {label!r}; choose from {choices}.")
    elif size is not None:
        raise UsageError(f"size={size!r} only applies to family or tiny names, not {name!r}.")
    if name in KNOWN_CONFIGS:
        return name, f"rewarddance.planning.KNOWN_CONFIGS[{name!r}]", _config_from_data(KNOWN_CONFIGS[name]), None
    from transformers import AutoConfig

    if Path(name).is_dir():
        return name, f"{name}/config.json", AutoConfig.from_pretrained(name), None
    try:  # a hub id already in the local cache
        return name, f"cached config of {name}", AutoConfig.from_pretrained(name, local_files_only=True), None
    except OSError as err:
        raise UsageError(
            f"No offline config for backbone {name!r}: registered families are {sorted(reg.BACKBONES)} (tiny "
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


def _count(model: nn.Module, family: Any) -> dict[str, int]:
    from transformers.modeling_layers import GradientCheckpointingLayer

    from rewarddance.models.lora import LANGUAGE_MODEL_LORA_REGEX

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
    from transformers import AutoModelForImageTextToText

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
    family = next((s for s in _registry().BACKBONES.values() if s.model_type == model_type), None)
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
        size: Family size label (``8B``; for ``internvl`` also the paper sizes of :data:`PAPER_SIZES`)
            or tiny preset (``tiny``/``small``).
        **tiny_overrides: :class:`rewarddance.models.backbones.TinySize` fields for tiny names.

    Returns:
        The :class:`Architecture`.

    Raises:
        ValueError: Unknown names/sizes, or a hub id with no offline config.
    """
    return _describe_cached(os.fspath(name), size, tuple(sorted(tiny_overrides.items())))


# --------------------------------------------------------------------------------------------
# The estimate
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Dtypes:
    """Bytes per element of each kind of tensor for one (precision, strategy)."""

    param: int  # stored (sharded) parameters
    grad: int
    optim: int  # both AdamW moments
    compute: int  # c: matmul outputs, attention tensors
    residual: int  # r: the LM residual stream
    vision_residual: int
    casts: bool  # autocast over fp32 weights: each linear saves its own bf16 cast of an fp32 input
    gathered: int  # FSDP: dtype of gathered (unsharded) parameters
    autocast: bool = False  # bf16-mixed: matmuls run under torch.autocast
    layer_norm_fp32: bool = False  # CUDA autocast runs layer_norm in fp32 (CPU autocast does not)


def _dtypes(
    precision: Precision, strategy: Strategy, vision: VisionArch, kernels: Literal["cuda", "cpu"] = "cuda"
) -> _Dtypes:
    if precision == "32-true":
        return _Dtypes(4, 4, 8, 4, 4, 4, False, 4)
    if precision == "bf16-true":
        return _Dtypes(2, 2, 4, 2, 2, 2, False, 2)
    if precision != "bf16-mixed":
        raise UsageError(f"precision must be one of bf16-mixed, bf16-true, 32-true; got {precision!r}")
    if strategy == "fsdp":
        # rewarddance.distributed.FSDP2Strategy (configs/trainer/fsdp.yaml): FSDP2 mixed precision
        # (param_dtype bf16, reduce_dtype fp32) with fp32 sharded master weights, AdamW states and
        # gradients, trainer precision 32-true (no autocast). Gathered parameters are bf16, so the
        # activations are those of bf16-true.
        return _Dtypes(4, 4, 8, 2, 2, 2, False, 2)
    # DDP + autocast over fp32 weights: the token embedding (not autocast) makes the LM residual
    # stream fp32; the vision residual is bf16 after an autocast conv unless an fp32 add follows.
    vision_residual = 4 if vision.residual_fp32_under_autocast else 2
    return _Dtypes(4, 4, 8, 2, 4, vision_residual, True, 2, True, kernels == "cuda")


def lm_layer_activation_bytes(text: TextArch, dt: Any, seq_len: int, attention: Attention = "sdpa") -> float:
    """Bytes one decoder layer saves for backward, per token (see the module docstring).

    Args:
        text: The language model.
        dt: The precision's dtypes (:func:`_dtypes`).
        seq_len: Sequence length (only eager attention depends on it).
        attention: ``sdpa`` (flash/memory-efficient: no score matrix) or ``eager``.

    Returns:
        Bytes per token.
    """
    h, f, a, g, d = text.hidden_size, text.intermediate_size, text.num_heads, text.num_kv_heads, text.head_dim
    c, r = dt.compute, dt.residual
    norms = 2 * (4 + r) * h
    attn_in = (3 * 2 if dt.casts else c) * h
    mlp_in = (2 * 2 if dt.casts else c) * h
    attn = c * a * d + 2 * c * g * d + c * a * d + 4 * a
    if text.qk_norm:
        attn += (4 + c) * (a + g) * d
    if attention == "eager":
        # repeat_kv expands k and v to all heads; softmax (fp32) output and its bf16 cast are kept.
        attn += 2 * c * (a - g) * d - 4 * a + (4 + (c if c != 4 else 0)) * a * seq_len
    return norms + attn_in + attn + mlp_in + 4 * c * f


def _lora_layer_delta(text: TextArch, dt: Any, rank: int, mask_bytes: int) -> float:
    """Change of one decoder layer's saved bytes per token when the 7 projections carry LoRA (dropout > 0)."""
    h, f, a, d = text.hidden_size, text.intermediate_size, text.num_heads, text.head_dim
    c = dt.compute
    # Each adapter saves its dropout mask (CUDA: 1-byte bool; CPU: a noise tensor in the adapter's
    # dtype), lora_A's input in c bytes and lora_A's output (r values, lora_B's input). The frozen
    # base projection saves no input.
    added = (mask_bytes + c) * (3 * h + a * d + 2 * h + f) + 7 * c * rank
    # What the full fine-tuning formula counted for those inputs and no longer is saved:
    # autocast: each projection's own cast; otherwise the shared norm outputs and down_proj's input.
    removed = (5 * 2 * h + 2 * f) if dt.casts else (2 * c * h + c * f)
    return added - removed


def _norm_terms(kind: str, dt: Any, residual: int) -> tuple[int, bool]:
    """(bytes a norm saves per element, whether its output is fp32) for an input of ``residual`` bytes."""
    if kind == "rms_norm":
        # transformers' RMSNorms up-cast to fp32 and save the normalised value in the input dtype;
        # the weight multiply makes the output fp32 only when the weights are fp32 under autocast.
        return 4 + residual, dt.casts
    if dt.layer_norm_fp32:
        return 4, True  # CUDA autocast runs layer_norm in fp32: it saves an fp32 copy of its input
    return residual, residual == 4


def _consumer_bytes(consumers: int, fp32_input: bool, dt: Any) -> int:
    """Bytes per element the linears reading one norm output save: under autocast each casts an
    fp32 input to its own bf16 copy; otherwise they share the (saved once) input."""
    return consumers * 2 if (dt.autocast and fp32_input) else dt.compute


def vision_layer_activation_bytes(vision: VisionArch, dt: Any) -> float:
    """Bytes one vision layer saves for backward, per vision position.

    Args:
        vision: The vision tower.
        dt: The precision's dtypes.

    Returns:
        Bytes per patch (InternViT: per patch or CLS token).
    """
    h, f = vision.hidden_size, vision.intermediate_size
    c = dt.compute
    norm, fp32_out = _norm_terms(vision.norm, dt, dt.vision_residual)

    def inputs(consumers: int) -> int:
        return _consumer_bytes(consumers, fp32_out, dt)

    if vision.style == "qwen":
        # fused qkv output (v is a view of it), RoPE'd q and k, attention output, o_proj input (a
        # concatenation of the per-image attention chunks)
        attn = inputs(1) * h + (3 + 2 + 1 + 1) * c * h
    else:
        attn = inputs(3) * h + (3 + 1) * c * h  # q, k, v, attention output (o_proj reads a view)
    if vision.qk_norm:
        attn += 2 * (4 + c) * h
    attn += 4 * vision.num_heads  # log-sum-exp
    mlp = {
        "swiglu": inputs(2) * h + 4 * c * f,
        "gelu": inputs(1) * h + 2 * c * f,
        "quick_gelu": inputs(1) * h + 3 * c * f,
    }[vision.mlp]
    scale = 2 * c * h if vision.layer_scale else 0
    return 2 * norm * h + attn + mlp + scale


def _projector_bytes_per_token(arch: Architecture, dt: Any) -> float:
    """Saved bytes of the patch merger / projector per LM image token."""
    v, c = arch.vision, dt.compute
    merged = v.merge_size**2 * v.hidden_size
    kind = "layer_norm" if v.style == "internvit" else v.norm
    norm, fp32_out = _norm_terms(kind, dt, dt.vision_residual)
    cast = _consumer_bytes(1, fp32_out, dt)
    if v.style == "internvit":  # LayerNorm(4 hv) -> Linear -> GELU -> Linear(h)
        return norm * merged + cast * merged + 2 * c * arch.text.hidden_size
    # Qwen merger: norm over patches, Linear(merged) -> GELU -> Linear(h); Qwen3 adds DeepStack mergers.
    return (1 + v.deepstack) * (norm * merged + cast * merged + 2 * c * merged)


@dataclass
class MemoryPlan:
    """A per-GPU memory estimate (bytes) and what it assumed.

    Attributes:
        backbone: The backbone described.
        strategy: ``ddp`` or ``fsdp``.
        world_size: GPUs in all (gpus x nodes).
        micro_batch_size: Samples per GPU per step.
        seq_len: LM tokens per sample (text + images).
        image_tokens: LM tokens per image (markers included).
        vision_positions: Vision-tower positions per sample (all images).
        precision: Lightning precision.
        lora_rank: LoRA rank, None for full fine-tuning.
        activation_checkpointing: Whether layers are recomputed in backward.
        freeze_vision: Whether the vision tower is frozen.
        cpu_offload: FSDP CPU offload of parameters, gradients and optimizer state.
        params_total: Model parameters.
        params_trainable: Parameters with gradients and optimizer state.
        parameters: Stored parameters on this GPU (sharded under FSDP, 0 when offloaded).
        fsdp_working_set: FSDP's unsharded parameters (root + two layers) and one layer's unsharded gradients.
        gradients: Gradients (plus DDP's bucket copy when world_size > 1).
        optimizer: AdamW moments.
        weight_copies: bf16 copies of fp32 weights made by autocast and kept for backward (DDP bf16-mixed).
        activations: Saved activations of the vision tower, projector and decoder layers (+ inputs).
        activations_no_checkpointing: The same without checkpointing (for comparison).
        activations_checkpointing: The same with checkpointing.
        logits: Logits and the loss's buffers.
        total: Sum of the above (no headroom).
        headroom: Fraction added for fragmentation and temporaries.
        reserved: Bytes per GPU not usable by tensors.
        gpu_memory: The GPU's memory.
        max_micro_batch_size: Largest micro-batch that fits (0: not even one sample).
        notes: Assumptions worth reading.
    """

    backbone: str
    strategy: Strategy
    world_size: int
    micro_batch_size: int
    seq_len: int
    image_tokens: int
    vision_positions: int
    precision: Precision
    lora_rank: int | None
    activation_checkpointing: bool
    freeze_vision: bool
    cpu_offload: bool
    params_total: int
    params_trainable: int
    parameters: float
    fsdp_working_set: float
    gradients: float
    optimizer: float
    weight_copies: float
    activations: float
    activations_no_checkpointing: float
    activations_checkpointing: float
    logits: float
    headroom: float
    reserved: float
    gpu_memory: float
    max_micro_batch_size: int
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        """Bytes per GPU, before headroom."""
        return (
            self.parameters
            + self.fsdp_working_set
            + self.gradients
            + self.optimizer
            + self.weight_copies
            + self.activations
            + self.logits
        )

    @property
    def total_with_headroom(self) -> float:
        """``total * (1 + headroom) + reserved``: what must fit in the GPU."""
        return self.total * (1 + self.headroom) + self.reserved

    @property
    def fits(self) -> bool:
        """Whether :attr:`total_with_headroom` fits in :attr:`gpu_memory`."""
        return self.total_with_headroom <= self.gpu_memory

    def as_dict(self) -> dict[str, Any]:
        """Plain data (GiB for sizes), for JSON or the CLI's result."""
        out = dataclasses.asdict(self)
        for key in (
            "parameters",
            "fsdp_working_set",
            "gradients",
            "optimizer",
            "weight_copies",
            "activations",
            "activations_no_checkpointing",
            "activations_checkpointing",
            "logits",
            "reserved",
            "gpu_memory",
        ):
            out[key + "_gib"] = out.pop(key) / GIB
        out.update(total_gib=self.total / GIB, total_with_headroom_gib=self.total_with_headroom / GIB, fits=self.fits)
        return out


def _activations(
    arch: Architecture,
    dt: _Dtypes,
    *,
    batch: int,
    seq_len: int,
    vision_positions: int,
    image_tokens_total: int,
    pixel_values: int,
    lora_rank: int | None,
    checkpointing: bool,
    vision_trainable: bool,
    attention: Attention,
    mask_bytes: int,
) -> float:
    """Saved activations of one micro-batch (see the module docstring)."""
    t, v = arch.text, arch.vision
    n = batch * seq_len
    layer = lm_layer_activation_bytes(t, dt, seq_len, attention)
    if lora_rank is not None:
        layer += _lora_layer_delta(t, dt, lora_rank, mask_bytes)
    rope = 2 * t.head_dim * (4 if dt.residual == 4 else dt.compute)  # cos and sin, shared by all layers
    # Final norm over every position (the head then reads the kept ones), rotary tables, position ids.
    lm_other = (4 + dt.residual) * t.hidden_size + rope + (3 if t.mrope else 1) * 8
    inputs = n * 8 * 3 + pixel_values * batch * 4  # input_ids/attention_mask/token types, fp32 pixels
    if checkpointing:
        # Layer inputs, one recomputed layer, and that layer's backward temporaries (the residual
        # gradient and ~3 MLP-sized gradients): the peak is inside a layer's recompute + backward.
        backward = dt.residual * t.hidden_size + 3 * dt.compute * t.intermediate_size
        lm = t.num_layers * n * dt.residual * t.hidden_size + n * (layer + backward)
    else:
        lm = t.num_layers * n * layer
    total = lm + n * lm_other + inputs
    if vision_trainable:
        m = batch * vision_positions
        vlayer = vision_layer_activation_bytes(v, dt)
        if checkpointing:
            vis = v.num_layers * m * dt.vision_residual * v.hidden_size
            recompute = max(0.0, m * vlayer - n * layer)  # one layer is recomputed at a time
        else:
            vis, recompute = v.num_layers * m * vlayer, 0.0
        pixels_cast = batch * pixel_values * (2 if dt.casts else 0)  # autocast conv's bf16 input copy
        total += vis + recompute + pixels_cast
    if vision_trainable or (lora_rank is None):
        total += batch * image_tokens_total * _projector_bytes_per_token(arch, dt)
    return float(total)


def estimate_memory(
    backbone: str,
    *,
    size: str | None = None,
    strategy: Strategy = "fsdp",
    gpus: int = 8,
    nodes: int = 1,
    micro_batch_size: int = 4,
    text_tokens: int = 512,
    images: int = 2,
    image_size: int | None = None,
    image_tiles: int = 1,
    precision: Precision = "bf16-mixed",
    lora_rank: int | None = None,
    activation_checkpointing: bool = False,
    freeze_vision: bool = False,
    cpu_offload: bool = False,
    logits: LogitsMode = "answer",
    answer_tokens: int = 1,
    attention: Attention = "sdpa",
    gpu_memory_gib: float = 80.0,
    headroom: float = DEFAULT_HEADROOM,
    reserved_gib: float = DEFAULT_RESERVED_GIB,
    kernels: Literal["cuda", "cpu"] = "cuda",
    **tiny_overrides: Any,
) -> MemoryPlan:
    """Estimate the per-GPU memory of one training step from the backbone's config.

    Args:
        backbone: Backbone name (see :func:`describe_backbone`).
        size: Family size label or tiny preset.
        strategy: ``ddp`` (replicated) or ``fsdp`` (fully sharded, one unit per layer).
        gpus: GPUs per node.
        nodes: Nodes.
        micro_batch_size: Samples per GPU per step (rows the model sees: a pointwise pair is 2 rows).
        text_tokens: Text tokens per sample (prompt, template, answer).
        images: Images per sample (2 for pairwise).
        image_size: Square image side in pixels (Qwen); None: 448 (a tiny model's own size).
        image_tiles: InternVL 448 px tiles per image (1 without dynamic tiling).
        precision: ``bf16-mixed``, ``bf16-true`` or ``32-true`` (Lightning's names).
        lora_rank: LoRA rank on the language model's projections; None: full fine-tuning.
        activation_checkpointing: Recompute each decoder/vision layer in backward.
        freeze_vision: Freeze the vision tower (no gradients, no saved vision activations).
        cpu_offload: FSDP only: keep sharded parameters, gradients and optimizer state on the CPU.
        logits: ``answer``: logits at ``answer_tokens`` positions (rewarddance reward training);
            ``full``: every position over the whole vocabulary (cross-entropy pretraining).
        answer_tokens: Positions whose logits are computed in ``answer`` mode (K + 1 with rationales).
        attention: ``sdpa`` (flash/memory-efficient kernels) or ``eager`` (stores the score matrix).
        gpu_memory_gib: Memory per GPU.
        headroom: Fraction added to the total for fragmentation and temporaries.
        reserved_gib: GiB per GPU unavailable to tensors (CUDA context, NCCL, workspaces).
        kernels: Whose kernels to model where they differ: ``cuda`` (fused dropout keeps a 1-byte
            mask) or ``cpu`` (dropout keeps its noise tensor in the input dtype; used by :func:`validate`).
        **tiny_overrides: TinySize fields for tiny backbones.

    Returns:
        The :class:`MemoryPlan`.

    Raises:
        ValueError: Invalid combinations (CPU offload without FSDP, non-positive sizes).
    """
    if min(gpus, nodes, micro_batch_size) < 1 or text_tokens < 0 or images < 0:
        raise UsageError("gpus, nodes and micro_batch_size must be >= 1; text_tokens and images >= 0")
    if cpu_offload and strategy != "fsdp":
        raise UsageError("cpu_offload needs strategy='fsdp' (DDP keeps a full replica on every GPU)")
    if lora_rank is not None and lora_rank < 1:
        raise UsageError(f"lora_rank must be >= 1 (or None for full fine-tuning), got {lora_rank}")
    arch = describe_backbone(backbone, size, **tiny_overrides)
    world = gpus * nodes
    dt = _dtypes(precision, strategy, arch.vision, kernels)
    per_image = arch.image_tokens(image_size, image_tiles)
    seq_len = text_tokens + images * per_image
    vision_positions = images * arch.vision_patches(image_size, image_tiles)
    notes: list[str] = []

    vision_params = arch.params_vision
    if lora_rank is not None:
        trainable = arch.lora_params(lora_rank)
        vision_trainable = False
        notes.append(f"LoRA r={lora_rank} on the LM projections: {trainable:,} trainable parameters; base frozen")
    else:
        trainable = arch.params_total - (vision_params if freeze_vision else 0)
        vision_trainable = not freeze_vision
    n_params = arch.params_total + (trainable if lora_rank is not None else 0)

    shard = world if strategy == "fsdp" else 1
    offloaded = 0 if cpu_offload else 1
    parameters = n_params * dt.param / shard * offloaded
    grad_buckets = 2 if (strategy == "ddp" and world > 1) else 1
    gradients = trainable * dt.grad * grad_buckets / shard * offloaded
    optimizer = trainable * dt.optim / shard * offloaded
    working = 0.0
    if strategy == "fsdp":
        trained_layer = max(arch.lm_layer_params, arch.vision_layer_params) if lora_rank is None else 0
        working = dt.gathered * (arch.root_params + 2 * max(arch.lm_layer_params, arch.vision_layer_params))
        # one unit's unsharded gradients (compute dtype) and its fp32 reduce-scatter buffer
        working += (dt.gathered + dt.grad) * trained_layer
        notes.append(
            "FSDP: as rewarddance.distributed.FSDP2Strategy: one unit per decoder/vision block, bf16 compute "
            "(bf16-mixed: FSDP2 param_dtype, fp32 master weights), root unit (embeddings, head) kept gathered"
        )
    weight_copies = 0.0
    if dt.casts and activation_checkpointing:
        # The peak is a layer's recompute in backward, where only that layer's bf16 weight copies are
        # alive. (The forward's autocast cache of every trained weight, 2 bytes each, is released when
        # the forward ends, and is smaller than the 4-byte gradients the total already counts.)
        weight_copies = 2.0 * arch.lm_matmul_params / arch.text.num_layers
    elif dt.casts:
        # autocast casts fp32 weights to bf16 per matmul: copies of trained weights are cached until
        # the forward ends and saved for backward, as are copies of frozen weights whose input needs a gradient.
        mm_weights = arch.lm_matmul_params + arch.lm_head_params
        if vision_trainable:
            mm_weights += arch.vision_matmul_params + arch.params_projector
        weight_copies = 2.0 * mm_weights
    if dt.casts:
        notes.append("DDP bf16-mixed: autocast keeps bf16 copies of the fp32 weights for backward")

    def activations(batch: int, checkpointing: bool) -> float:
        return _activations(
            arch,
            dt,
            batch=batch,
            seq_len=seq_len,
            vision_positions=vision_positions,
            image_tokens_total=images * (per_image - 2),
            pixel_values=images * arch.pixel_values(image_size, image_tiles),
            lora_rank=lora_rank,
            checkpointing=checkpointing,
            vision_trainable=vision_trainable,
            attention=attention,
            mask_bytes=1 if kernels == "cuda" else (dt.gathered if strategy == "fsdp" else dt.param),
        )

    def logit_bytes(batch: int) -> float:
        V, c = arch.text.vocab_size, dt.compute
        if logits == "full":
            return float(batch * seq_len * (V * (c + 4 + 4) + c * arch.text.hidden_size))
        return float(batch * answer_tokens * (V * (c + 4) + c * arch.text.hidden_size))

    acts_plain = activations(micro_batch_size, False)
    acts_ckpt = activations(micro_batch_size, True)
    fixed = parameters + working + gradients + optimizer + weight_copies
    per_sample = activations(1, activation_checkpointing) + logit_bytes(1)
    budget = ((gpu_memory_gib - reserved_gib) * GIB) / (1 + headroom) - fixed
    max_batch = max(0, int(budget // per_sample)) if per_sample > 0 else 0
    if logits == "answer":
        notes.append(f"logits at {answer_tokens} answer position(s) only (logits_to_keep), as rewarddance trains")
    return MemoryPlan(
        backbone=arch.name,
        strategy=strategy,
        world_size=world,
        micro_batch_size=micro_batch_size,
        seq_len=seq_len,
        image_tokens=per_image,
        vision_positions=vision_positions,
        precision=precision,
        lora_rank=lora_rank,
        activation_checkpointing=activation_checkpointing,
        freeze_vision=freeze_vision,
        cpu_offload=cpu_offload,
        params_total=n_params,
        params_trainable=trainable,
        parameters=parameters,
        fsdp_working_set=working,
        gradients=gradients,
        optimizer=optimizer,
        weight_copies=weight_copies,
        activations=acts_ckpt if activation_checkpointing else acts_plain,
        activations_no_checkpointing=acts_plain,
        activations_checkpointing=acts_ckpt,
        logits=logit_bytes(micro_batch_size),
        headroom=headroom,
        reserved=reserved_gib * GIB,
        gpu_memory=gpu_memory_gib * GIB,
        max_micro_batch_size=max_batch,
        notes=notes,
    )


def format_plan(plan: MemoryPlan) -> str:
    """A human-readable table of a :class:`MemoryPlan` (GiB per GPU)."""
    rows = [
        ("parameters", plan.parameters),
        ("FSDP unsharded working set", plan.fsdp_working_set),
        ("gradients", plan.gradients),
        ("optimizer (AdamW)", plan.optimizer),
        ("autocast weight copies", plan.weight_copies),
        ("activations (no checkpointing)", plan.activations_no_checkpointing),
        ("activations (checkpointing)", plan.activations_checkpointing),
        ("logits", plan.logits),
    ]
    tuning = f"LoRA r={plan.lora_rank}" if plan.lora_rank is not None else "full fine-tuning"
    head = (
        f"{plan.backbone}: {plan.params_total / 1e9:.3f} B parameters ({plan.params_trainable / 1e9:.3f} B trained, "
        f"{tuning}); {plan.strategy} on {plan.world_size} GPU(s), {plan.precision}, micro-batch "
        f"{plan.micro_batch_size} x {plan.seq_len} tokens ({plan.image_tokens} per image), "
        f"checkpointing {'on' if plan.activation_checkpointing else 'off'}"
        + (", vision frozen" if plan.freeze_vision else "")
        + (", CPU offload" if plan.cpu_offload else "")
    )
    width = max(len(r[0]) for r in rows) + 2
    lines = [head, "", f"{'per GPU':<{width}}{'GiB':>9}"]
    for name, value in rows:
        mark = ""
        if name.startswith("activations ("):
            used = ("(checkpointing)" in name) == plan.activation_checkpointing
            mark = "" if used else "   (not used)"
        lines.append(f"{name:<{width}}{value / GIB:>9.2f}{mark}")
    lines += [
        f"{'total':<{width}}{plan.total / GIB:>9.2f}",
        f"{f'+ {plan.headroom:.0%} headroom + {plan.reserved / GIB:.1f} GiB reserved':<{width}}"
        f"{plan.total_with_headroom / GIB:>9.2f}",
        f"{'GPU memory':<{width}}{plan.gpu_memory / GIB:>9.2f}",
        "",
        f"{'fits' if plan.fits else 'DOES NOT FIT'}; largest micro-batch that fits: {plan.max_micro_batch_size}",
    ]
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Measuring a real step on CPU (validation)
# --------------------------------------------------------------------------------------------


class _LiveTensorBytes(TorchDispatchMode):
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
    every tensor storage from creation to release (:class:`_LiveTensorBytes`), so the peak is the
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
    from PIL import Image

    from rewarddance.models.backbones import load_backbone
    from rewarddance.models.lora import LoraSettings, prepare_for_training

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
    tracker = _LiveTensorBytes()
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


# --------------------------------------------------------------------------------------------
# Grids for the docs
# --------------------------------------------------------------------------------------------

GRID: list[tuple[str, int | None, bool]] = [
    ("ddp", None, False),
    ("ddp", None, True),
    ("fsdp", None, False),
    ("fsdp", None, True),
    ("ddp", 64, False),
    ("ddp", 64, True),
    ("fsdp", 64, False),
    ("fsdp", 64, True),
]
"""(strategy, LoRA rank or None, checkpointing) columns of :func:`grid_table`."""


def grid_table(backbones: Mapping[str, tuple[str, str | None]], **kwargs: Any) -> str:
    """Markdown table: per backbone, GiB per GPU (with headroom) for each :data:`GRID` setting.

    Args:
        backbones: Row label -> (backbone name, size).
        **kwargs: Further :func:`estimate_memory` arguments (gpus, nodes, micro_batch_size, ...).

    Returns:
        The table; a cell reads ``GiB (largest micro-batch)``, bold when it does not fit.
    """
    header = ["size", "backbone", "params"] + [
        f"{s} {'LoRA' if r else 'full'}{' +ckpt' if ckpt else ''}" for s, r, ckpt in GRID
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, (name, size) in backbones.items():
        cells = []
        params = 0
        for strategy, rank, ckpt in GRID:
            plan = estimate_memory(
                name, size=size, strategy=strategy, lora_rank=rank, activation_checkpointing=ckpt, **kwargs
            )
            params = plan.params_total if rank is None else params
            cell = f"{plan.total_with_headroom / GIB:.1f} ({plan.max_micro_batch_size})"
            cells.append(cell if plan.fits else f"**{cell}**")
        lines.append("| " + " | ".join([label, f"`{name}`", f"{params / 1e9:.2f} B", *cells]) + " |")
    return "\n".join(lines)


def paper_backbones() -> dict[str, tuple[str, str | None]]:
    """The paper's sizes as :func:`grid_table` rows."""
    return {label: (hub_id, None) for label, hub_id in PAPER_SIZES.items()}
