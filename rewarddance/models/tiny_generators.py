"""Tiny offline diffusers pipelines, one builder per generator family, for tests, tutorials and CPU experiments.

Each ``build_tiny_<family>`` makes a random pipeline of the family's real architecture (the same diffusers and
transformers classes as the hub checkpoint, shrunk by a :class:`TinyGeneratorSize`), with tokenizers trained
locally on the shapes corpus: nothing is downloaded, so they build on a machine without hub access. A saved tiny
pipeline is an ordinary diffusers folder. :func:`rewarddance.models.generators.load_generator` builds them for the
names ``"tiny-<family>"``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

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

from rewarddance.errors import UsageError
from rewarddance.models.tokenizer import train_tiny_clip_tokenizer, train_tiny_t5_tokenizer


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


TinyPipelineBuilder = Callable[[TinyGeneratorSize], DiffusionPipeline]
"""Signature of ``GeneratorSpec.build_tiny``: size -> pipeline (random weights, offline)."""


def tiny_generator_size(overrides: Mapping[str, Any]) -> TinyGeneratorSize:
    """A :class:`TinyGeneratorSize` with ``overrides`` applied to the defaults; unknown fields are a UsageError."""
    fields = [f.name for f in dataclasses.fields(TinyGeneratorSize)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise UsageError(f"Unknown tiny size fields {unknown}; TinyGeneratorSize has {fields}.")
    return TinyGeneratorSize(**overrides)


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
        # makes a forward ~1.5x slower on one CPU thread (docs/notes.md, "models") and adds nothing
        # a plumbing test needs.
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
