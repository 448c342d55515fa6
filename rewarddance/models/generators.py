"""The generator registry: a dict of diffusers families and two functions.

Every family is one :class:`GeneratorSpec` in :data:`GENERATORS`, registered with
:func:`register_generator`; :func:`load_generator` turns a name into a :class:`Generator`
(the diffusers pipeline plus handles on its parts), and :func:`sample` draws images or videos
from any of them with one call. Names resolve as follows (see :func:`resolve_generator`):

- ``"sd3"`` (optionally ``size="large"``): the family's hub checkpoint of that size;
- ``"stabilityai/stable-diffusion-3.5-medium"``: that hub checkpoint, its family looked up in the
  registry's hub ids, or else read from its ``model_index.json`` (pipeline class);
- ``"/path/saved/by/save_pretrained"``: that folder, by the very same code path as a hub id;
- ``"tiny-sd3"`` (optionally ``width=64``, ``num_layers=2``...): a tiny random pipeline of the same
  architecture, built offline from configs, with tokenizers trained locally.

Hub checkpoints and folders go through ``<family pipeline>.from_pretrained``: a folder path and a
hub id differ only in the string. The tiny variants exist for tests, tutorials and CPU experiments
(ENV.md: no hub access here); a saved tiny pipeline is an ordinary diffusers folder.

Families: ``sd15`` and ``sdxl`` (UNet, epsilon prediction), ``sd3`` and ``flux`` (flow-matching
transformers), ``wan-t2v`` and ``wan-i2v`` (Wan 2.1 video diffusion transformers).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import math
import os
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLWan,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PNDMScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
    UniPCMultistepScheduler,
    WanImageToVideoPipeline,
    WanPipeline,
    WanTransformer3DModel,
)
from diffusers.utils import deprecation_utils
from PIL import Image
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModel,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
    UMT5Config,
    UMT5EncoderModel,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from rewarddance.errors import BadFileError, RewardDanceError, UsageError, hub_hint
from rewarddance.models.tokenizer import shapes_corpus

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
# Tiny sizes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TinyGeneratorSize:
    """Shape of a tiny offline pipeline. One set of fields for all families; each builder maps them
    onto its architecture (the docstring of each ``build_tiny_*`` says how).

    Attributes:
        width: Denoiser width: channels of the first UNet level (the second has twice as many), or
            the transformer's inner dimension (``num_heads * head_dim``).
        num_layers: UNet layers per level, or transformer blocks (Flux: of each of its two kinds).
        num_heads: Attention heads of the denoiser.
        text_width: Hidden size of each CLIP text encoder (and of the Wan I2V image encoder); the
            T5/UMT5 encoder is twice as wide, as upstream where T5 is the widest encoder (SD3 pads
            the concatenated CLIP features up to the T5 width, so it must be at least 2x).
        text_layers: Layers of every text (and image) encoder; at least 2, because SDXL and Wan I2V
            read the penultimate hidden state.
        text_heads: Attention heads of every text (and image) encoder.
        t5_max_length: The T5/UMT5 tokenizer's ``model_max_length``. :func:`sample` pads T5 prompts to
            ``min(pipeline default, model_max_length)``; the hub tokenizers say 512, which keeps the
            pipelines' defaults (256/512), while a tiny one keeps the joint attention short.
        latent_channels: VAE latent channels (the hub has 4 for SD1.5/SDXL, 16 for SD3/Flux/Wan).
        vae_width: Channels of the VAE's first level (each further level doubles them; Wan keeps them).
        vae_levels: Resolution levels of the image VAE: it downsamples by ``2 ** (vae_levels - 1)``.
            Wan ignores it and keeps the hub's 8x spatial / 4x temporal compression, since its frame
            count rule (4k+1) and the I2V mask channels are tied to it.
        image_size: Default image side in pixels; sets the UNet's and SD3's ``sample_size`` (SD3's
            position table covers 4x that side).
    """

    width: int = 32
    num_layers: int = 1
    num_heads: int = 2
    text_width: int = 32
    text_layers: int = 2
    text_heads: int = 2
    t5_max_length: int = 32
    latent_channels: int = 4
    vae_width: int = 8
    vae_levels: int = 2
    image_size: int = 32

    def __post_init__(self) -> None:
        if self.width % self.num_heads or (self.width // self.num_heads) % 2:
            raise ValueError(f"width / num_heads must be an even integer (rotary embeddings): {self}")
        if self.text_width % self.text_heads:
            raise ValueError(f"text_width must be divisible by text_heads: {self}")
        if self.text_layers < 2:
            raise ValueError(f"text_layers must be >= 2 (penultimate hidden states are read): {self}")
        if self.vae_levels < 1 or self.image_size % (2 ** (self.vae_levels - 1) * 2):
            raise ValueError(f"image_size must be a multiple of twice the VAE downsampling factor: {self}")

    @property
    def head_dim(self) -> int:
        """Denoiser attention head width."""
        return self.width // self.num_heads

    @property
    def t5_width(self) -> int:
        """Hidden size of the T5/UMT5 text encoder."""
        return 2 * self.text_width

    @property
    def vae_scale_factor(self) -> int:
        """Spatial downsampling of the image VAE."""
        return 2 ** (self.vae_levels - 1)


# --------------------------------------------------------------------------------------------
# Tiny tokenizers, trained offline (hub checkpoints bring their own)
# --------------------------------------------------------------------------------------------

_CLIP_BOS, _CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
# CLIPTokenizer's own pre-tokenizer split: training with it makes the merges match what
# CLIPTokenizer will apply.
_CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def train_tiny_clip_tokenizer(vocab_size: int = 1000, model_max_length: int = 77) -> CLIPTokenizer:
    """Train a CLIP-style BPE (lower-cased, ``</w>`` word ends, byte-level alphabet) on the shapes corpus.

    The result is a genuine ``CLIPTokenizer`` (so pipelines save and reload it under the same class as
    the hub's); byte-level, so any text encodes.

    Args:
        vocab_size: Target vocabulary size (the corpus is small: ~700 are reached).
        model_max_length: Padded prompt length; 77 as every CLIP checkpoint (the text encoder's
            position table is sized to it).

    Returns:
        The tokenizer.
    """
    backend = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="</w>", unk_token=_CLIP_EOS))
    backend.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=[_CLIP_BOS, _CLIP_EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    backend.train_from_iterator(shapes_corpus(), trainer=trainer)
    model = json.loads(backend.to_str())["model"]
    # tokenizers serialises merges as pairs (lists); CLIPTokenizer wants tuples.
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    trained = dict(model["vocab"])
    # A word's last character starts as "<c></w>"; the trainer only adds those seen at a word end,
    # so add every byte in that form (as OpenAI's vocab has) or e.g. a final "!" would become unk.
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    for char in alphabet:
        trained.setdefault(char + "</w>", len(trained))
    # The trainer numbers tokens in hash order (single characters) and breaks ties between equally frequent
    # merges differently on every call: number them by (specials, single characters, length, text) instead, so
    # the same corpus always gives the same ids. (Tied merges never compete for the same pair in this corpus'
    # tokenizations checked by the tests; a saved pipeline keeps its own vocab and merges anyway.)
    singles = {*alphabet, *(c + "</w>" for c in alphabet)}
    specials = [_CLIP_BOS, _CLIP_EOS]
    ordered = specials + sorted((t for t in trained if t not in specials), key=lambda t: (t not in singles, len(t), t))
    vocab = {token: i for i, token in enumerate(ordered)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def train_tiny_t5_tokenizer(vocab_size: int = 600, model_max_length: int = 32) -> T5Tokenizer:
    """Train a T5-style unigram tokenizer (SentencePiece ``▁`` word starts) on the shapes corpus.

    A genuine ``T5Tokenizer`` (the class SD3, Flux and Wan's UMT5 checkpoints load), with T5's id
    layout: ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2. Printable ASCII is in the alphabet; other
    characters map to ``<unk>``, as in a SentencePiece model without byte fallback.

    Args:
        vocab_size: Upper bound on the vocabulary (unigram pruning stops earlier on this corpus).
        model_max_length: Stored maximum length; :func:`sample` pads T5 prompts to at most this.

    Returns:
        The tokenizer (no ``<extra_id_*>`` sentinels: encoders never see them).
    """
    backend = Tokenizer(models.Unigram())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        initial_alphabet=list(string.ascii_letters + string.digits + string.punctuation),
        show_progress=False,
    )
    backend.train_from_iterator(shapes_corpus(), trainer=trainer)
    vocab = [tuple(piece) for piece in json.loads(backend.to_str())["model"]["vocab"]]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


# --------------------------------------------------------------------------------------------
# Tiny components
# --------------------------------------------------------------------------------------------


def _clip_text_config(size: TinyGeneratorSize, tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.text_width,
        intermediate_size=4 * size.text_width,
        num_hidden_layers=size.text_layers,
        num_attention_heads=size.text_heads,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=size.text_width,
        hidden_act="quick_gelu",
        # The pooled output is read at the first eos: with eos_token_id == 2, CLIP falls back to
        # argmax(input_ids), which only finds the eos in OpenAI's vocab (eos is the last id there).
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _t5_config(size: TinyGeneratorSize, tokenizer: T5Tokenizer, config_class: type[T5Config] = T5Config) -> T5Config:
    return config_class(
        vocab_size=len(tokenizer),
        d_model=size.t5_width,
        d_kv=size.t5_width // size.text_heads,
        d_ff=2 * size.t5_width,
        num_layers=size.text_layers,
        num_heads=size.text_heads,
        feed_forward_proj="gated-gelu",  # T5 v1.1 / UMT5, as every checkpoint these pipelines use
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )


def _groups(channels: int) -> int:
    # GroupNorm needs groups dividing the channels; upstream uses 32 on widths that are multiples of 32.
    return math.gcd(channels, 32)


def _image_vae(size: TinyGeneratorSize, **config: Any) -> AutoencoderKL:
    channels = tuple(size.vae_width * 2**i for i in range(size.vae_levels))
    return AutoencoderKL(
        block_out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * size.vae_levels,
        up_block_types=("UpDecoderBlock2D",) * size.vae_levels,
        latent_channels=size.latent_channels,
        norm_num_groups=_groups(size.vae_width),
        sample_size=size.image_size,
        **config,
    )


def _unet(size: TinyGeneratorSize, cross_attention_dim: int, **config: Any) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=size.image_size // size.vae_scale_factor,
        in_channels=size.latent_channels,
        out_channels=size.latent_channels,
        block_out_channels=(size.width, 2 * size.width),
        layers_per_block=size.num_layers,
        # Attention only at the coarse level and in the middle block: attention at the fine level
        # roughly halves CPU speed (ENV.md) and adds nothing a plumbing test needs.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        # Despite its name, UNet2DConditionModel reads attention_head_dim as the number of heads
        # (a historical naming bug kept for checkpoint compatibility).
        attention_head_dim=size.num_heads,
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=_groups(size.width),
        **config,
    )


def build_tiny_sd15(size: TinyGeneratorSize) -> StableDiffusionPipeline:
    """Tiny Stable Diffusion 1.5: CLIP text encoder, UNet with cross-attention, KL VAE, PNDM (as the hub).

    No safety checker: it would black out samples, which a reward model then scores.
    """
    tokenizer = train_tiny_clip_tokenizer()
    return StableDiffusionPipeline(
        vae=_image_vae(size, scaling_factor=0.18215),
        text_encoder=CLIPTextModel(_clip_text_config(size, tokenizer)),
        tokenizer=tokenizer,
        unet=_unet(size, cross_attention_dim=size.text_width),
        scheduler=PNDMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            skip_prk_steps=True,
            steps_offset=1,
            set_alpha_to_one=False,
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_sdxl(size: TinyGeneratorSize) -> StableDiffusionXLPipeline:
    """Tiny SDXL: two CLIP text encoders (the second with projection), UNet with text/size micro-conditioning.

    The UNet cross-attends to both encoders' penultimate states concatenated (2 x ``text_width``); its
    added embedding takes the pooled projection plus six size/crop numbers of 8 sinusoids each.
    """
    tokenizer = train_tiny_clip_tokenizer()
    config = _clip_text_config(size, tokenizer)
    time_embed_dim = 8
    return StableDiffusionXLPipeline(
        vae=_image_vae(size, scaling_factor=0.13025),
        text_encoder=CLIPTextModel(config),
        text_encoder_2=CLIPTextModelWithProjection(config),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=_unet(
            size,
            cross_attention_dim=2 * size.text_width,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=time_embed_dim,
            projection_class_embeddings_input_dim=6 * time_embed_dim + size.text_width,
        ),
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            steps_offset=1,
            timestep_spacing="leading",
        ),
        add_watermarker=False,
    )


def build_tiny_sd3(size: TinyGeneratorSize) -> StableDiffusion3Pipeline:
    """Tiny SD3.5 (medium): two CLIP encoders with projection + T5, MMDiT-X with QK RMS-norm and one
    dual-attention block, KL VAE without quant convs, flow-matching Euler with shift 3.
    """
    clip_tokenizer = train_tiny_clip_tokenizer()
    t5_tokenizer = train_tiny_t5_tokenizer(model_max_length=size.t5_max_length)
    clip_config = _clip_text_config(size, clip_tokenizer)
    patch = 2
    latent_side = size.image_size // size.vae_scale_factor
    return StableDiffusion3Pipeline(
        transformer=SD3Transformer2DModel(
            sample_size=latent_side,
            patch_size=patch,
            in_channels=size.latent_channels,
            out_channels=size.latent_channels,
            num_layers=size.num_layers,
            attention_head_dim=size.head_dim,
            num_attention_heads=size.num_heads,
            joint_attention_dim=size.t5_width,
            caption_projection_dim=size.width,
            pooled_projection_dim=2 * size.text_width,
            pos_embed_max_size=4 * latent_side // patch,
            dual_attention_layers=(0,),
            qk_norm="rms_norm",
        ),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_image_vae(
            size, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False
        ),
        text_encoder=CLIPTextModelWithProjection(clip_config),
        tokenizer=clip_tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(clip_config),
        tokenizer_2=clip_tokenizer,
        text_encoder_3=T5EncoderModel(_t5_config(size, t5_tokenizer)),
        tokenizer_3=t5_tokenizer,
    )


def build_tiny_flux(size: TinyGeneratorSize) -> FluxPipeline:
    """Tiny FLUX.1-dev: CLIP (pooled) + T5 (sequence) encoders, double- and single-stream blocks with
    3-axis RoPE, guidance embedding (guidance-distilled like dev), latents packed in 2x2 patches.
    """
    clip_tokenizer = train_tiny_clip_tokenizer()
    t5_tokenizer = train_tiny_t5_tokenizer(model_max_length=size.t5_max_length)
    # RoPE axes (id, height, width) must sum to head_dim, each even; upstream (16, 56, 56) of 128.
    half = size.head_dim // 2
    axis_t = half // 4
    axis_h = (half - axis_t) // 2
    axes = (2 * axis_t, 2 * axis_h, 2 * (half - axis_t - axis_h))
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        ),
        vae=_image_vae(
            size, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False
        ),
        text_encoder=CLIPTextModel(_clip_text_config(size, clip_tokenizer)),
        tokenizer=clip_tokenizer,
        text_encoder_2=T5EncoderModel(_t5_config(size, t5_tokenizer)),
        tokenizer_2=t5_tokenizer,
        transformer=FluxTransformer2DModel(
            patch_size=1,
            in_channels=4 * size.latent_channels,  # 2x2 packed latents
            num_layers=size.num_layers,
            num_single_layers=size.num_layers,
            attention_head_dim=size.head_dim,
            num_attention_heads=size.num_heads,
            joint_attention_dim=size.t5_width,
            pooled_projection_dim=size.text_width,
            guidance_embeds=True,
            axes_dims_rope=axes,
        ),
    )


def _wan_vae(size: TinyGeneratorSize) -> AutoencoderKLWan:
    # The hub's level structure (3 spatial, 2 temporal downsamplings) with vae_width channels throughout.
    return AutoencoderKLWan(
        base_dim=size.vae_width,
        z_dim=size.latent_channels,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * size.latent_channels,
        latents_std=[1.0] * size.latent_channels,
    )


def _wan_transformer(size: TinyGeneratorSize, **config: Any) -> WanTransformer3DModel:
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=size.num_heads,
        attention_head_dim=size.head_dim,
        text_dim=size.t5_width,
        ffn_dim=4 * size.width,
        num_layers=size.num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        **config,
    )


def _wan_scheduler() -> UniPCMultistepScheduler:
    # Wan 2.1's hub scheduler: UniPC on flow-matching sigmas, shift 3 (the 480p setting).
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)


def build_tiny_wan_t2v(size: TinyGeneratorSize) -> WanPipeline:
    """Tiny Wan 2.1 T2V: UMT5 encoder, 3D causal VAE (8x spatial, 4x temporal), DiT with 3D RoPE, UniPC."""
    tokenizer = train_tiny_t5_tokenizer(model_max_length=size.t5_max_length)
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=UMT5EncoderModel(_t5_config(size, tokenizer, UMT5Config)),
        vae=_wan_vae(size),
        scheduler=_wan_scheduler(),
        transformer=_wan_transformer(size, in_channels=size.latent_channels, out_channels=size.latent_channels),
    )


def build_tiny_wan_i2v(size: TinyGeneratorSize) -> WanImageToVideoPipeline:
    """Tiny Wan 2.1 I2V: T2V plus a CLIP vision encoder whose penultimate states enter extra
    cross-attention keys/values, and the first frame's latents + a 4-channel frame mask concatenated
    to the noisy latents (so the DiT takes ``2 * latent_channels + 4`` channels, 36 on the hub).

    The image processor is transformers' PIL CLIP processor, which needs no torchvision.
    """
    tokenizer = train_tiny_t5_tokenizer(model_max_length=size.t5_max_length)
    image_side, patch = 32, 8
    image_encoder = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=size.text_width,
            intermediate_size=4 * size.text_width,
            num_hidden_layers=size.text_layers,
            num_attention_heads=size.text_heads,
            image_size=image_side,
            patch_size=patch,
            hidden_act="gelu",
        )
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_side}, crop_size={"height": image_side, "width": image_side}
    )
    temporal_scale = 4  # the frame mask has one channel per frame of a temporal latent step
    return WanImageToVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=UMT5EncoderModel(_t5_config(size, tokenizer, UMT5Config)),
        vae=_wan_vae(size),
        scheduler=_wan_scheduler(),
        image_processor=image_processor,
        image_encoder=image_encoder,
        transformer=_wan_transformer(
            size,
            in_channels=2 * size.latent_channels + temporal_scale,
            out_channels=size.latent_channels,
            image_dim=size.text_width,
            added_kv_proj_dim=size.width,
        ),
    )


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

TinyPipelineBuilder = Callable[[TinyGeneratorSize], DiffusionPipeline]
"""Signature of ``GeneratorSpec.build_tiny``: size -> pipeline (random weights, offline)."""


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


GENERATORS: dict[str, GeneratorSpec] = {}
"""All registered families by name."""


def register_generator(spec: GeneratorSpec, *, overwrite: bool = False) -> GeneratorSpec:
    """Add a family to :data:`GENERATORS`.

    Args:
        spec: The family.
        overwrite: Replace an existing entry of the same name instead of raising.

    Returns:
        ``spec`` (so it can be used as a one-liner at module level).

    Raises:
        ValueError: If the name is taken (and ``overwrite`` is False), starts with ``"tiny-"``, or
            ``default_size`` is not among ``hub_ids``.
    """
    if spec.name.startswith(TINY_PREFIX):
        raise ValueError(f"Family names must not start with {TINY_PREFIX!r} (reserved for tiny variants): {spec.name}")
    if spec.name in GENERATORS and not overwrite:
        raise ValueError(f"Generator {spec.name!r} is already registered.")
    if spec.default_size not in spec.hub_ids:
        raise ValueError(f"default_size {spec.default_size!r} is not among hub_ids {sorted(spec.hub_ids)}")
    GENERATORS[spec.name] = spec
    return spec


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
        """Save the pipeline to a folder that :func:`load_generator` reads back (a diffusers folder)."""
        self.pipeline.save_pretrained(path)


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


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, dtype, None)
    if not isinstance(resolved, torch.dtype):
        raise UsageError(f"Unknown dtype {dtype!r}; use e.g. 'bfloat16' or 'float32'.")
    return resolved


def _tiny_size(overrides: Mapping[str, Any]) -> TinyGeneratorSize:
    fields = [f.name for f in dataclasses.fields(TinyGeneratorSize)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise UsageError(f"Unknown tiny size fields {unknown}; TinyGeneratorSize has {fields}.")
    return TinyGeneratorSize(**overrides)


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
    torch_dtype = _resolve_dtype(dtype)
    tiny_size: TinyGeneratorSize | None = None
    if target.startswith(TINY_PREFIX) and target == TINY_PREFIX + spec.name:
        if pipeline_kwargs:
            raise UsageError("pipeline_kwargs apply to from_pretrained; size tiny generators with their fields.")
        tiny_size = _tiny_size(tiny_overrides)
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


def _max_sequence_length(pipeline: DiffusionPipeline) -> int | None:
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
    if "max_sequence_length" not in kwargs and (length := _max_sequence_length(pipeline)) is not None:
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
