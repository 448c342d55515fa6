"""``python -m rewarddance plan``: per-GPU memory of a training run, from the backbone's config alone."""

from __future__ import annotations

import inspect
from typing import Any

from rewarddance.planning import (
    VALIDATION_SETTINGS,
    VALIDATION_TOLERANCE,
    estimate_memory,
    format_plan,
    grid_table,
    paper_backbones,
)
from rewarddance.planning import validate as validate_setting


def plan(
    backbone: str = "internvl",
    grid: bool = False,
    paper_sizes: bool = False,
    validate: bool = False,
    **run: Any,
) -> dict[str, Any]:
    """Estimate per-GPU memory (parameters, gradients, AdamW state, activations, logits) of a training run.

    Nothing is downloaded or allocated: the model class is built on the meta device from the
    backbone's config, and activations come from per-layer formulas (docs/memory.md), checked
    against measured peaks of tiny models (``--validate true``). Prints a table and returns the
    estimate. ``--grid true`` prints full fine-tuning vs LoRA (r=64), with and without activation
    checkpointing, DDP vs FSDP instead; ``--paper_sizes true`` does so for the paper's InternVL
    1B/2B/4B/8B/26B reward models (the table in docs/memory.md). The run's settings (``--size``,
    ``--strategy``, ``--gpus``, ...) are those of :func:`rewarddance.planning.estimate_memory`.

    Args:
        backbone: Registry family (``internvl``, ``qwen2.5-vl``...; pick the size with --size), a tiny
            name (``tiny-internvl``), a hub id with a known or cached config, or a folder with a config.json.
        grid: Print the DDP/FSDP x full/LoRA x checkpointing grid for this backbone instead.
        paper_sizes: Print that grid for the paper's InternVL 1B, 2B, 4B, 8B and 26B reward models.
        validate: Measure training steps of tiny models on this CPU and print estimate vs measured peak.

    Returns:
        The estimate as plain data (sizes in GiB), or ``{"table": ...}`` for ``--grid`` /
        ``--paper_sizes``, or ``{"validation": [...]}`` for ``--validate``.
    """
    if validate:
        return _validate()
    if grid or paper_sizes:
        return _grid(backbone, paper_sizes, run)
    estimate = estimate_memory(backbone, **run)
    print(format_plan(estimate))
    return estimate.as_dict()


_GRID_VARIES = ("strategy", "lora_rank", "activation_checkpointing")
"""What each grid column sets itself."""


def _grid(backbone: str, paper_sizes: bool, run: dict[str, Any]) -> dict[str, Any]:
    defaults = {
        name: p.default
        for name, p in inspect.signature(estimate_memory).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    settings = {**defaults, **run}
    size = settings.pop("size")
    rows = paper_backbones() if paper_sizes else {size or backbone: (backbone, size)}
    table = grid_table(rows, **{k: v for k, v in settings.items() if k not in _GRID_VARIES})
    s = settings
    print(
        f"GiB per GPU with {s['headroom']:.0%} headroom + {s['reserved_gib']:g} GiB reserved (largest micro-batch "
        f"that fits); bold: over {s['gpu_memory_gib']:g} GiB. {s['gpus'] * s['nodes']} GPU(s), {s['precision']}, "
        f"micro-batch {s['micro_batch_size']}, {s['text_tokens']} text tokens + {s['images']} image(s), LoRA r=64 on "
        "the LM projections.\n"
    )
    print(table)
    return {"table": table}


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
