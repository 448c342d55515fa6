r"""The per-GPU memory estimate of a reward-model training run, from the architecture alone.

:func:`estimate_memory` answers "does this backbone train on these GPUs?" without loading a
weight: parameters are counted exactly on the ``meta`` device
(:func:`rewarddance.planning.architectures.describe_backbone`), and the activations come from
per-layer formulas written op by op for the code paths transformers runs (documented below and in
``docs/memory.md``). :mod:`rewarddance.planning.measure` checks the formulas against the
allocator-level peak of a real training step of a tiny model on CPU.

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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from rewarddance.errors import UsageError
from rewarddance.planning.architectures import (
    PAPER_26B,
    PAPER_SIZES,
    Architecture,
    TextArch,
    VisionArch,
    describe_backbone,
)

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

# --------------------------------------------------------------------------------------------
# The estimate
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrecisionBytes:
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


def precision_bytes(
    precision: Precision, strategy: Strategy, vision: VisionArch, kernels: Literal["cuda", "cpu"] = "cuda"
) -> PrecisionBytes:
    if precision == "32-true":
        return PrecisionBytes(4, 4, 8, 4, 4, 4, False, 4)
    if precision == "bf16-true":
        return PrecisionBytes(2, 2, 4, 2, 2, 2, False, 2)
    if precision != "bf16-mixed":
        raise UsageError(f"precision must be one of bf16-mixed, bf16-true, 32-true; got {precision!r}")
    if strategy == "fsdp":
        # rewarddance.distributed.FSDP2Strategy (configs/trainer/fsdp.yaml): FSDP2 mixed precision
        # (param_dtype bf16, reduce_dtype fp32) with fp32 sharded master weights, AdamW states and
        # gradients, trainer precision 32-true (no autocast). Gathered parameters are bf16, so the
        # activations are those of bf16-true.
        return PrecisionBytes(4, 4, 8, 2, 2, 2, False, 2)
    # DDP + autocast over fp32 weights: the token embedding (not autocast) makes the LM residual
    # stream fp32; the vision residual is bf16 after an autocast conv unless an fp32 add follows.
    vision_residual = 4 if vision.residual_fp32_under_autocast else 2
    return PrecisionBytes(4, 4, 8, 2, 4, vision_residual, True, 2, True, kernels == "cuda")


def lm_layer_activation_bytes(text: TextArch, dt: PrecisionBytes, seq_len: int, attention: Attention = "sdpa") -> float:
    """Bytes one decoder layer saves for backward, per token (see the module docstring).

    Args:
        text: The language model.
        dt: The precision's dtypes (:func:`precision_bytes`).
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


def _lora_layer_delta(text: TextArch, dt: PrecisionBytes, rank: int, mask_bytes: int) -> float:
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


def _norm_terms(kind: str, dt: PrecisionBytes, residual: int) -> tuple[int, bool]:
    """(bytes a norm saves per element, whether its output is fp32) for an input of ``residual`` bytes."""
    if kind == "rms_norm":
        # transformers' RMSNorms up-cast to fp32 and save the normalised value in the input dtype;
        # the weight multiply makes the output fp32 only when the weights are fp32 under autocast.
        return 4 + residual, dt.casts
    if dt.layer_norm_fp32:
        return 4, True  # CUDA autocast runs layer_norm in fp32: it saves an fp32 copy of its input
    return residual, residual == 4


def _consumer_bytes(consumers: int, fp32_input: bool, dt: PrecisionBytes) -> int:
    """Bytes per element the linears reading one norm output save: under autocast each casts an
    fp32 input to its own bf16 copy; otherwise they share the (saved once) input."""
    return consumers * 2 if (dt.autocast and fp32_input) else dt.compute


def vision_layer_activation_bytes(vision: VisionArch, dt: PrecisionBytes) -> float:
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


def _projector_bytes_per_token(arch: Architecture, dt: PrecisionBytes) -> float:
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
    dt: PrecisionBytes,
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
        backbone: Registry family (``internvl``, ``qwen2.5-vl``...; pick the size with ``size``), a tiny
            name (``tiny-internvl``), a hub id with a known or cached config, or a folder with a config.json.
        size: Size label of a family (``8B``; InternVL also 4B and 26B, the paper's sizes) or a tiny
            preset (``tiny``/``small``).
        strategy: ``ddp`` (Lightning DDP, a full replica per GPU: configs/trainer/ddp.yaml) or ``fsdp``
            (rewarddance.distributed.FSDP2Strategy, configs/trainer/fsdp.yaml: parameters, gradients and
            optimizer state sharded over all GPUs, one unit per decoder layer / vision block).
        gpus: GPUs per node.
        nodes: Nodes.
        micro_batch_size: Sequences per GPU per step (a pointwise pair counts as 2).
        text_tokens: Text tokens per sequence (template, prompt, answer).
        images: Images per sequence (2 for pairwise comparison).
        image_size: Square image side in pixels for Qwen families (tokens = (side / 28)^2, Qwen3: /32);
            default 448, or a tiny model's own size.
        image_tiles: InternVL 448-pixel tiles per image (256 tokens each; 1 without dynamic tiling).
        precision: ``bf16-mixed``: fp32 master weights, bf16 compute (DDP: Lightning's autocast;
            FSDP: FSDP2's bf16 param_dtype with trainer precision 32-true); ``bf16-true``: everything
            bf16; ``32-true``: everything fp32.
        lora_rank: LoRA rank on the language model's projections (only adapters train); unset for
            full fine-tuning.
        activation_checkpointing: Recompute every decoder/vision layer in the backward pass.
        freeze_vision: Freeze the vision tower (no gradients or optimizer state, no saved vision activations).
        cpu_offload: FSDP CPU offload of sharded parameters, gradients and optimizer state.
        logits: ``answer``: logits at the answer position(s) only, as rewarddance trains reward models;
            ``full``: every position over the vocabulary (language-model cross-entropy).
        answer_tokens: Positions with logits in ``answer`` mode (K + 1 when training rationales).
        attention: ``sdpa`` (flash / memory-efficient kernels, no score matrix) or ``eager``.
        gpu_memory_gib: Memory per GPU in GiB.
        headroom: Fraction added to the estimate for fragmentation and temporaries.
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
    dt = precision_bytes(precision, strategy, arch.vision, kernels)
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
    """The paper's sizes as :func:`grid_table` rows: what ``internvl --size`` loads, then the paper's own 26B."""
    rows: dict[str, tuple[str, str | None]] = {label: (hub_id, None) for label, hub_id in PAPER_SIZES.items()}
    rows["26B as published"] = (PAPER_26B, None)
    return rows
