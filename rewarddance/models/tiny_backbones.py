"""Tiny offline VLM backbones, one builder per family, for tests, tutorials and CPU experiments.

Each ``build_tiny_<family>`` makes a random model of the family's real architecture (the same
transformers classes as the hub checkpoint, shrunk by a :class:`TinySize`) and its image-only
processor, with a tokenizer trained locally (:func:`rewarddance.models.tokenizer.train_tiny_tokenizer`):
nothing is downloaded, so they build on a machine without hub access. Two presets, ``"tiny"``
(~1M parameters) and ``"small"`` (~5M), give the model-scaling studies two points; any
:class:`TinySize` field can be overridden by keyword. :func:`rewarddance.models.backbones.load_backbone`
builds them for the names ``"tiny-<family>"``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from transformers import (
    AutoModelForImageTextToText,
    InternVLConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2VLConfig,
    Qwen3VLConfig,
)
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from rewarddance.errors import UsageError
from rewarddance.models.processors import (
    InternVLImageOnlyProcessor,
    Qwen2_5_VLImageOnlyProcessor,
    Qwen2VLImageOnlyProcessor,
    Qwen3VLImageOnlyProcessor,
)
from rewarddance.models.tokenizer import train_tiny_tokenizer

# --------------------------------------------------------------------------------------------
# Tiny sizes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TinySize:
    """Shape of a tiny offline backbone. Image tokens per image = (image_size / patch_size / 2)^2.

    Attributes:
        hidden_size: Language-model width.
        num_layers: Language-model layers.
        num_heads: Attention heads (head_dim = hidden_size / num_heads; Qwen's M-RoPE needs it even).
        num_kv_heads: Key/value heads (grouped-query attention).
        intermediate_size: Language-model MLP width.
        vision_hidden_size: Vision-tower width.
        vision_depth: Vision-tower layers.
        vision_heads: Vision attention heads.
        vision_intermediate_size: Vision MLP width.
        image_size: Side of the square the image processor resizes to (pixels).
        patch_size: Vision patch side; tokens are 2x2 patches merged (Qwen spatial merge,
            InternVL pixel shuffle), so 64 px with patch 8 gives 16 image tokens.
        max_position_embeddings: Longest sequence.
    """

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    vision_hidden_size: int = 64
    vision_depth: int = 2
    vision_heads: int = 2
    vision_intermediate_size: int = 128
    image_size: int = 64
    patch_size: int = 8
    max_position_embeddings: int = 4096

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(f"hidden_size/num_heads/num_kv_heads must divide evenly: {self}")
        if (self.hidden_size // self.num_heads) % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings: {self}")
        if self.vision_hidden_size % self.vision_heads:
            raise ValueError(f"vision_hidden_size must be divisible by vision_heads: {self}")
        if self.image_size % (2 * self.patch_size):
            raise ValueError(f"image_size must be a multiple of 2 * patch_size (2x2 token merge): {self}")

    @property
    def head_dim(self) -> int:
        """Language-model attention head width."""
        return self.hidden_size // self.num_heads

    @property
    def image_tokens(self) -> int:
        """Image tokens per (square, ``image_size``) image."""
        return (self.image_size // self.patch_size // 2) ** 2


TINY_PRESETS: dict[str, TinySize] = {
    "tiny": TinySize(),
    "small": TinySize(
        hidden_size=256,
        num_layers=4,
        num_heads=8,
        num_kv_heads=4,
        intermediate_size=768,
        vision_hidden_size=128,
        vision_depth=4,
        vision_heads=4,
        vision_intermediate_size=512,
    ),
}
"""Named tiny sizes; ``size=`` picks one, keyword overrides adjust single fields."""


def tiny_backbone_size(preset: str | None, overrides: Mapping[str, Any]) -> TinySize:
    """The :data:`TINY_PRESETS` entry ``preset`` (default ``"tiny"``) with ``overrides`` applied.

    Raises:
        UsageError: An unknown preset or field name, naming the known ones.
    """
    preset = preset or "tiny"
    if preset not in TINY_PRESETS:
        raise UsageError(f"Unknown tiny size {preset!r}; choose from {sorted(TINY_PRESETS)}.")
    fields = [f.name for f in dataclasses.fields(TinySize)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise UsageError(f"Unknown tiny size fields {unknown}; TinySize has {fields}.")
    return dataclasses.replace(TINY_PRESETS[preset], **overrides)


TinyBuilder = Callable[[TinySize, str | None], tuple[PreTrainedModel, ProcessorMixin]]
"""Signature of ``BackboneSpec.build_tiny``: (size, attn_implementation) -> (model, processor)."""


def _mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies over (time, height, width) like Qwen's [16, 24, 24]."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


# --------------------------------------------------------------------------------------------
# Tiny tokenizers and chat templates (hub checkpoints bring their own)
# --------------------------------------------------------------------------------------------

_QWEN_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
"""ChatML as in Qwen2/2.5/3-VL, without the default system prompt (shorter sequences)."""

_INTERNVL_CHAT_TEMPLATE = _QWEN_CHAT_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "<IMG_CONTEXT>\\n")
"""ChatML as in the transformers-native InternVL3 checkpoints (one ``<IMG_CONTEXT>`` per image)."""

_QWEN_TOKENS = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_start_token": "<|vision_start|>",
    "vision_end_token": "<|vision_end|>",
    "im_start_token": "<|im_start|>",
}
_INTERNVL_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
    "im_start_token": "<|im_start|>",
}
_CHATML_SPECIAL = {"pad_token": "<|endoftext|>", "eos_token": "<|im_end|>"}


def _text_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    return {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id, "bos_token_id": None}


def _from_config(config: Any, attn_implementation: str | None) -> PreTrainedModel:
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    return AutoModelForImageTextToText.from_config(config, **kwargs)


# --------------------------------------------------------------------------------------------
# Tiny builders: TinySize -> (model, processor), offline
# --------------------------------------------------------------------------------------------


def _qwen_tokenizer_and_image_processor(size: TinySize) -> tuple[PreTrainedTokenizerBase, Qwen2VLImageProcessorPil]:
    tokenizer = train_tiny_tokenizer(
        special_tokens=_CHATML_SPECIAL, extra_special_tokens=_QWEN_TOKENS, chat_template=_QWEN_CHAT_TEMPLATE
    )
    pixels = size.image_size * size.image_size
    # min = max pixels: every image is resized to ~image_size^2 pixels (aspect kept, sides rounded
    # to 2*patch), so a square image always yields size.image_tokens tokens.
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=size.patch_size,
        merge_size=2,
        temporal_patch_size=2,
        size={"shortest_edge": pixels, "longest_edge": pixels},
    )
    return tokenizer, image_processor


def _qwen_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    return {
        "image_token_id": tokenizer.image_token_id,
        "video_token_id": tokenizer.video_token_id,
        "vision_start_token_id": tokenizer.vision_start_token_id,
        "vision_end_token_id": tokenizer.vision_end_token_id,
    }


def _qwen_text_config(size: TinySize, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": size.hidden_size,
        "intermediate_size": size.intermediate_size,
        "num_hidden_layers": size.num_layers,
        "num_attention_heads": size.num_heads,
        "num_key_value_heads": size.num_kv_heads,
        "max_position_embeddings": size.max_position_embeddings,
        # M-RoPE: the (t, h, w) sections must sum to head_dim / 2 or the forward fails.
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": _mrope_section(size.head_dim),
        },
        **_text_ids(tokenizer),
    }


def build_tiny_qwen2_vl(
    size: TinySize, attn_implementation: str | None = None
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Tiny Qwen2-VL: ViT with 2D RoPE, 2x2 patch merger, M-RoPE language model."""
    tokenizer, image_processor = _qwen_tokenizer_and_image_processor(size)
    config = Qwen2VLConfig(
        text_config=_qwen_text_config(size, tokenizer),
        vision_config={
            "depth": size.vision_depth,
            "embed_dim": size.vision_hidden_size,
            "hidden_size": size.hidden_size,  # merger output = LM width
            # Qwen2-VL sizes its vision MLP by an integer ratio, not a width.
            "mlp_ratio": max(1, size.vision_intermediate_size // size.vision_hidden_size),
            "num_heads": size.vision_heads,
            "patch_size": size.patch_size,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        tie_word_embeddings=True,
        **_qwen_ids(tokenizer),
    )
    processor = Qwen2VLImageOnlyProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=tokenizer.chat_template
    )
    return _from_config(config, attn_implementation), processor


def build_tiny_qwen2_5_vl(
    size: TinySize, attn_implementation: str | None = None
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Tiny Qwen2.5-VL: SwiGLU/RMSNorm ViT with window attention, M-RoPE language model."""
    tokenizer, image_processor = _qwen_tokenizer_and_image_processor(size)
    config = Qwen2_5_VLConfig(
        text_config=_qwen_text_config(size, tokenizer),
        vision_config={
            "depth": size.vision_depth,
            "hidden_size": size.vision_hidden_size,
            "intermediate_size": size.vision_intermediate_size,
            "out_hidden_size": size.hidden_size,
            "num_heads": size.vision_heads,
            "patch_size": size.patch_size,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            # One window covers the whole image at this size; the last block is full attention as upstream.
            "window_size": size.image_size,
            "fullatt_block_indexes": [size.vision_depth - 1],
        },
        tie_word_embeddings=True,
        **_qwen_ids(tokenizer),
    )
    processor = Qwen2_5_VLImageOnlyProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=tokenizer.chat_template
    )
    return _from_config(config, attn_implementation), processor


def build_tiny_qwen3_vl(
    size: TinySize, attn_implementation: str | None = None
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Tiny Qwen3-VL: ViT with learned + rotary positions, DeepStack features, interleaved M-RoPE."""
    tokenizer, image_processor = _qwen_tokenizer_and_image_processor(size)
    image_processor.image_mean = [0.5, 0.5, 0.5]  # Qwen3-VL normalises to [-1, 1]
    image_processor.image_std = [0.5, 0.5, 0.5]
    text_config = _qwen_text_config(size, tokenizer)
    text_config["head_dim"] = size.head_dim
    text_config["rope_parameters"]["mrope_interleaved"] = True
    # DeepStack injects features of a few vision layers into the first LM layers: at most 3 and at
    # most as many as either stack has.
    k = min(3, size.vision_depth, size.num_layers)
    deepstack = sorted({size.vision_depth * (i + 1) // (k + 1) for i in range(k)})
    grid = size.image_size // size.patch_size
    config = Qwen3VLConfig(
        text_config=text_config,
        vision_config={
            "depth": size.vision_depth,
            "hidden_size": size.vision_hidden_size,
            "intermediate_size": size.vision_intermediate_size,
            "out_hidden_size": size.hidden_size,
            "num_heads": size.vision_heads,
            "patch_size": size.patch_size,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            # Learned position table for the native grid (interpolated for other sizes).
            "num_position_embeddings": grid * grid,
            "deepstack_visual_indexes": deepstack,
        },
        tie_word_embeddings=True,
        **_qwen_ids(tokenizer),
    )
    processor = Qwen3VLImageOnlyProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=tokenizer.chat_template
    )
    return _from_config(config, attn_implementation), processor


def build_tiny_internvl(
    size: TinySize, attn_implementation: str | None = None
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Tiny InternVL (transformers-native, as InternVL3-*-hf): InternViT, pixel shuffle, MLP projector, Qwen2 LM."""
    tokenizer = train_tiny_tokenizer(
        special_tokens=_CHATML_SPECIAL, extra_special_tokens=_INTERNVL_TOKENS, chat_template=_INTERNVL_CHAT_TEMPLATE
    )
    config = InternVLConfig(
        vision_config={
            "hidden_size": size.vision_hidden_size,
            "num_hidden_layers": size.vision_depth,
            "num_attention_heads": size.vision_heads,
            "intermediate_size": size.vision_intermediate_size,
            "image_size": [size.image_size, size.image_size],
            "patch_size": [size.patch_size, size.patch_size],
        },
        text_config={
            "model_type": "qwen2",
            "vocab_size": len(tokenizer),
            "hidden_size": size.hidden_size,
            "intermediate_size": size.intermediate_size,
            "num_hidden_layers": size.num_layers,
            "num_attention_heads": size.num_heads,
            "num_key_value_heads": size.num_kv_heads,
            "max_position_embeddings": size.max_position_embeddings,
            **_text_ids(tokenizer),
        },
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=size.image_tokens,
        downsample_ratio=0.5,  # pixel shuffle: 2x2 patches -> one token
        tie_word_embeddings=True,
    )
    # One 64 px tile per image: InternVL's dynamic tiling (crop_to_patches) would multiply tokens.
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": size.image_size, "width": size.image_size}, crop_to_patches=False
    )
    processor = InternVLImageOnlyProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_length=size.image_tokens,
        crop_to_patches=False,
        chat_template=tokenizer.chat_template,
    )
    return _from_config(config, attn_implementation), processor
