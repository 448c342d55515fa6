"""Memory planning: exact parameter counts from meta-device models, activation formulas checked
against the tensors autograd saves, and whole-step estimates against measured CPU peaks."""

from __future__ import annotations

import pytest
import torch
from jsonargparse import ArgumentParser
from PIL import Image
from transformers.modeling_layers import GradientCheckpointingLayer

from rewarddance.commands.plan import plan
from rewarddance.models.backbones import load_backbone
from rewarddance.models.lora import LoraSettings, prepare_for_training, trainable_parameter_count
from rewarddance.planning import (
    GIB,
    KNOWN_CONFIGS,
    PAPER_SIZES,
    VALIDATION_SETTINGS,
    VALIDATION_TOLERANCE,
    describe_backbone,
    estimate_memory,
    format_plan,
    grid_table,
    lm_layer_activation_bytes,
    precision_bytes,
    validate,
    vision_layer_activation_bytes,
)

TINY_FAMILIES = ["qwen2-vl", "qwen2.5-vl", "qwen3-vl", "internvl"]


# -- parameter counts ----------------------------------------------------------------------------


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_meta_count_equals_real_model(family: str) -> None:
    arch = describe_backbone(f"tiny-{family}", "small")
    model = load_backbone(f"tiny-{family}", size="small").model
    assert arch.params_total == sum(p.numel() for p in model.parameters())
    assert 0 < arch.params_vision < arch.params_total and arch.params_projector > 0
    # LoRA: the planned adapter count is what PEFT actually adds.
    lora_model = prepare_for_training(model, LoraSettings(r=4))
    trainable, _ = trainable_parameter_count(lora_model)
    assert arch.lora_params(4) == trainable


@pytest.mark.parametrize(
    ("label", "checkpoint_gb"),
    # model.safetensors sizes on the hub (bf16, 2 bytes per parameter; 4B: the whole repository,
    # 15 MB of which are tokenizer files): the written configs must reproduce them.
    [("1B", 1.88), ("2B", 4.18), ("4B", 9.48)],
)
def test_paper_sizes_match_checkpoint_sizes(label: str, checkpoint_gb: float) -> None:
    arch = describe_backbone(PAPER_SIZES[label])
    assert arch.params_total * 2 / 1e9 == pytest.approx(checkpoint_gb, rel=0.01)


def test_paper_sizes_are_known_and_resolve_through_the_registry() -> None:
    assert set(PAPER_SIZES.values()) <= set(KNOWN_CONFIGS)
    assert describe_backbone("internvl", "8B").name == "OpenGVLab/InternVL3-8B-hf"
    assert describe_backbone("internvl", "26B").name == "OpenGVLab/InternVL3-38B-hf"  # docs/backbones.md
    with pytest.raises(ValueError, match="no size"):
        describe_backbone("internvl", "3B")
    with pytest.raises(ValueError, match="No offline config"):
        describe_backbone("someone/unknown-model")


# -- activation formulas vs the tensors autograd saves -----------------------------------------


def _saved_bytes_per_layer(model: torch.nn.Module, inputs: dict, autocast: bool) -> dict[str, list[int]]:
    """Bytes first saved for backward inside each checkpointable layer (storages counted once,
    parameters excluded), by layer class."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set[int] = set()
    stack: list[int] = []
    per_layer: dict[int, int] = {}
    names: dict[int, str] = {}
    for layer in model.modules():
        if isinstance(layer, GradientCheckpointingLayer):
            key = id(layer)
            names[key], per_layer[key] = type(layer).__name__, 0
            layer.register_forward_pre_hook(lambda m, a, k=key: stack.append(k))
            layer.register_forward_hook(lambda m, a, o: stack.pop() and None)

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and ptr not in seen:
            seen.add(ptr)
            if stack:
                per_layer[stack[-1]] += t.untyped_storage().nbytes()
        return t

    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    with hooks, torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        model(**inputs, logits_to_keep=1, use_cache=False)
    out: dict[str, list[int]] = {}
    for key, nbytes in per_layer.items():
        out.setdefault(names[key], []).append(nbytes)
    return out


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true", "32-true"])
@pytest.mark.parametrize("family", ["qwen2.5-vl", "internvl"])
def test_layer_formulas_match_saved_tensors(family: str, precision: str) -> None:
    backbone = load_backbone(f"tiny-{family}", size="small")
    model = backbone.model.train()
    if precision == "bf16-true":
        model.to(torch.bfloat16)
    image = Image.new("RGB", (64, 64), (200, 40, 40))
    inputs = dict(backbone.encode(["<image> <image> " + "word " * 60] * 2, [[image, image]] * 2))
    saved = _saved_bytes_per_layer(model, inputs, autocast=precision == "bf16-mixed")
    arch = describe_backbone(f"tiny-{family}", "small")
    dt = precision_bytes(precision, "ddp", arch.vision)
    n = inputs["input_ids"].numel()
    m = 2 * arch.vision_patches(64) * 2  # 2 samples x 2 images
    copies = 2 if dt.casts else 0  # autocast's bf16 weight copies, saved per layer
    lm = next(v for k, v in saved.items() if "Decoder" in k)[1:]  # layer 0 also saves the shared rotary tables
    vision = next(v for k, v in saved.items() if "Vision" in k)[1:]
    expected_lm = n * lm_layer_activation_bytes(arch.text, dt, inputs["input_ids"].shape[1])
    expected_lm += copies * arch.lm_matmul_params / arch.text.num_layers
    expected_vision = m * vision_layer_activation_bytes(arch.vision, dt)
    expected_vision += copies * arch.vision_matmul_params / arch.vision.num_layers
    assert sum(lm) / len(lm) == pytest.approx(expected_lm, rel=0.02)
    assert sum(vision) / len(vision) == pytest.approx(expected_vision, rel=0.06)


# -- whole step: estimate vs measured peak -------------------------------------------------------


@pytest.mark.parametrize("settings", VALIDATION_SETTINGS, ids=lambda s: "-".join(str(v) for v in s.values()))
def test_estimate_within_tolerance_of_measured_peak(settings: dict) -> None:
    result = validate(settings, micro_batch_size=2, words=60)
    assert abs(result.error) <= VALIDATION_TOLERANCE, (result.label, result.error)


# -- the estimate's algebra ----------------------------------------------------------------------


def test_fsdp_shards_and_offload_and_lora() -> None:
    common = {"micro_batch_size": 2, "text_tokens": 256, "gpus": 8, "nodes": 2}
    ddp = estimate_memory("internvl", size="8B", strategy="ddp", **common)
    fsdp = estimate_memory("internvl", size="8B", strategy="fsdp", **common)
    assert fsdp.world_size == 16
    assert fsdp.parameters == pytest.approx(ddp.parameters / 16)
    assert fsdp.optimizer == pytest.approx(ddp.optimizer / 16)
    assert ddp.gradients == pytest.approx(2 * ddp.parameters)  # fp32 gradients + DDP's bucket copy
    assert fsdp.fsdp_working_set > 0 and ddp.fsdp_working_set == 0
    assert ddp.weight_copies > 0 and fsdp.weight_copies == 0  # FSDP gathers bf16 params: no autocast copies
    offload = estimate_memory("internvl", size="8B", strategy="fsdp", cpu_offload=True, **common)
    assert offload.parameters == offload.gradients == offload.optimizer == 0
    with pytest.raises(ValueError, match="cpu_offload"):
        estimate_memory("internvl", size="8B", strategy="ddp", cpu_offload=True)
    lora = estimate_memory("internvl", size="8B", strategy="fsdp", lora_rank=16, **common)
    assert lora.params_trainable == describe_backbone("internvl", "8B").lora_params(16)
    assert lora.optimizer < fsdp.optimizer / 50
    ckpt = estimate_memory("internvl", size="8B", strategy="fsdp", activation_checkpointing=True, **common)
    assert ckpt.activations < fsdp.activations / 5
    assert ckpt.activations_no_checkpointing == fsdp.activations
    frozen = estimate_memory("internvl", size="8B", strategy="fsdp", freeze_vision=True, **common)
    assert frozen.params_trainable == fsdp.params_trainable - describe_backbone("internvl", "8B").params_vision
    assert frozen.activations < fsdp.activations


def test_sequence_logits_and_batch_search() -> None:
    base = estimate_memory("internvl", size="1B", micro_batch_size=1, text_tokens=100, images=2)
    assert base.seq_len == 100 + 2 * 258  # 256 tokens per 448 px tile + <img></img>
    tiled = estimate_memory("internvl", size="1B", micro_batch_size=1, text_tokens=100, images=2, image_tiles=7)
    assert tiled.seq_len == 100 + 2 * (7 * 256 + 2)
    full = estimate_memory("internvl", size="1B", micro_batch_size=1, text_tokens=100, logits="full")
    assert full.logits > 100 * base.logits
    qwen = estimate_memory("tiny-qwen3-vl", size="small", micro_batch_size=1, text_tokens=10, images=1)
    assert qwen.image_tokens == (64 // 16) ** 2 + 2  # Qwen3-VL: patch 8 (tiny) x merge 2 -> 16 px per token
    fits = base.max_micro_batch_size
    at_limit = estimate_memory("internvl", size="1B", micro_batch_size=fits, text_tokens=100, images=2)
    beyond = estimate_memory("internvl", size="1B", micro_batch_size=fits + 1, text_tokens=100, images=2)
    assert at_limit.fits and not beyond.fits
    assert "largest micro-batch" in format_plan(base)


# -- the command ---------------------------------------------------------------------------------


def test_plan_command_parses_and_prints(capsys: pytest.CaptureFixture[str]) -> None:
    parser = ArgumentParser(prog="plan")
    parser.add_function_arguments(plan, as_group=False)
    args = ["--backbone", "internvl", "--size", "2B", "--strategy", "fsdp", "--gpus", "8", "--nodes", "2"]
    args += ["--lora_rank", "32", "--activation_checkpointing", "true", "--precision", "bf16-true"]
    config = parser.parse_args(args)
    result = plan(**{k: v for k, v in dict(config).items() if k not in ("__path__", "config")})
    assert result["world_size"] == 16 and result["lora_rank"] == 32 and result["fits"]
    assert result["total_gib"] == pytest.approx(
        estimate_memory(
            "internvl", size="2B", gpus=8, nodes=2, lora_rank=32, activation_checkpointing=True, precision="bf16-true"
        ).total
        / GIB
    )
    assert "activations (checkpointing)" in capsys.readouterr().out


def test_grid_table_rows() -> None:
    table = grid_table({"tiny": ("tiny-internvl", "tiny")}, micro_batch_size=1, text_tokens=32)
    header, _, row = table.splitlines()
    assert header.count("|") == row.count("|") == 12 and "fsdp LoRA +ckpt" in header
