"""Model builders, no Lightning here: VLM backbones for generative reward models (``backbones``, ``tiny_backbones``),
diffusers generators (``generators``, ``tiny_generators``) and their step-level adapters for RL and search
(``adapters``, with the noise-schedule math in ``schedules``), LoRA (``lora``), processors, tokenizers and inputs.

Typical use::

    from rewarddance.models import load_backbone, prepare_for_training, LoraSettings

    backbone = load_backbone("tiny-qwen2-vl")            # or "internvl", size="8B", or a folder
    batch = backbone.encode(["<image> Does the image match 'a red circle'? Answer yes or no."], [[image]])
    reward = backbone.reward(batch)                       # P("yes") at the answer position
    backbone.model = prepare_for_training(backbone.model, LoraSettings(r=8), gradient_checkpointing=True)

Importing this package registers the image-only processors with ``AutoProcessor``, which
folders saved by rewarddance need to load back as processors.
"""

from rewarddance.models.backbones import BACKBONES, Backbone, BackboneSpec, load_backbone, register_backbone
from rewarddance.models.dtypes import resolve_dtype
from rewarddance.models.inputs import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER, encode, prompt_to_messages, sample_frames
from rewarddance.models.logits import last_token_logits, yes_no_log_probs, yes_probability
from rewarddance.models.lora import (
    LANGUAGE_MODEL_LORA_REGEX,
    FreezeError,
    LoraSettings,
    freeze_parameters,
    lora_module_names,
    prepare_for_training,
    trainable_parameter_count,
)
from rewarddance.models.processors import IMAGE_ONLY_PROCESSORS, ensure_processor
from rewarddance.models.tiny_backbones import TINY_PRESETS, TinySize
from rewarddance.models.tokenizer import single_token_id, train_tiny_tokenizer

__all__ = [
    "BACKBONES",
    "IMAGE_ONLY_PROCESSORS",
    "IMAGE_PLACEHOLDER",
    "LANGUAGE_MODEL_LORA_REGEX",
    "TINY_PRESETS",
    "VIDEO_PLACEHOLDER",
    "Backbone",
    "BackboneSpec",
    "FreezeError",
    "LoraSettings",
    "TinySize",
    "encode",
    "ensure_processor",
    "freeze_parameters",
    "last_token_logits",
    "load_backbone",
    "lora_module_names",
    "prepare_for_training",
    "prompt_to_messages",
    "register_backbone",
    "resolve_dtype",
    "sample_frames",
    "single_token_id",
    "train_tiny_tokenizer",
    "trainable_parameter_count",
    "yes_no_log_probs",
    "yes_probability",
]
