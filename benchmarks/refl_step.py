"""ReFL step time against one sampling pass, and peak memory with and without gradient checkpointing.

    python benchmarks/refl_step.py [--generator data/generators/shapes-t2i] [--batch 8] [--steps 12]

One ReFL update samples without gradient to a late step, runs the denoiser once with gradient, decodes, scores
with the frozen reward model and backpropagates to the denoiser. Target: at most 1.5x the time of one plain
sampling pass of the same batch (the no-grad trajectory dominates; the one step with gradient, the decode and the
reward backward are the overhead). Each configuration runs in its own process (one CPU thread) through a real
Trainer: the first two steps (best-of-N references being chosen, allocator warm-up) are excluded from the times;
peak memory is the process's peak RSS growth over its state after set-up.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a red circle", "two squares", "a blue triangle left of a green square", "a circle and a square"]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def worker(args: argparse.Namespace) -> None:
    import lightning as L
    import torch

    from rewarddance.data.prompts import PromptDataModule, prompt_item
    from rewarddance.data.shapes import write_geneval_jsonl
    from rewarddance.tasks import GeneratorRLTask

    torch.set_num_threads(1)
    prompts = [prompt_item({}, p) for p in (PROMPTS * 4)[: args.batch]]
    task = GeneratorRLTask(
        generator=args.generator, reward={"kind": "reward_model", "path": args.reward, "best_of_n": 4, "top_k": 2},
        gradient_checkpointing=args.checkpointing, height=64, width=64, num_inference_steps=args.sampling_steps,
        guidance_scale=2.0, eval_every=None, plot=False, export=False,
    )  # fmt: skip
    task.configure_model()
    task.reward.prepare([p["prompt"] for p in prompts], [{}] * len(prompts))  # references: outside the timings
    with torch.no_grad():
        task.generate([p["prompt"] for p in prompts], seed=0)  # warm-up
    base = _rss_mb()
    sampling = []
    for seed in range(3):
        started = time.perf_counter()
        with torch.no_grad():
            task.generate([p["prompt"] for p in prompts], seed=seed)
        sampling.append(time.perf_counter() - started)

    times: list[float] = []

    class Timer(L.Callback):
        def on_train_batch_start(self, *_: object) -> None:
            self.started = time.perf_counter()

        def on_train_batch_end(self, *_: object) -> None:
            times.append(time.perf_counter() - self.started)

    jsonl = write_geneval_jsonl(Path(tempfile.mkdtemp()) / "prompts.jsonl", [{"prompt": p["prompt"]} for p in prompts])
    data = PromptDataModule(train=str(jsonl), batch_size=args.batch, shuffle=False)  # one fixed batch
    trainer = L.Trainer(
        max_steps=args.steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[Timer()],
    )  # fmt: skip
    trainer.fit(task, datamodule=data)
    print(json.dumps({
        "sampling_s": statistics.median(sampling), "refl_s": statistics.median(times[2:]),
        "peak_mb": _rss_mb() - base,
    }))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", default="data/generators/shapes-t2i")
    parser.add_argument("--reward", default="data/reward_models/shapes-rm-pairwise")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12, help="ReFL steps per configuration (2 are warm-up)")
    parser.add_argument("--sampling-steps", type=int, default=20)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    rows = {}
    for checkpointing in (False, True):
        cmd = [sys.executable, __file__, "--worker", "--generator", args.generator, "--reward", args.reward,
               "--batch", str(args.batch), "--steps", str(args.steps), "--sampling-steps", str(args.sampling_steps)]  # fmt: skip
        cmd += ["--checkpointing"] if checkpointing else []
        proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(proc.stderr[-3000:])
        rows[checkpointing] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"\n{args.generator}, batch {args.batch}, 64 px, {args.sampling_steps} sampling steps with guidance, 1 CPU thread"
    )
    print(f"{'configuration':<34} {'sampling pass s':>15} {'ReFL step s':>12} {'ratio':>6} {'peak MB':>8}")
    for checkpointing, r in rows.items():
        name = "ReFL, gradient checkpointing" if checkpointing else "ReFL"
        ratio = r["refl_s"] / r["sampling_s"]
        print(f"{name:<34} {r['sampling_s']:>15.3f} {r['refl_s']:>12.3f} {ratio:>6.2f} {r['peak_mb']:>8.0f}")
    ratio = rows[False]["refl_s"] / rows[False]["sampling_s"]
    print(f"target: ReFL step <= 1.5x a sampling pass: {ratio:.2f}x ({'met' if ratio <= 1.5 else 'missed'})")


if __name__ == "__main__":
    main()
