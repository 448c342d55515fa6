"""The generator registry: a :class:`~rewarddance.registry.Registry` of diffusers families and two functions.

Every family is one :class:`GeneratorSpec` in :data:`GENERATORS`, registered with
:func:`register_generator`; :func:`load_generator` turns a name into a :class:`Generator`
(the diffusers pipeline plus handles on its parts), and :func:`sample` draws images or videos
from any of them with one call. Names resolve as follows (see :func:`resolve_generator`):

- ``"sd3"`` (optionally ``size="large"``): the family's hub checkpoint of that size;
- ``"stabilityai/stable-diffusion-3.5-medium"``: that hub checkpoint, its family looked up in the
  registry's hub ids, or else read from its ``model_index.json`` (pipeline class);
- ``"/path/saved/by/save_pretrained"``: that folder, by the very same code path as a hub id;
- ``"tiny-sd3"`` (optionally ``width=64``, ``num_layers=2``...): a tiny random pipeline of the same
  architecture, built offline from configs, with tokenizers trained locally
  (:mod:`rewarddance.models.tiny_generators`).

Hub checkpoints and folders go through ``<family pipeline>.from_pretrained``: a folder path and a
hub id differ only in the string. The tiny variants exist for tests, tutorials and CPU experiments,
and build without network access (nothing is downloaded); a saved tiny pipeline is an ordinary
diffusers folder.

Families: ``sd15`` and ``sdxl`` (UNet, epsilon prediction), ``sd3`` and ``flux`` (flow-matching
transformers), ``wan-t2v`` and ``wan-i2v`` (Wan 2.1 video diffusion transformers).
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import (
    DiffusionPipeline,
    FluxPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    WanImageToVideoPipeline,
    WanPipeline,
)
from diffusers.utils import deprecation_utils
from PIL import Image
from transformers import PreTrainedModel, T5Tokenizer

from rewarddance.errors import BadFileError, RewardDanceError, UsageError, hub_hint
from rewarddance.models.dtypes import resolve_dtype
from rewarddance.models.tiny_generators import (
    TinyGeneratorSize,
    TinyPipelineBuilder,
    build_tiny_flux,
    build_tiny_sd3,
    build_tiny_sd15,
    build_tiny_sdxl,
    build_tiny_wan_i2v,
    build_tiny_wan_t2v,
    tiny_generator_size,
)
from rewarddance.registry import Registry

Kind = Literal["unet", "flow", "video"]
"""Denoiser family: ``"unet"`` (SD-style UNet, DDPM noise schedule), ``"flow"`` (flow-matching image
transformer), ``"video"`` (flow-matching video transformer)."""

Task = Literal["t2i", "t2v", "i2v"]
"""What the pipeline is conditioned on: text to image, text to video, image (+ text) to video."""

SAMPLING_DEFAULTS = "rewarddance_sampling.json"
"""Optional file in a generator folder: the sampling settings it was made for (see :class:`Generator`)."""

TINY_PREFIX = "tiny-"
"""Prefix that selects a family's tiny offline variant, e.g. ``"tiny-sd3"`` (as in the backbone registry)."""


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneratorSpec:
    """One generator family.

    Attributes:
        name: Registry key, e.g. ``"sd3"``; ``"tiny-" + name`` selects the tiny variant.
        pipeline_class: The diffusers pipeline class; a folder or unknown hub id whose
            ``model_index.json`` names this class resolves to this family.
        kind: Denoiser family (see :data:`Kind`).
        task: Conditioning (see :data:`Task`).
        build_tiny: Builds a random tiny pipeline from a :class:`TinyGeneratorSize`, offline.
        hub_ids: Hub checkpoints by size label (documented, downloaded only when asked for).
        default_size: Size label used when none is given.
        load_kwargs: Extra ``from_pretrained`` arguments for this family's checkpoints.
        guidance: What ``guidance_scale`` means for this family (shown in errors and docs).
    """

    name: str
    pipeline_class: type[DiffusionPipeline]
    kind: Kind
    task: Task
    build_tiny: TinyPipelineBuilder
    hub_ids: Mapping[str, str]
    default_size: str
    load_kwargs: Mapping[str, Any] = field(default_factory=dict)
    guidance: str = "classifier-free guidance weight (1 disables it)"


GENERATORS: Registry[GeneratorSpec] = Registry(
    "generator family", hint="Add one with rewarddance.models.generators.register_generator."
)
"""All registered families by name."""


def register_generator(spec: GeneratorSpec, *, overwrite: bool = False) -> GeneratorSpec:
    """Add a family to :data:`GENERATORS`.

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
    return GENERATORS.register(spec.name, spec, overwrite=overwrite)


register_generator(
    GeneratorSpec(
        name="sd15",
        pipeline_class=StableDiffusionPipeline,
        kind="unet",
        task="t2i",
        build_tiny=build_tiny_sd15,
        hub_ids={"1.5": "stable-diffusion-v1-5/stable-diffusion-v1-5"},
        default_size="1.5",
        # The safety checker replaces flagged samples by black images: during RL the reward model
        # would then be scored on (and the policy pushed by) images the policy did not make.
        load_kwargs={"safety_checker": None, "requires_safety_checker": False},
    )
)
register_generator(
    GeneratorSpec(
        name="sdxl",
        pipeline_class=StableDiffusionXLPipeline,
        kind="unet",
        task="t2i",
        build_tiny=build_tiny_sdxl,
        hub_ids={"base-1.0": "stabilityai/stable-diffusion-xl-base-1.0"},
        default_size="base-1.0",
        # The invisible watermark (applied when its package is installed) perturbs exactly the
        # pixels the reward model scores.
        load_kwargs={"add_watermarker": False},
    )
)
register_generator(
    GeneratorSpec(
        name="sd3",
        pipeline_class=StableDiffusion3Pipeline,
        kind="flow",
        task="t2i",
        build_tiny=build_tiny_sd3,
        hub_ids={
            "medium": "stabilityai/stable-diffusion-3.5-medium",
            "large": "stabilityai/stable-diffusion-3.5-large",
            "3-medium": "stabilityai/stable-diffusion-3-medium-diffusers",
        },
        default_size="medium",
    )
)
register_generator(
    GeneratorSpec(
        name="flux",
        pipeline_class=FluxPipeline,
        kind="flow",
        task="t2i",
        build_tiny=build_tiny_flux,
        hub_ids={"dev": "black-forest-labs/FLUX.1-dev", "schnell": "black-forest-labs/FLUX.1-schnell"},
        default_size="dev",
        guidance="distilled guidance embedded in the transformer (no second pass; schnell ignores it)",
    )
)
register_generator(
    GeneratorSpec(
        name="wan-t2v",
        pipeline_class=WanPipeline,
        kind="video",
        task="t2v",
        build_tiny=build_tiny_wan_t2v,
        hub_ids={"1.3B": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "14B": "Wan-AI/Wan2.1-T2V-14B-Diffusers"},
        default_size="1.3B",
    )
)
register_generator(
    GeneratorSpec(
        name="wan-i2v",
        pipeline_class=WanImageToVideoPipeline,
        kind="video",
        task="i2v",
        build_tiny=build_tiny_wan_i2v,
        hub_ids={
            "14B-480P": "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
            "14B-720P": "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers",
        },
        default_size="14B-480P",
    )
)


# --------------------------------------------------------------------------------------------
# The loaded generator
# --------------------------------------------------------------------------------------------


@dataclass
class Generator:
    """A loaded diffusers pipeline with handles on the parts RL code touches.

    Attributes:
        pipeline: The diffusers pipeline (owns every component; the handles below are views of it).
        family: Registry name of the family, e.g. ``"sd3"``.
        kind: ``"unet"``, ``"flow"`` or ``"video"``.
        task: ``"t2i"``, ``"t2v"`` or ``"i2v"``.
        name_or_path: What was loaded (hub id, folder, or ``"tiny-..."`` name).
        tiny_size: The :class:`TinyGeneratorSize` of a tiny generator, else None.
        sampling_defaults: ``guidance_scale`` / ``num_inference_steps`` to use when a call leaves them unset,
            read from the folder's ``rewarddance_sampling.json`` (written by the shapes generator's pretraining:
            a tiny model wants guidance 2, not the pipeline's 7.5); empty for hub checkpoints.
    """

    pipeline: DiffusionPipeline
    family: str
    kind: Kind
    task: Task
    name_or_path: str
    tiny_size: TinyGeneratorSize | None = None
    sampling_defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> GeneratorSpec:
        """The family's registry entry."""
        return GENERATORS[self.family]

    @property
    def denoiser(self) -> torch.nn.Module:
        """The network trained by RL: the UNet or the (video) transformer."""
        for attr in ("unet", "transformer"):
            module = getattr(self.pipeline, attr, None)
            if module is not None:
                return module
        raise AttributeError(f"{type(self.pipeline).__name__} has neither a unet nor a transformer")

    @property
    def vae(self) -> torch.nn.Module:
        """The autoencoder between pixels and latents."""
        return self.pipeline.vae

    @property
    def scheduler(self) -> Any:
        """The noise scheduler (replaceable: ``generator.pipeline.scheduler = ...``)."""
        return self.pipeline.scheduler

    @property
    def text_encoders(self) -> tuple[torch.nn.Module, ...]:
        """Text encoders in pipeline order (``text_encoder``, ``text_encoder_2``, ``text_encoder_3``)."""
        return self._present("text_encoder", "text_encoder_2", "text_encoder_3")

    @property
    def tokenizers(self) -> tuple[Any, ...]:
        """Tokenizers in pipeline order, matching :attr:`text_encoders`."""
        return self._present("tokenizer", "tokenizer_2", "tokenizer_3")

    @property
    def image_encoder(self) -> torch.nn.Module | None:
        """The conditioning image encoder (Wan I2V), else None."""
        return getattr(self.pipeline, "image_encoder", None)

    @property
    def device(self) -> torch.device:
        """Where the pipeline runs."""
        return self.pipeline.device

    @property
    def dtype(self) -> torch.dtype:
        """Parameter dtype of the denoiser."""
        return self.denoiser.dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Generator:
        """Move (and optionally cast) every component; returns self for chaining."""
        self.pipeline.to(device=device, dtype=dtype)
        return self

    def _present(self, *names: str) -> tuple[Any, ...]:
        return tuple(c for c in (getattr(self.pipeline, n, None) for n in names) if c is not None)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Save the pipeline to a folder that :func:`load_generator` reads back (a diffusers folder).

        The folder also samples with a plain ``DiffusionPipeline.from_pretrained(path)``; see
        :func:`save_pipeline`.
        """
        save_pipeline(self.pipeline, path)


def save_pipeline(pipeline: DiffusionPipeline, path: str | os.PathLike) -> None:
    """Save a diffusers pipeline so that a plain ``DiffusionPipeline.from_pretrained(path)`` samples with it.

    Without a dtype argument diffusers loads its own models (UNet, transformer, VAE) as float32,
    whatever their stored dtype, but transformers loads a text encoder in its stored dtype: a
    float16 text encoder beside an upcast UNet fails with "Half and Float". Text encoders are
    therefore written in float32 (the live pipeline keeps its dtypes); the diffusers models keep
    theirs, which halves a float16 bundle at no cost to a plain load.
    """
    lowered = {
        name: component.dtype
        for name, component in pipeline.components.items()
        if isinstance(component, PreTrainedModel) and component.dtype in (torch.float16, torch.bfloat16)
    }
    try:
        for name in lowered:
            pipeline.components[name].to(torch.float32)
        pipeline.save_pretrained(path)
    finally:
        for name, dtype in lowered.items():  # float16/bfloat16 -> float32 -> back is exact
            pipeline.components[name].to(dtype)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _known_names() -> list[str]:
    return [*GENERATORS, *(TINY_PREFIX + n for n in GENERATORS)]


def _spec_for_pipeline_class(class_name: str, name: str) -> GeneratorSpec:
    for spec in GENERATORS.values():
        if spec.pipeline_class.__name__ == class_name:
            return spec
    known = {s.pipeline_class.__name__: s.name for s in GENERATORS.values()}
    raise UsageError(
        f"{name!r} is a {class_name!r}; registered families are {known}. "
        "Add one with rewarddance.models.generators.register_generator."
    )


def resolve_generator(name_or_path: str | os.PathLike, *, size: str | None = None) -> tuple[GeneratorSpec, str]:
    """Find the family of a name without loading weights.

    Args:
        name_or_path: A family name, a tiny name, a hub id, or a ``save_pretrained`` folder.
        size: For a family name, a key of its ``hub_ids``.

    Returns:
        ``(spec, target)``: target is the hub id or folder to load, or the tiny name itself. A
        registered hub id or a family name resolves offline; a folder or another hub id is resolved
        from its ``model_index.json`` (a download of that one file for a hub id).

    Raises:
        ValueError: Unknown name (the message lists the known names), unknown size, or a pipeline
            class no family registers.
    """
    name = os.fspath(name_or_path)
    if name.startswith(TINY_PREFIX) and name[len(TINY_PREFIX) :] in GENERATORS:
        if size is not None:
            raise UsageError(f"size={size!r} does not apply to tiny generators; override TinyGeneratorSize fields.")
        return GENERATORS[name[len(TINY_PREFIX) :]], name
    if name in GENERATORS:
        spec = GENERATORS[name]
        label = size or spec.default_size
        if label not in spec.hub_ids:
            raise UsageError(f"{name!r} has no size {label!r}; choose from {sorted(spec.hub_ids)}.")
        return spec, spec.hub_ids[label]
    if size is not None:
        raise UsageError(f"size={size!r} only applies to family names ({sorted(GENERATORS)}), not {name!r}.")
    for spec in GENERATORS.values():
        if name in spec.hub_ids.values():
            return spec, name
    is_folder = Path(name).is_dir()
    # An "org/model" string may be a hub id; anything else that is not a folder is a typo.
    if not is_folder and name.count("/") != 1:
        raise UsageError(
            f"Unknown generator {name!r}: not a registered name, hub id or folder. Known names: {_known_names()}."
        )
    try:
        config = DiffusionPipeline.load_config(name)
    except (OSError, ValueError) as error:
        raise UsageError(
            f"Cannot read model_index.json of {name!r} ({error}). Known generator names: {_known_names()}."
        ) from error
    return _spec_for_pipeline_class(config["_class_name"], name), name


# diffusers renamed from_pretrained's torch_dtype to dtype (huggingface/diffusers#14205): newer
# releases warn on torch_dtype, older ones (pyproject allows >=0.32) would silently ignore dtype.
DTYPE_KWARG = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
"""The ``from_pretrained`` keyword this diffusers takes for the parameter dtype."""


def load_generator(
    name_or_path: str | os.PathLike,
    *,
    size: str | None = None,
    dtype: str | torch.dtype | None = None,
    revision: str | None = None,
    pipeline_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
    **tiny_overrides: Any,
) -> Generator:
    """Load a generator by family name, hub id, folder, or tiny name.

    Args:
        name_or_path: A family name (``"sd3"``), a tiny name (``"tiny-sd3"``), a hub id
            (``"stabilityai/stable-diffusion-3.5-medium"``) or a folder written by ``save_pretrained``.
        size: For a family name, a key of its ``hub_ids`` (e.g. ``"large"``).
        dtype: Parameter dtype (``"bfloat16"``, ``torch.float16``...); None keeps float32.
        revision: Hub revision (branch, tag or commit) for hub ids.
        pipeline_kwargs: Extra ``from_pretrained`` arguments, e.g. ``{"variant": "fp16"}`` or a
            replacement component (``{"scheduler": DDIMScheduler(...)}``).
        seed: Seed for the random initialisation of tiny pipelines (the global RNG is left untouched).
        **tiny_overrides: :class:`TinyGeneratorSize` fields for tiny names, e.g. ``width=64``.

    Returns:
        The :class:`Generator`, in eval mode, on CPU for tiny names.

    Raises:
        ValueError: Unknown name or size, tiny overrides on a non-tiny name, or a pipeline class no
            family registers.
    """
    spec, target = resolve_generator(name_or_path, size=size)
    torch_dtype = resolve_dtype(dtype)
    tiny_size: TinyGeneratorSize | None = None
    if target.startswith(TINY_PREFIX) and target == TINY_PREFIX + spec.name:
        if pipeline_kwargs:
            raise UsageError("pipeline_kwargs apply to from_pretrained; size tiny generators with their fields.")
        tiny_size = tiny_generator_size(tiny_overrides)
        # fork_rng: reproducible tiny weights without reseeding the caller's global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            pipeline = spec.build_tiny(tiny_size)
        if torch_dtype is not None:
            pipeline = pipeline.to(dtype=torch_dtype)
    else:
        if tiny_overrides:
            raise UsageError(f"{sorted(tiny_overrides)} only apply to tiny generators ('{TINY_PREFIX}<family>').")
        kwargs: dict[str, Any] = {**spec.load_kwargs, **(pipeline_kwargs or {})}
        # Always name the dtype: without one, diffusers' models load as float32 but transformers' text encoders
        # keep the stored dtype, so a float16 folder would come back half float16, half float32.
        kwargs[DTYPE_KWARG] = torch_dtype or torch.float32
        if revision is not None:
            kwargs["revision"] = revision
        # The family's own class rather than DiffusionPipeline: same loading code, but a folder
        # whose model_index.json names another pipeline fails here instead of later in sample().
        try:
            pipeline = spec.pipeline_class.from_pretrained(target, **kwargs)
        except (OSError, ValueError) as error:
            # diffusers names neither the folder nor the hub id in some of these (a missing weights file, no network).
            if isinstance(error, RewardDanceError):
                raise
            if Path(target).is_dir():
                raise BadFileError(f"cannot load the generator in folder {target!r}: {error}") from error
            raise UsageError(f"cannot load generator {target!r} from the hub ({error}). {hub_hint()}") from error
    for module in pipeline.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    defaults_file = Path(target) / SAMPLING_DEFAULTS
    return Generator(
        pipeline=pipeline,
        family=spec.name,
        kind=spec.kind,
        task=spec.task,
        name_or_path=target,
        tiny_size=tiny_size,
        sampling_defaults=json.loads(defaults_file.read_text()) if defaults_file.is_file() else {},
    )


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------

ImageInput = Image.Image | torch.Tensor
"""A conditioning image: PIL, or a ``[C, H, W]`` float tensor in [0, 1]."""

# The attribute holding each pipeline's T5/UMT5 tokenizer (the one padded to max_sequence_length).
_T5_TOKENIZER = ("tokenizer_3", "tokenizer_2", "tokenizer")


def _call_default(pipeline: DiffusionPipeline, argument: str) -> Any:
    parameter = inspect.signature(pipeline.__call__).parameters.get(argument)
    return None if parameter is None else parameter.default


def default_max_sequence_length(pipeline: DiffusionPipeline) -> int | None:
    """min(pipeline default, T5 tokenizer's model_max_length): hub defaults for hub checkpoints, short for tiny ones."""
    default = _call_default(pipeline, "max_sequence_length")
    if default is None:
        return None
    for attr in _T5_TOKENIZER:
        tokenizer = getattr(pipeline, attr, None)
        if isinstance(tokenizer, T5Tokenizer):
            return min(default, tokenizer.model_max_length)
    return default


def sample(
    generator: Generator,
    prompts: str | Sequence[str],
    *,
    height: int,
    width: int,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    num_frames: int | None = None,
    seed: int | None = None,
    images: ImageInput | Sequence[ImageInput] | None = None,
    negative_prompt: str | Sequence[str] | None = None,
    output_type: Literal["pt", "pil"] = "pt",
    progress: bool = False,
    **call_kwargs: Any,
) -> torch.Tensor | list[Any]:
    """Sample one image or video per prompt, the same call for every family (under ``torch.no_grad``).

    Args:
        generator: The loaded generator.
        prompts: One prompt or a batch.
        height: Image/frame height in pixels (a multiple of the VAE factor, x2 for Flux/Wan patches).
        width: Image/frame width in pixels.
        num_inference_steps: Denoising steps; None takes the pipeline's default.
        guidance_scale: See ``generator.spec.guidance``; None takes the pipeline's default.
        num_frames: Frames per video (``4k + 1`` for Wan); required for video families.
        seed: Seeds one CPU ``torch.Generator`` for the initial noise, so a seed gives the same
            latents on any device; None draws from the global RNG.
        images: For image-to-video: one image for all prompts, or one per prompt. Wan's I2V pipeline
            conditions a call on a single image, so distinct images are sampled one call each, with
            the seeded RNG continuing across calls.
        negative_prompt: Negative prompt(s) for classifier-free guidance.
        output_type: ``"pt"``: a float tensor in [0, 1], ``[B, C, H, W]`` for images and
            ``[B, T, C, H, W]`` for videos. ``"pil"``: PIL images (a list per video).
        progress: Show the pipeline's progress bar.
        **call_kwargs: Passed to the pipeline call (e.g. ``max_sequence_length``, ``callback_on_step_end``).

    Returns:
        The samples, in prompt order.

    Raises:
        ValueError: Missing ``num_frames`` for video or ``images`` for image-to-video, ``images`` for a
            family that takes none, or a wrong number of images.
        ImportError: Wan image-to-video without the ``ftfy`` package (diffusers needs it there).
    """
    pipeline = generator.pipeline
    prompt_list = [prompts] if isinstance(prompts, str) else list(prompts)
    kwargs: dict[str, Any] = {"height": height, "width": width, "output_type": output_type, **call_kwargs}
    num_inference_steps = num_inference_steps or generator.sampling_defaults.get("num_inference_steps")
    guidance_scale = guidance_scale if guidance_scale is not None else generator.sampling_defaults.get("guidance_scale")
    if num_inference_steps is not None:
        kwargs["num_inference_steps"] = num_inference_steps
    if guidance_scale is not None:
        kwargs["guidance_scale"] = guidance_scale
    if negative_prompt is not None:
        kwargs["negative_prompt"] = negative_prompt if isinstance(negative_prompt, str) else list(negative_prompt)
    if "max_sequence_length" not in kwargs and (length := default_max_sequence_length(pipeline)) is not None:
        kwargs["max_sequence_length"] = length
    if generator.kind == "video":
        if num_frames is None:
            raise ValueError(f"{generator.family} samples videos: pass num_frames (4k + 1 for Wan).")
        kwargs["num_frames"] = num_frames
    elif num_frames is not None:
        raise ValueError(f"{generator.family} samples images; num_frames does not apply.")
    if seed is not None:
        kwargs["generator"] = torch.Generator("cpu").manual_seed(seed)
    pipeline.set_progress_bar_config(disable=not progress)

    if generator.task != "i2v":
        if images is not None:
            raise ValueError(f"{generator.family} ({generator.task}) takes no conditioning images.")
        return _postprocess(_call(pipeline, prompt_list, kwargs), generator.kind, output_type)

    if images is None:
        raise ValueError(f"{generator.family} is image-to-video: pass images (one, or one per prompt).")
    image_list = [images] if isinstance(images, ImageInput) else list(images)
    if len(image_list) not in (1, len(prompt_list)):
        raise ValueError(f"Got {len(image_list)} images for {len(prompt_list)} prompts; pass one or one per prompt.")
    if len(image_list) > 1 and isinstance(kwargs.get("negative_prompt"), list):
        raise ValueError("With one image per prompt, pass a single negative_prompt string.")
    if isinstance(pipeline, WanImageToVideoPipeline) and importlib.util.find_spec("ftfy") is None:
        # diffusers' Wan I2V prompt cleaning calls ftfy.fix_text unconditionally (T2V skips it when
        # ftfy is missing), so without it the call fails with a NameError deep in the pipeline.
        raise ImportError("Wan image-to-video sampling needs the ftfy package: pip install ftfy")
    if len(image_list) == 1:
        return _postprocess(_call(pipeline, prompt_list, {**kwargs, "image": image_list[0]}), "video", output_type)
    parts = [
        _postprocess(_call(pipeline, [prompt], {**kwargs, "image": image}), "video", output_type)
        for prompt, image in zip(prompt_list, image_list)
    ]
    return torch.cat(parts) if output_type == "pt" else [video for part in parts for video in part]


def _call(pipeline: DiffusionPipeline, prompts: list[str], kwargs: Mapping[str, Any]) -> Any:
    with torch.no_grad():
        output = pipeline(prompt=prompts, **kwargs)
    return output.frames if hasattr(output, "frames") else output.images


def _postprocess(samples: Any, kind: Kind, output_type: str) -> torch.Tensor | list[Any]:
    if output_type != "pt":
        return list(samples)
    expected = 5 if kind == "video" else 4
    if not isinstance(samples, torch.Tensor) or samples.ndim != expected:
        shape = getattr(samples, "shape", type(samples).__name__)
        raise RuntimeError(f"Expected a {expected}-D tensor from the pipeline, got {shape}.")
    # The pipelines already denormalise to [0, 1]; float32 so downstream reward code sees one dtype.
    return samples.float()
