"""``python -m rewarddance plan``: per-GPU memory of a training run, from the backbone's config alone."""

from __future__ import annotations

from typing import Any

from rewarddance.planning import (
    DEFAULT_HEADROOM,
    DEFAULT_RESERVED_GIB,
    VALIDATION_SETTINGS,
    VALIDATION_TOLERANCE,
    Attention,
    LogitsMode,
    Precision,
    Strategy,
    estimate_memory,
    format_plan,
    grid_table,
    paper_backbones,
)
from rewarddance.planning import validate as validate_setting


def plan(
    backbone: str = "internvl",
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
    grid: bool = False,
    paper_sizes: bool = False,
    validate: bool = False,
) -> dict[str, Any]:
    """Estimate per-GPU memory (parameters, gradients, AdamW state, activations, logits) of a training run.

    Nothing is downloaded or allocated: the model class is built on the meta device from the
    backbone's config, and activations come from per-layer formulas (docs/memory.md), checked
    against measured peaks of tiny models (``--validate true``). Prints a table and returns the
    estimate. ``--grid true`` prints full fine-tuning vs LoRA (r=64), with and without activation
    checkpointing, DDP vs FSDP instead; ``--paper_sizes true`` does so for the paper's InternVL
    1B/2B/4B/8B/26B reward models (the table in docs/memory.md).

    Args:
        backbone: Registry family (``internvl``, ``qwen2.5-vl``...; pick the size with --size), a tiny
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
        grid: Print the DDP/FSDP x full/LoRA x checkpointing grid for this backbone instead.
        paper_sizes: Print that grid for the paper's InternVL 1B, 2B, 4B, 8B and 26B reward models.
        validate: Measure training steps of tiny models on this CPU and print estimate vs measured peak.

    Returns:
        The estimate as plain data (sizes in GiB), or ``{"table": ...}`` for ``--grid`` /
        ``--paper_sizes``, or ``{"validation": [...]}`` for ``--validate``.
    """
    if validate:
        return _validate()
    settings: dict[str, Any] = {
        "gpus": gpus,
        "nodes": nodes,
        "micro_batch_size": micro_batch_size,
        "text_tokens": text_tokens,
        "images": images,
        "image_size": image_size,
        "image_tiles": image_tiles,
        "precision": precision,
        "freeze_vision": freeze_vision,
        "cpu_offload": cpu_offload,
        "logits": logits,
        "answer_tokens": answer_tokens,
        "attention": attention,
        "gpu_memory_gib": gpu_memory_gib,
        "headroom": headroom,
        "reserved_gib": reserved_gib,
    }
    if grid or paper_sizes:
        rows = paper_backbones() if paper_sizes else {size or backbone: (backbone, size)}
        table = grid_table(rows, **settings)
        world = gpus * nodes
        print(
            f"GiB per GPU with {headroom:.0%} headroom + {reserved_gib:g} GiB reserved (largest micro-batch that fits); "
            f"bold: over {gpu_memory_gib:g} GiB. {world} GPU(s), {precision}, micro-batch {micro_batch_size}, "
            f"{text_tokens} text tokens + {images} image(s), LoRA r=64 on the LM projections.\n"
        )
        print(table)
        return {"table": table}
    estimate = estimate_memory(
        backbone,
        size=size,
        strategy=strategy,
        lora_rank=lora_rank,
        activation_checkpointing=activation_checkpointing,
        **settings,
    )
    print(format_plan(estimate))
    return estimate.as_dict()


def _validate() -> dict[str, Any]:
    """Measure :data:`rewarddance.planning.VALIDATION_SETTINGS` on CPU and print the comparison."""
    lines = [
        "| setting | estimate MiB | measured peak MiB | error |",
        "|---|---|---|---|",
    ]
    results = []
    for settings in VALIDATION_SETTINGS:
        result = validate_setting(settings)
        mib = 2**20
        lines.append(
            f"| {result.label} | {result.estimate / mib:.1f} | {result.measured / mib:.1f} | {result.error:+.1%} |"
        )
        results.append({"setting": result.label, "estimate": result.estimate, "measured": result.measured})
        results[-1]["error"] = result.error
    worst = max(abs(r["error"]) for r in results)
    lines.append(f"\nlargest |error| {worst:.1%} (tolerance {VALIDATION_TOLERANCE:.0%})")
    print("\n".join(lines))
    return {"validation": results}
