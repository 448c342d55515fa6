"""Image-only processor subclasses for the VLM families, registered with ``AutoProcessor``.

The upstream processors of Qwen2-VL, Qwen2.5-VL, Qwen3-VL and InternVL take a ``video_processor``
in ``__init__``, and transformers' video processors need torchvision, which rewarddance does not
depend on (it is not in ``pyproject.toml``, and each torchvision release requires one exact torch
release: 0.28.0 pins ``torch==2.13.0``). ``ProcessorMixin`` derives its sub-processors from the
``__init__`` signature, so a subclass whose ``__init__`` omits ``video_processor`` is an
image-only processor that saves and loads without torchvision. rewarddance feeds video to every
family as a list of sampled frames through the image path (see ``rewarddance.models.inputs``),
so nothing is lost.

Registering each subclass with ``AutoProcessor.register`` makes
``AutoProcessor.from_pretrained(folder)`` resolve the ``processor_class`` name written by
``save_pretrained``. When it cannot resolve a class, ``AutoProcessor`` silently returns a bare
tokenizer; :func:`ensure_processor` turns that into a clear error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from transformers import (
    AutoProcessor,
    InternVLConfig,
    PreTrainedTokenizerBase,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2VLConfig,
    Qwen3VLConfig,
)
from transformers.models.internvl.processing_internvl import InternVLProcessor
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

# The upstream __init__ passes video_processor positionally to ProcessorMixin.__init__, which zips
# the arguments with get_attributes() (read from *our* signature: image_processor, tokenizer), so
# the trailing None is dropped and no video processor is ever required.


class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
    """Qwen2-VL processor without the video processor (video = frames through the image path)."""

    def __init__(
        self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class Qwen2_5_VLImageOnlyProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor without the video processor."""

    def __init__(
        self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class Qwen3VLImageOnlyProcessor(Qwen3VLProcessor):
    """Qwen3-VL processor without the video processor."""

    def __init__(
        self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class InternVLImageOnlyProcessor(InternVLProcessor):
    """InternVL processor without the video processor, with tiling as a saved setting.

    ``image_seq_length`` and ``crop_to_patches`` are ``__init__`` arguments, so ``save_pretrained``
    writes them to ``processor_config.json`` and a reload keeps them (instead of the defaults 256 and
    True, which would break a tiny model's token count).

    Args:
        image_processor: The GotOcr2 image processor.
        tokenizer: Tokenizer with InternVL's image tokens as attributes.
        image_seq_length: Tokens per image tile: (image_size / patch_size)^2 * downsample_ratio^2.
        crop_to_patches: Dynamic tiling into up to ``max_patches`` tiles plus a thumbnail, as the
            hub checkpoints were trained with. The upstream processor forces it on for every call
            through a class-level default; here it is per instance so tiny models can turn it off.
        chat_template: Jinja chat template.
        **kwargs: Passed to ``ProcessorMixin``.
    """

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        image_seq_length: int = 256,
        crop_to_patches: bool = True,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            image_processor, tokenizer, None, image_seq_length=image_seq_length, chat_template=chat_template, **kwargs
        )
        self.crop_to_patches = crop_to_patches
        # _merge_kwargs reads processor-level defaults from the `images_kwargs` attribute.
        self.images_kwargs = {**InternVLProcessor.images_kwargs, "crop_to_patches": crop_to_patches}


IMAGE_ONLY_PROCESSORS: dict[str, type[ProcessorMixin]] = {
    "qwen2_vl": Qwen2VLImageOnlyProcessor,
    "qwen2_5_vl": Qwen2_5_VLImageOnlyProcessor,
    "qwen3_vl": Qwen3VLImageOnlyProcessor,
    "internvl": InternVLImageOnlyProcessor,
}
"""Image-only processor class by transformers ``model_type``."""

_CONFIGS: dict[str, type] = {
    "qwen2_vl": Qwen2VLConfig,
    "qwen2_5_vl": Qwen2_5_VLConfig,
    "qwen3_vl": Qwen3VLConfig,
    "internvl": InternVLConfig,
}


UPSTREAM_VIDEO_PROCESSORS: dict[str, str] = {
    "qwen2_vl": "Qwen2VLVideoProcessor",
    "qwen2_5_vl": "Qwen2VLVideoProcessor",
    "qwen3_vl": "Qwen3VLVideoProcessor",
}
"""The video processor the upstream processor of each portable family loads (read from transformers 5.25's
``video_processing_auto`` mapping; written by name because without torchvision that mapping holds None)."""

_SHARED_VIDEO_SETTINGS = ("patch_size", "merge_size", "temporal_patch_size", "image_mean", "image_std")


def write_upstream_processor_files(folder: str | os.PathLike, model_type: str) -> bool:
    """Rewrite a saved image-only processor as the upstream processor, so plain transformers loads it.

    ``save_pretrained`` of an image-only subclass names that subclass in ``processor_config.json``;
    a process without rewarddance cannot resolve the name and ``AutoProcessor`` silently returns a
    bare tokenizer. The upstream layout, as hub checkpoints ship it: ``processor_class`` is the
    upstream class, the image processor is named by its PIL class (the one rewarddance itself
    runs without torchvision), and ``video_preprocessor_config.json`` holds the video processor the
    upstream ``__init__`` requires (building it needs torchvision, as for any hub Qwen-VL folder).
    rewarddance loads such a folder with its image-only class all the same (``load_backbone``
    calls that class's ``from_pretrained``, whatever the file names).

    Families whose image-only class keeps settings the upstream class does not know (InternVL's
    per-instance ``crop_to_patches``) are left as saved: an upstream load would silently tile.

    Args:
        folder: A folder the backbone's processor was just saved to.
        model_type: The transformers ``model_type`` of the backbone (``config.model_type``).

    Returns:
        True if the files were rewritten, False for a family left as saved.
    """
    if model_type not in UPSTREAM_VIDEO_PROCESSORS:
        return False
    folder = Path(folder)
    path = folder / "processor_config.json"
    config = json.loads(path.read_text())
    upstream = IMAGE_ONLY_PROCESSORS[model_type].__mro__[1].__name__
    image = config.get("image_processor")
    if not isinstance(image, dict):
        raise ValueError(f"{path}: no image_processor section to rewrite (saved by another transformers release?)")
    pil_name = type_name = image.get("image_processor_type", "")
    if not type_name.endswith("Pil"):
        pil_name = f"{type_name}Pil"
    config["processor_class"] = upstream
    config["image_processor"] = {**image, "image_processor_type": pil_name}
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    video = {k: image[k] for k in _SHARED_VIDEO_SETTINGS if k in image}
    video.update(video_processor_type=UPSTREAM_VIDEO_PROCESSORS[model_type], processor_class=upstream)
    (folder / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2, sort_keys=True) + "\n")
    return True


def register_processors() -> None:
    """Register every image-only processor with ``AutoProcessor`` (idempotent).

    ``exist_ok=True`` because each config class already maps to its upstream processor; the
    mapping only matters when a folder names no processor class, while folders written by
    ``save_pretrained`` name ours, which ``AutoProcessor`` finds among the registered classes.
    """
    for model_type, processor_cls in IMAGE_ONLY_PROCESSORS.items():
        AutoProcessor.register(_CONFIGS[model_type], processor_cls, exist_ok=True)


def ensure_processor(obj: Any, name_or_path: str) -> ProcessorMixin:
    """Check that a loaded object is a real multimodal processor.

    Args:
        obj: What ``AutoProcessor.from_pretrained`` (or a processor class) returned.
        name_or_path: Where it was loaded from, for the message.

    Returns:
        ``obj``, typed as a processor.

    Raises:
        TypeError: If ``obj`` is a bare tokenizer or anything else that is not a ``ProcessorMixin``.
    """
    if isinstance(obj, ProcessorMixin):
        return obj
    if isinstance(obj, PreTrainedTokenizerBase):
        raise TypeError(
            f"AutoProcessor.from_pretrained({name_or_path!r}) returned a bare tokenizer ({type(obj).__name__}), "
            "not a multimodal processor: the processor class named in processor_config.json could not be "
            "resolved. If the folder was saved by rewarddance, import rewarddance.models first (it registers "
            f"the image-only processors {sorted(c.__name__ for c in IMAGE_ONLY_PROCESSORS.values())})."
        )
    raise TypeError(f"Expected a transformers ProcessorMixin from {name_or_path!r}, got {type(obj).__name__}.")


register_processors()
