"""GPU check: reward-model training throughput and MFU under the fsdp fragment, and a real-size ReFL step.

    python benchmarks/gpu_check.py                    # on one GPU machine; torchrun not needed
    python benchmarks/gpu_check.py --peak-tflops 989  # override the peak dense bf16 TFLOP/s
    python benchmarks/gpu_check.py --dry-run          # same code paths on CPU, tiny configs, gloo (< 60 s)

No weights and no network: every architecture is built from a config written here, at random init.

1. Reward model: a Qwen2.5-VL-3B architecture (text: hidden 2048, 36 layers, 16 heads, 2 KV heads,
   intermediate 11008, vocab 151936, tied embeddings; vision: depth 32, hidden 1280), fp32 master weights on
   the GPU, sharded as configs/trainer/fsdp.yaml does (rewarddance.distributed.shard_model: fully_shard per
   decoder layer and vision block, then the root; bf16 params, fp32 reduce; activation checkpointing on by
   default, --no-activation-checkpointing to turn it off) in a single-rank process group, AdamW. Each step is
   the reward model's loss shape: ``--batch`` sequences of ``--seq`` tokens, ``logits_to_keep=1``,
   cross-entropy on a yes/no token. What is measured: TEXT-ONLY sequences through the language model (the
   vision tower is built and sharded, but frozen and not run, and excluded from the FLOPs). Reported:
   tokens/s and MFU = (6 * N + 12 * layers * hidden * seq) * tokens/s / peak, where N counts the decoder-layer
   parameters (embeddings are a lookup and the head sees one position per sequence; activation recompute is
   not counted as useful work). Peak: 989 TFLOP/s dense bf16 for H100 SXM and H200 (detected from the device
   name; --peak-tflops overrides). Target: MFU >= 40% on an H100/H200.
2. ReFL: a diffusers SD3Transformer2DModel with the SD3.5-medium config (24 layers, 24 heads x 64,
   joint_attention_dim 4096, pooled 2048, patch 2, 16 channels, dual attention in layers 0-12, RMS qk-norm),
   sample 64 (512 px), fp32 weights with bf16 autocast, random text embeddings of realistic shapes (CLIP 77 +
   T5 256 = 333 tokens x 4096, pooled 2048), classifier-free guidance (batch doubled). Timed: one no-grad
   flow-matching Euler sampling pass of 28 steps; one ReFL step (no grad to step ``--refl-step``, one step with
   grad, x0 prediction, backward of a scalar stand-in reward on the predicted latent, AdamW step). The VAE
   decode and the reward model's forward/backward are EXCLUDED from the ReFL step. Printed: the ratio ReFL step
   / sampling pass.

Warm-up steps are excluded; times are taken between torch.cuda.synchronize calls; peak memory is
torch.cuda.max_memory_allocated. Expected runtime: under 5 minutes on an H100 (mostly building the models).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gb(device: torch.device) -> str:
    if device.type != "cuda":
        return "n/a (CPU)"
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def init_process_group(device: torch.device) -> None:
    """A single-rank group: from the environment when torchrun set it, else from a file store."""
    if dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if "MASTER_ADDR" in os.environ and "RANK" in os.environ:
        dist.init_process_group(backend)
        return
    store = dist.FileStore(os.path.join(tempfile.mkdtemp(), "store"), 1)
    dist.init_process_group(backend, store=store, rank=0, world_size=1)


def peak_flops(device: torch.device, override: float | None) -> tuple[float, str]:
    if override is not None:
        return override * 1e12, "--peak-tflops"
    if device.type != "cuda":
        return 989e12, "H100 value (dry run: MFU meaningless)"
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12, name
    print(f"warning: unknown device {name!r}; assuming 989 TFLOP/s (use --peak-tflops)")
    return 989e12, f"{name} (assumed)"


# --------------------------------------------------------------------------------------------
# Reward model
# --------------------------------------------------------------------------------------------


def reward_config(dry_run: bool):
    from transformers import Qwen2_5_VLConfig

    if dry_run:
        text = dict(
            vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        )  # fmt: skip
        vision = dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
            fullatt_block_indexes=[1],
        )  # fmt: skip
    else:  # published Qwen2.5-VL-3B-Instruct sizes
        text = dict(
            vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
            num_attention_heads=16, num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=128000,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
        )  # fmt: skip
        vision = dict(
            depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
            fullatt_block_indexes=[7, 15, 23, 31], window_size=112, patch_size=14, spatial_merge_size=2,
            temporal_patch_size=2,
        )  # fmt: skip
    if dry_run:
        text.update(bos_token_id=None, eos_token_id=None, pad_token_id=None)
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True)
    config.use_cache = False
    config.text_config.use_cache = False
    return config


def bench_reward_model(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    from torch.distributed.device_mesh import init_device_mesh
    from transformers import Qwen2_5_VLForConditionalGeneration

    from rewarddance.distributed import ShardSettings, shard_model

    config = reward_config(args.dry_run)
    text = config.text_config
    _reset_peak(device)
    started = time.perf_counter()
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    model.train()
    # Text-only sequences: the vision tower is frozen and never run (it is excluded from the FLOPs).
    for name, p in model.named_parameters():
        if ".visual." in f".{name}":
            p.requires_grad_(False)
    blocks = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    n_layer_params = sum(p.numel() for b in blocks for p in b.parameters())
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    mesh = init_device_mesh(device.type, (1,))
    settings = ShardSettings(
        param_dtype="bfloat16", reduce_dtype="float32", activation_checkpointing=args.activation_checkpointing
    )
    shard_model(model, mesh, settings)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6, fused=False)
    _sync(device)
    build_s = time.perf_counter() - started

    yes_id, no_id = 9454, 2753  # any two ids: the loss is CE over the full vocabulary at the last position
    yes_id, no_id = yes_id % text.vocab_size, no_id % text.vocab_size
    gen = torch.Generator(device="cpu").manual_seed(0)

    def batch() -> dict[str, torch.Tensor]:
        ids = torch.randint(0, min(text.vocab_size, 150000), (args.batch, args.seq), generator=gen)
        labels = torch.where(torch.rand(args.batch, generator=gen) < 0.5, yes_id, no_id)
        return {"input_ids": ids.to(device), "labels": labels.to(device)}

    def step(b: dict[str, torch.Tensor]) -> float:
        out = model(
            input_ids=b["input_ids"], attention_mask=torch.ones_like(b["input_ids"]), logits_to_keep=1, use_cache=False
        )
        loss = F.cross_entropy(out.logits[:, -1].float(), b["labels"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    batches = [batch() for _ in range(2)]
    for i in range(args.warmup):
        step(batches[i % 2])
    _sync(device)
    times = []
    for i in range(args.steps):
        t0 = time.perf_counter()
        loss = step(batches[i % 2])
        _sync(device)
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    tokens = args.batch * args.seq
    tok_s = tokens / step_s
    flops_per_token = 6 * n_layer_params + 12 * text.num_hidden_layers * text.hidden_size * args.seq
    peak, peak_src = peak_flops(device, args.peak_tflops)
    mfu = flops_per_token * tok_s / peak
    print(
        f"\n[reward model] Qwen2.5-VL{'(tiny)' if args.dry_run else '-3B'} architecture, random init: "
        f"{n_params / 1e6:,.1f}M params ({n_trainable / 1e6:,.1f}M trained, {n_layer_params / 1e6:,.1f}M in decoder "
        f"layers, counted for MFU); "
        f"built and sharded in {build_s:.1f} s"
    )
    print(
        f"  fsdp fragment: fully_shard per block, bf16 params / fp32 reduce, activation checkpointing "
        f"{'on' if args.activation_checkpointing else 'off'}, AdamW; text-only (vision tower frozen, not run)"
    )
    print(
        f"  batch {args.batch} x {args.seq} tokens, logits_to_keep=1, yes/no CE; "
        f"{args.warmup} warm-up + {args.steps} timed steps; last loss {float(loss):.3f}"
    )
    print(f"  step {step_s * 1e3:.1f} ms (median), {tok_s:,.0f} tokens/s, peak memory {_peak_gb(device)}")
    print(
        f"  MFU {mfu * 100:.1f}% (peak {peak / 1e12:.0f} TFLOP/s from {peak_src}; "
        f"{flops_per_token / 1e9:.2f} GFLOP/token) -- target >= 40%: {'met' if mfu >= 0.40 else 'missed'}"
    )
    return {"tokens_per_s": tok_s, "mfu": mfu}


# --------------------------------------------------------------------------------------------
# ReFL step of a flow-matching transformer
# --------------------------------------------------------------------------------------------


def generator_config(dry_run: bool) -> dict:
    if dry_run:
        return dict(
            sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
            joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=16, out_channels=4,
            pos_embed_max_size=16, dual_attention_layers=(0,), qk_norm="rms_norm",
        )  # fmt: skip
    # SD3.5-medium at 512 px (sample 64 latents; the published config has sample_size 128 for 1024 px).
    return dict(
        sample_size=64, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
        joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
        pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm",
    )  # fmt: skip


def bench_refl(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    from diffusers import SD3Transformer2DModel

    cfg = generator_config(args.dry_run)
    _reset_peak(device)
    with torch.device(device):
        model = SD3Transformer2DModel(**cfg)
    if args.activation_checkpointing:
        model.enable_gradient_checkpointing()
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    b, steps, guidance = args.refl_batch, args.sampling_steps, 4.5
    text_tokens = 8 if args.dry_run else 333  # CLIP 77 + T5 256
    size, ch = cfg["sample_size"], cfg["in_channels"]
    g = torch.Generator(device="cpu").manual_seed(0)
    cond = torch.randn(b, text_tokens, cfg["joint_attention_dim"], generator=g).to(device)
    pooled = torch.randn(b, cfg["pooled_projection_dim"], generator=g).to(device)
    text = torch.cat([torch.zeros_like(cond), cond])  # unconditional first (zero embeddings), then conditional
    pooled2 = torch.cat([torch.zeros_like(pooled), pooled])
    sigmas = torch.linspace(1.0, 0.0, steps + 1, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)

    def velocity(x: torch.Tensor, i: int) -> torch.Tensor:
        t = (sigmas[i] * 1000).expand(2 * b)
        with autocast:
            v = model(
                hidden_states=torch.cat([x, x]), timestep=t, encoder_hidden_states=text,
                pooled_projections=pooled2, return_dict=False,
            )[0].float()  # fmt: skip
        v_uncond, v_cond = v.chunk(2)
        return v_uncond + guidance * (v_cond - v_uncond)

    def sample(x: torch.Tensor, stop: int) -> torch.Tensor:
        with torch.no_grad():
            for i in range(stop):
                x = x + (sigmas[i + 1] - sigmas[i]) * velocity(x, i)
        return x

    def refl_step(x: torch.Tensor) -> float:
        k = args.refl_step
        x = sample(x, k)
        v = velocity(x, k)  # the one step with gradient
        x0 = x - sigmas[k] * v  # flow-matching x0 prediction
        reward = -(x0.float() ** 2).mean()  # scalar stand-in for decode + reward model
        (-reward).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return reward.detach()

    def noise() -> torch.Tensor:
        return torch.randn(b, ch, size, size, generator=g).to(device)

    def timed(fn, reps: int) -> float:
        out = []
        for _ in range(reps):
            x = noise()
            _sync(device)
            t0 = time.perf_counter()
            fn(x)
            _sync(device)
            out.append(time.perf_counter() - t0)
        return statistics.median(out)

    sample(noise(), 2)  # warm-up
    refl_step(noise())
    _sync(device)
    sampling_s = timed(lambda x: sample(x, steps), args.refl_reps)
    refl_s = timed(refl_step, args.refl_reps)
    ratio = refl_s / sampling_s
    px = size * 8
    print(
        f"\n[ReFL] SD3Transformer2DModel{' (tiny)' if args.dry_run else ' SD3.5-medium config'}, random init: "
        f"{n_params / 1e6:,.1f}M params, fp32 weights + bf16 autocast, {px} px ({size}x{size}x{ch} latents), "
        f"batch {b} with CFG {guidance} (x2), {text_tokens} text tokens, gradient checkpointing "
        f"{'on' if args.activation_checkpointing else 'off'}"
    )
    print(f"  sampling pass, {steps} steps, no grad: {sampling_s:.3f} s")
    print(
        f"  ReFL step (no grad to step {args.refl_step}, 1 step with grad, x0, stand-in reward backward, AdamW; "
        f"VAE decode and reward model excluded): {refl_s:.3f} s"
    )
    print(f"  ratio ReFL step / sampling pass: {ratio:.2f}x; peak memory {_peak_gb(device)}")
    return {"sampling_s": sampling_s, "refl_s": refl_s, "ratio": ratio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny configs, gloo: checks the code paths")
    parser.add_argument("--batch", type=int, default=None, help="reward-model sequences per step (default 8)")
    parser.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 1024)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="timed reward-model steps (default 10)")
    parser.add_argument(
        "--activation-checkpointing", action=argparse.BooleanOptionalAction, default=True,
        help="as configs/trainer/fsdp.yaml (default on); also gradient checkpointing of the generator",
    )  # fmt: skip
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s for the MFU")
    parser.add_argument("--sampling-steps", type=int, default=None, help="default 28")
    parser.add_argument("--refl-step", type=int, default=None, help="step taken with grad (default 24 of 28)")
    parser.add_argument("--refl-batch", type=int, default=1, help="prompts per ReFL step (CFG doubles it)")
    parser.add_argument("--refl-reps", type=int, default=None, help="timed repetitions (default 2)")
    parser.add_argument("--skip-reward", action="store_true")
    parser.add_argument("--skip-refl", action="store_true")
    args = parser.parse_args()
    dry = args.dry_run
    args.batch = args.batch or (2 if dry else 8)
    args.seq = args.seq or (64 if dry else 1024)
    args.steps = args.steps or (2 if dry else 10)
    args.warmup = 1 if dry else args.warmup
    args.sampling_steps = args.sampling_steps or (4 if dry else 28)
    args.refl_step = args.refl_step if args.refl_step is not None else (2 if dry else 24)
    args.refl_reps = args.refl_reps or (1 if dry else 2)
    if not 0 <= args.refl_step < args.sampling_steps:
        parser.error("--refl-step must be in [0, --sampling-steps)")

    if dry:
        device = torch.device("cpu")
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --dry-run to check the code paths on CPU")
        device = torch.device("cuda", 0)
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    started = time.perf_counter()
    init_process_group(device)
    try:
        if not args.skip_reward:
            bench_reward_model(args, device)
            gc.collect()  # the reward model and its optimizer states go before the generator is built
        if not args.skip_refl:
            bench_refl(args, device)
    finally:
        dist.destroy_process_group()
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
