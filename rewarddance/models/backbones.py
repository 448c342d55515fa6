"""The VLM backbone registry: a :class:`~rewarddance.registry.Registry` of families and two functions.

Every family is one :class:`BackboneSpec` in :data:`BACKBONES`, registered with
:func:`register_backbone`; :func:`load_backbone` turns a name into a :class:`Backbone`
(model + processor + the ids of "yes" and "no"). Names resolve as follows:

- ``"qwen2.5-vl"`` (optionally ``size="7B"``): the family's hub checkpoint of that size;
- ``"Qwen/Qwen2.5-VL-3B-Instruct"``: that hub checkpoint, its family read from its config;
- ``"/path/saved/by/save_pretrained"``: that folder, by the very same code path as a hub id;
- ``"tiny-qwen2.5-vl"`` (optionally ``size="small"``, ``hidden_size=...``): a tiny random model
  of the same architecture, built offline from a config, with a project-trained tokenizer;
- ``"shapes-vlm-tiny"`` / ``"shapes-vlm-small"``: the tiny VLMs pretrained on the shapes world
  and bundled in ``data/backbones/`` (:data:`LOCAL_BACKBONES`), loaded as folders.

Hub checkpoints and folders go through ``AutoConfig`` / ``AutoModelForImageTextToText`` /
``<family image-only processor>.from_pretrained``: a folder path and a hub id differ only in the
string. The processor is loaded with the family's image-only class (``processors.py``) rather
than the upstream one, so that a checkpoint behaves the same with or without torchvision;
videos go through the image path as frames anyway.

The tiny variants (:mod:`rewarddance.models.tiny_backbones`) exist for tests, tutorials and CPU
experiments, and build without network access. Two presets, ``"tiny"`` (~1M parameters) and
``"small"`` (~5M), give the model-scaling studies two points; any :class:`TinySize` field can be
overridden by keyword.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    BatchFeature,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
)
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from rewarddance.errors import BadFileError, RewardDanceError, UsageError, hub_hint
from rewarddance.models.dtypes import resolve_dtype
from rewarddance.models.inputs import Message, Visual, encode
from rewarddance.models.internvl_sizes import INTERNVL_SIZES, REMOTE_CODE_ARCHITECTURES
from rewarddance.models.logits import Normalization, last_token_logits, yes_no_log_probs
from rewarddance.models.processors import (
    InternVLImageOnlyProcessor,
    Qwen2_5_VLImageOnlyProcessor,
    Qwen2VLImageOnlyProcessor,
    Qwen3VLImageOnlyProcessor,
    ensure_processor,
)
from rewarddance.models.tiny_backbones import (
    TinyBuilder,
    TinySize,
    build_tiny_internvl,
    build_tiny_qwen2_5_vl,
    build_tiny_qwen2_vl,
    build_tiny_qwen3_vl,
    tiny_backbone_size,
)
from rewarddance.models.tokenizer import single_token_id
from rewarddance.registry import Registry

TINY_PREFIX = "tiny-"
"""Prefix that selects a family's tiny offline variant, e.g. ``"tiny-internvl"``."""

BUNDLED_BACKBONES_DIR = Path(__file__).resolve().parents[2] / "data" / "backbones"
"""Where the repository keeps its pretrained tiny backbones (``configs/pretrain/`` makes them)."""

LOCAL_BACKBONES: dict[str, Path] = {
    "shapes-vlm-tiny": BUNDLED_BACKBONES_DIR / "shapes-vlm-tiny",
    "shapes-vlm-small": BUNDLED_BACKBONES_DIR / "shapes-vlm-small",
}
"""Names that stand for ``save_pretrained`` folders; :func:`load_backbone` loads them like any folder."""


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackboneSpec:
    """One VLM family.

    Attributes:
        name: Registry key, e.g. ``"qwen2.5-vl"``; ``"tiny-" + name`` selects the tiny variant.
        model_type: transformers ``config.model_type``; identifies the family of a hub id or folder.
        processor_class: Image-only processor class used to load this family's processors.
        build_tiny: Builds a random tiny model and its processor from a :class:`TinySize`, offline.
        hub_ids: Hub checkpoints by size label (documented, downloaded only when asked for).
        default_size: Size label used when none is given.
        vision_patterns: Regexes on parameter names of the vision encoder.
        projector_patterns: Regexes on parameter names of the vision-to-language projector.
    """

    name: str
    model_type: str
    processor_class: type[ProcessorMixin]
    build_tiny: TinyBuilder
    hub_ids: Mapping[str, str]
    default_size: str
    vision_patterns: tuple[str, ...]
    projector_patterns: tuple[str, ...]


BACKBONES: Registry[BackboneSpec] = Registry(
    "backbone family", hint="Add one with rewarddance.models.register_backbone."
)
"""All registered families by name."""


def register_backbone(spec: BackboneSpec, *, overwrite: bool = False) -> BackboneSpec:
    """Add a family to :data:`BACKBONES`.

    Args:
        spec: The family.
        overwrite: Replace an existing entry of the same name instead of raising.

    Returns:
        ``spec`` (so it can be used as a one-liner at module level).

    Raises:
        ValueError: If the name starts with ``"tiny-"``, ``default_size`` is not among ``hub_ids``, or
            the name is taken (and ``overwrite`` is False).
    """
    if spec.name.startswith(TINY_PREFIX):
        raise ValueError(f"Family names must not start with {TINY_PREFIX!r} (reserved for tiny variants): {spec.name}")
    if spec.default_size not in spec.hub_ids:
        raise ValueError(f"default_size {spec.default_size!r} is not among hub_ids {sorted(spec.hub_ids)}")
    return BACKBONES.register(spec.name, spec, overwrite=overwrite)


_QWEN_VISION = (r"(^|\.)visual\.(?!merger|deepstack_merger)",)
_QWEN_PROJECTOR = (r"(^|\.)visual\.(merger|deepstack_merger_list)\.",)

register_backbone(
    BackboneSpec(
        name="qwen2-vl",
        model_type="qwen2_vl",
        processor_class=Qwen2VLImageOnlyProcessor,
        build_tiny=build_tiny_qwen2_vl,
        hub_ids={
            "2B": "Qwen/Qwen2-VL-2B-Instruct",
            "7B": "Qwen/Qwen2-VL-7B-Instruct",
            "72B": "Qwen/Qwen2-VL-72B-Instruct",
        },
        default_size="2B",
        vision_patterns=_QWEN_VISION,
        projector_patterns=_QWEN_PROJECTOR,
    )
)
register_backbone(
    BackboneSpec(
        name="qwen2.5-vl",
        model_type="qwen2_5_vl",
        processor_class=Qwen2_5_VLImageOnlyProcessor,
        build_tiny=build_tiny_qwen2_5_vl,
        hub_ids={
            "3B": "Qwen/Qwen2.5-VL-3B-Instruct",
            "7B": "Qwen/Qwen2.5-VL-7B-Instruct",
            "32B": "Qwen/Qwen2.5-VL-32B-Instruct",
            "72B": "Qwen/Qwen2.5-VL-72B-Instruct",
        },
        default_size="3B",
        vision_patterns=_QWEN_VISION,
        projector_patterns=_QWEN_PROJECTOR,
    )
)
register_backbone(
    BackboneSpec(
        name="qwen3-vl",
        model_type="qwen3_vl",
        processor_class=Qwen3VLImageOnlyProcessor,
        build_tiny=build_tiny_qwen3_vl,
        hub_ids={
            "2B": "Qwen/Qwen3-VL-2B-Instruct",
            "4B": "Qwen/Qwen3-VL-4B-Instruct",
            "8B": "Qwen/Qwen3-VL-8B-Instruct",
            "32B": "Qwen/Qwen3-VL-32B-Instruct",
        },
        default_size="2B",
        vision_patterns=_QWEN_VISION,
        projector_patterns=_QWEN_PROJECTOR,
    )
)
register_backbone(
    BackboneSpec(
        name="internvl",
        model_type="internvl",
        processor_class=InternVLImageOnlyProcessor,
        build_tiny=build_tiny_internvl,
        # One table for the loader and the planner (internvl_sizes.py): the paper's 1B..26B, each
        # mapped to a transformers-native checkpoint, and the other InternVL3/3.5 sizes.
        hub_ids={label: checkpoint.hub_id for label, checkpoint in INTERNVL_SIZES.items()},
        default_size="1B",
        vision_patterns=(r"(^|\.)vision_tower\.",),
        projector_patterns=(r"(^|\.)multi_modal_projector\.",),
    )
)


# --------------------------------------------------------------------------------------------
# The loaded backbone
# --------------------------------------------------------------------------------------------


@dataclass
class Backbone:
    """A loaded VLM with everything needed to score: model, processor, and the answer token ids.

    Attributes:
        model: The ``AutoModelForImageTextToText`` model (possibly wrapped by PEFT later).
        processor: The family's multimodal processor (a ``ProcessorMixin``).
        family: Registry name of the family, e.g. ``"internvl"``.
        name_or_path: What was loaded (hub id, folder, or ``"tiny-..."`` name).
        yes_token_id: Id of the single token "yes".
        no_token_id: Id of the single token "no".
        image_token: The token the processor repeats once per image feature.
        image_token_id: Its id.
        tiny_size: The :class:`TinySize` of a tiny backbone, else None.
    """

    model: PreTrainedModel
    processor: ProcessorMixin
    family: str
    name_or_path: str
    yes_token_id: int
    no_token_id: int
    image_token: str
    image_token_id: int
    tiny_size: TinySize | None = None

    @property
    def spec(self) -> BackboneSpec:
        """The family's registry entry."""
        return BACKBONES[self.family]

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The processor's tokenizer."""
        return self.processor.tokenizer

    def image_tokens(self, width: int, height: int) -> int:
        """Number of tokens one image placeholder of this size expands to (including InternVL's <img></img>).

        Counted by running the processor on a blank image of that size, so the answer is what
        :meth:`encode` puts into the sequence on every transformers release. The processor's own
        ``_get_num_multimodal_tokens`` changed meaning under us: InternVL's count included the
        ``<img>``/``</img>`` markers its placeholder expands to in transformers 5.24 and counts only
        the ``<IMG_CONTEXT>`` tokens in 5.25, while the sequence itself did not change.

        Args:
            width: Image width in pixels.
            height: Image height in pixels.

        Returns:
            Token count per image.
        """
        blank = Image.new("RGB", (width, height))
        expanded = self.processor(text=[self.image_token], images=[blank])["input_ids"][0]
        # Whatever else the tokenizer adds around the text (a BOS token, say) is in both counts.
        unexpanded = self.tokenizer(self.image_token)["input_ids"]
        return len(expanded) - len(unexpanded) + 1

    def encode(
        self,
        samples: Sequence[str | Sequence[Message]],
        visuals: Sequence[Sequence[Visual]],
        *,
        answers: Sequence[str] | None = None,
        max_length: int | None = None,
    ) -> BatchFeature:
        """Model inputs for a batch; see :func:`rewarddance.models.inputs.encode`."""
        return encode(self.processor, samples, visuals, answers=answers, max_length=max_length)

    def yes_no_log_probs(self, inputs: Mapping[str, Any], normalization: Normalization = "yes_no") -> torch.Tensor:
        """``[batch, 2]`` log P(yes), log P(no) at the last position (see ``rewarddance.judge.readout``)."""
        logits = last_token_logits(self.model, inputs)
        return yes_no_log_probs(logits, self.yes_token_id, self.no_token_id, normalization)

    def reward(self, inputs: Mapping[str, Any], normalization: Normalization = "yes_no") -> torch.Tensor:
        """``[batch]`` reward P(yes) at the last position."""
        return self.yes_no_log_probs(inputs, normalization)[:, 0].exp()

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Save model and processor to one folder that :func:`load_backbone` reads back.

        A PEFT-wrapped model saves its adapter only; merge it first
        (``model.merge_and_unload()``) to save a standalone checkpoint.
        """
        self.model.save_pretrained(path)
        self.processor.save_pretrained(path)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _spec_for_model_type(model_type: str, name_or_path: str) -> BackboneSpec:
    for spec in BACKBONES.values():
        if spec.model_type == model_type:
            return spec
    known = {s.model_type: s.name for s in BACKBONES.values()}
    hint = "Add one with rewarddance.models.register_backbone."
    if model_type == "internvl_chat":
        # InternVL's remote-code format: the same weights exist natively for the sizes we register.
        hint = (
            "InternVL's remote-code format (internvl_chat) is not a registered family: use a native "
            f"checkpoint (family 'internvl', sizes {sorted(INTERNVL_SIZES)}), or convert this one with "
            "transformers' models/internvl/convert_internvl_weights_to_hf.py and load the folder it writes."
        )
    raise UsageError(f"{name_or_path!r} is a {model_type!r} model; registered families are {known}. {hint}")


def checkpoint_for(family: str, size: str | None = None) -> str:
    """The hub id of a family's size (its default size without one).

    :func:`load_backbone` and ``rewarddance.planning.describe_backbone`` both resolve family
    sizes here, so they accept exactly the same names and sizes.

    Raises:
        UsageError: Unknown family, or a size the family does not have (the message lists its sizes).
    """
    spec = BACKBONES[family]
    label = size or spec.default_size
    if label not in spec.hub_ids:
        raise UsageError(f"{family!r} has no size {label!r}; choose from {sorted(spec.hub_ids)}.")
    return spec.hub_ids[label]


def remote_code_message(name: str, detail: str) -> str:
    """How to opt in to a checkpoint's own Python code; ``detail`` says why it needs it."""
    return (
        f"backbone {name!r} runs its own Python code from the checkpoint ({detail}); rewarddance never "
        "trusts remote code by default. Read that code, then opt in with trust_remote_code: "
        "`backbone_kwargs: {trust_remote_code: true}` under a reward task's model config (command line: "
        "`--model.backbone_kwargs '{trust_remote_code: true}'`; pretraining: `backbone_overrides`), or "
        "`load_backbone(..., trust_remote_code=True)` in Python. Its model_type also needs a registered "
        "family (rewarddance.models.register_backbone)."
    )


def _check_remote_code(name: str, trust_remote_code: bool, hub_kwargs: Mapping[str, Any]) -> None:
    """Refuse, before any of its code can run, a checkpoint that needs remote code the user did not allow.

    Reads config.json only (no code runs). A native ``model_type`` with an ``auto_map`` loads with
    transformers' own classes unless trusted, as transformers does, so only unknown types need it.
    """
    if trust_remote_code:
        return
    if name in REMOTE_CODE_ARCHITECTURES:  # known without a download
        raise UsageError(
            remote_code_message(name, "InternVL's remote-code format, model_type 'internvl_chat'")
            + f" The native checkpoints need none: family 'internvl', sizes {sorted(INTERNVL_SIZES)}."
        )
    config_dict, _ = PreTrainedConfig.get_config_dict(name, **hub_kwargs)
    model_type = config_dict.get("model_type")
    auto_map = config_dict.get("auto_map") or {}
    if auto_map and model_type not in CONFIG_MAPPING:
        classes = ", ".join(f"{k}: {v}" for k, v in sorted(auto_map.items()))
        raise UsageError(
            remote_code_message(
                name, f"model_type {model_type!r} is not in transformers; config.json auto_map {classes}"
            )
        )


def _known_backbones() -> str:
    families = sorted(BACKBONES)
    return (
        f"Registered names: families {families}, tiny variants {[TINY_PREFIX + f for f in families]}, "
        f"bundled {sorted(LOCAL_BACKBONES)}; a hub id (org/name) or a save_pretrained folder is also accepted."
    )


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _check_name_or_folder(name: str) -> None:
    """Refuse, before any hub request, a name that is neither registered, a folder, nor shaped like a hub id."""
    path = Path(name)
    if path.is_dir():
        return
    if path.exists():
        raise UsageError(f"backbone {name!r} is a file; give a folder written by save_pretrained. {_known_backbones()}")
    looks_like_path = name.startswith((".", "~", os.sep)) or os.sep in name.strip(os.sep).replace("/", "", 1)
    if looks_like_path:
        raise FileNotFoundError(f"backbone folder {name!r} does not exist. {_known_backbones()}")
    if name.count("/") != 1:
        raise UsageError(f"unknown backbone {name!r}. {_known_backbones()}")


def _answer_ids(processor: ProcessorMixin, yes_word: str, no_word: str, source: str) -> tuple[int, int]:
    tokenizer = processor.tokenizer
    # Asserted at load rather than at first use: a multi-token "yes" would make the reward the
    # probability of a word piece, silently.
    return single_token_id(tokenizer, yes_word, source), single_token_id(tokenizer, no_word, source)


def _image_token(processor: ProcessorMixin) -> tuple[str, int]:
    token = processor.image_token
    token_id = getattr(processor, "image_token_id", None)
    if token_id is None:
        token_id = processor.tokenizer.convert_tokens_to_ids(token)
    return token, int(token_id)


def _load_pretrained(
    name: str,
    *,
    dtype: str | torch.dtype | None,
    attn_implementation: str | None,
    trust_remote_code: bool,
    revision: str | None,
    device_map: str | dict[str, Any] | None,
    processor_kwargs: Mapping[str, Any],
) -> tuple[BackboneSpec, PreTrainedModel, Any]:
    """Hub id or folder: the same calls either way; the family comes from ``config.model_type``."""
    revision_kwargs = {"revision": revision} if revision is not None else {}
    _check_remote_code(name, trust_remote_code, revision_kwargs)
    hub_kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, **revision_kwargs}
    config = AutoConfig.from_pretrained(name, **hub_kwargs)
    spec = _spec_for_model_type(config.model_type, name)
    model_kwargs: dict[str, Any] = dict(hub_kwargs, config=config)
    if dtype is not None:
        model_kwargs["dtype"] = dtype
    if attn_implementation is not None:
        model_kwargs["attn_implementation"] = attn_implementation
    if device_map is not None:
        model_kwargs["device_map"] = device_map
    model = AutoModelForImageTextToText.from_pretrained(name, **model_kwargs)
    model.eval()
    processor = spec.processor_class.from_pretrained(name, **hub_kwargs, **processor_kwargs)
    return spec, model, processor


def load_backbone(
    name_or_path: str | os.PathLike,
    *,
    size: str | None = None,
    dtype: str | torch.dtype | None = None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    device_map: str | dict[str, Any] | None = None,
    processor_kwargs: Mapping[str, Any] | None = None,
    yes_word: str = "yes",
    no_word: str = "no",
    seed: int = 0,
    **tiny_overrides: Any,
) -> Backbone:
    """Load a VLM backbone by family name, hub id, folder, or tiny name.

    Args:
        name_or_path: A family name (``"internvl"``), a tiny name (``"tiny-internvl"``), a hub id
            (``"OpenGVLab/InternVL3-1B-hf"``), a folder written by ``save_pretrained``, or a name
            in :data:`LOCAL_BACKBONES` (``"shapes-vlm-tiny"``).
        size: For a family name, a key of its ``hub_ids`` (e.g. ``"8B"``); for a tiny name, a key of
            :data:`TINY_PRESETS` (``"tiny"`` or ``"small"``).
        dtype: Parameter dtype (``"bfloat16"``, ``torch.float32``, ``"auto"``); None keeps the default.
        attn_implementation: ``"sdpa"``, ``"eager"``, ``"flash_attention_2"``...; None lets transformers choose.
        trust_remote_code: Passed to ``from_pretrained`` of config, model and processor. Off by
            default: a checkpoint whose ``model_type`` is not in transformers (its own code in
            ``auto_map``) is then refused with a message saying how to opt in (``docs/backbones.md``).
        revision: Hub revision (branch, tag or commit) for hub ids.
        device_map: Passed to ``from_pretrained`` (e.g. ``"auto"``); tiny models stay on CPU.
        processor_kwargs: Extra ``from_pretrained`` arguments of the processor, e.g.
            ``{"size": {"shortest_edge": min_pixels, "longest_edge": max_pixels}}`` for Qwen (bounds
            the image tokens) or ``{"crop_to_patches": False}`` for InternVL (one tile per image).
        yes_word: Answer word whose probability is the reward; must be a single token.
        no_word: The negative answer word; must be a single token.
        seed: Seed for the random initialisation of tiny models (the global RNG is left untouched).
        **tiny_overrides: :class:`TinySize` fields for tiny names, e.g. ``hidden_size=64, num_layers=2``.

    Returns:
        The :class:`Backbone`.

    Raises:
        ValueError: Unknown family/size, tiny overrides on a non-tiny name, a multi-token yes/no word.
        TypeError: If the processor loaded is not a ``ProcessorMixin``.
    """
    name = os.fspath(name_or_path)
    if name in LOCAL_BACKBONES:
        name = os.fspath(LOCAL_BACKBONES[name])  # then the very same path as any folder
    dtype = resolve_dtype(dtype, allow_auto=True)
    tiny_size: TinySize | None = None
    if name.startswith(TINY_PREFIX) and name[len(TINY_PREFIX) :] in BACKBONES:
        spec = BACKBONES[name[len(TINY_PREFIX) :]]
        if processor_kwargs:
            raise UsageError(
                "processor_kwargs apply to pretrained processors; size tiny ones with image_size/patch_size."
            )
        tiny_size = tiny_backbone_size(size, tiny_overrides)
        # fork_rng: reproducible tiny weights without reseeding the caller's global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, processor = spec.build_tiny(tiny_size, attn_implementation)
        if dtype not in (None, "auto"):
            model = model.to(dtype)
        model.eval()
    else:
        if tiny_overrides:
            raise UsageError(f"{sorted(tiny_overrides)} only apply to tiny backbones ('{TINY_PREFIX}<family>').")
        if name in BACKBONES:
            name = checkpoint_for(name, size)
        elif size is not None:
            raise UsageError(f"size={size!r} only applies to family or tiny names, not {name!r}.")
        _check_name_or_folder(name)
        try:
            spec, model, processor = _load_pretrained(
                name,
                dtype=dtype,
                attn_implementation=attn_implementation,
                trust_remote_code=trust_remote_code,
                revision=revision,
                device_map=device_map,
                processor_kwargs=processor_kwargs or {},
            )
        except OSError as error:
            # transformers reports a hub id it cannot fetch as "couldn't connect to huggingface.co",
            # naming neither the id nor what would have worked offline.
            if Path(name).is_dir():
                raise BadFileError(f"cannot load the backbone in folder {name!r}: {error}") from error
            raise UsageError(
                f"cannot load backbone {name!r} from the Hugging Face hub ({_first_line(error)}). "
                f"{hub_hint()} {_known_backbones()}"
            ) from error
        except ValueError as error:
            if isinstance(error, RewardDanceError) or not Path(name).is_dir():
                raise
            raise BadFileError(f"cannot load the backbone in folder {name!r}: {error}") from error

    processor = ensure_processor(processor, name)
    yes_id, no_id = _answer_ids(processor, yes_word, no_word, name)
    image_token, image_token_id = _image_token(processor)
    return Backbone(
        model=model,
        processor=processor,
        family=spec.name,
        name_or_path=name,
        yes_token_id=yes_id,
        no_token_id=no_id,
        image_token=image_token,
        image_token_id=image_token_id,
        tiny_size=tiny_size,
    )
