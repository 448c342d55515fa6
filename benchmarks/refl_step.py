"""ReFL step time against one sampling pass, its peak memory, and the best-of-N references amortised per step.

    python benchmarks/refl_step.py [--config configs/rl/shapes_refl.yaml] [--steps 12] [--run-steps N]

The step is the RL config's own: its generator and reward model (by default the bundled, trained
``data/generators/shapes-t2i`` and ``data/reward_models/shapes-rm-pairwise``: the weights are printed), batch,
image size, sampling steps, guidance, ReFL window and anchor loss. One ReFL update samples without gradient to a
late step, runs the denoiser once with gradient, decodes, scores with the frozen reward model, adds the anchor
(denoising) loss on the prompts' references, and backpropagates. Target: at most 1.5x the time of one plain sampling
pass of the same batch.

Each configuration (with and without gradient checkpointing) runs in its own fresh process (one CPU thread) through
a real Trainer on one fixed batch of the config's prompts:

- references: the pairwise reward model chooses each prompt's references once, from ``best_of_n`` samples of the
  starting model judged in both orders, and caches them for the run (``rewarddance.rl.reference``). Timed for the
  batch's prompts, per prompt; amortised per step as (prompts in the config's set) x (cost per prompt) / (steps of
  the run): every prompt pays it once, in the first epoch.
- step time: median over the steps after the first two (allocator warm-up), references already cached.
- step peak: the most tensor memory allocated during one step (forward, backward, gradients, optimizer update) that
  is live at once, in one extra, untimed step. Every tensor storage the step creates is followed from creation to
  release (``rewarddance.planning``'s tracker, the CPU counterpart of ``torch.cuda.max_memory_allocated``), so it
  counts exactly the step's tensors, where resident-memory readings would also count, or hide, what the C
  allocator kept cached from the set-up (model loading, references, sampling) in the same process.
- process peak: the peak resident memory of the whole fresh process (models, references, the timed steps; read
  before the tracked step): what the machine must hold.
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
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/rl/shapes_refl.yaml"
TASK_ARGS = ("generator", "reward", "refl", "lora", "height", "width", "num_inference_steps", "guidance_scale")
"""What the benchmark takes from the config's model (evaluation, plots and export are left out)."""


def recipe(config: str) -> dict[str, Any]:
    """The config's task arguments, batch size, prompt set and step budget."""
    with open(ROOT / config) as f:
        c = yaml.safe_load(f)
    model, data = c["model"]["init_args"], c["data"]["init_args"]
    return {
        "task": {k: model[k] for k in TASK_ARGS if k in model},
        "batch": data["batch_size"],
        "prompts": data["train"],
        "per_tag": data.get("per_tag", 50),
        "max_steps": c["trainer"]["max_steps"],
        "max_time": c["trainer"].get("max_time"),  # "DD:HH:MM:SS" or None
    }


def run_steps(r: dict[str, Any], references_s: float, step_s: float) -> int:
    """Steps of the config's run: max_steps, or fewer when max_time (minus the references) stops it first."""
    if not r["max_time"]:
        return r["max_steps"]
    days, hours, minutes, seconds = (int(x) for x in r["max_time"].split(":"))
    budget = ((days * 24 + hours) * 60 + minutes) * 60 + seconds - references_s
    return min(r["max_steps"], int(budget / step_s))


def worker(args: argparse.Namespace) -> None:
    import lightning as L
    import torch

    from rewarddance.data.prompts import PromptDataModule, load_prompts
    from rewarddance.planning import LiveTensorBytes
    from rewarddance.shapes import write_geneval_jsonl
    from rewarddance.tasks import GeneratorRLTask

    torch.set_num_threads(1)
    r = recipe(args.config)
    everything = load_prompts(r["prompts"], per_tag=r["per_tag"])
    batch = everything[: r["batch"]]
    prompts, metadata = [p["prompt"] for p in batch], [p.get("metadata") or {} for p in batch]
    task = GeneratorRLTask(
        **r["task"], gradient_checkpointing=args.checkpointing, eval_every=None, plot=False, export=False
    )
    task.configure_model()
    started = time.perf_counter()
    task.reward.prepare(prompts, metadata)  # best-of-N: sampled, judged, cached for the run
    references_s = (time.perf_counter() - started) / len(prompts)
    with torch.no_grad():
        task.generate(prompts, seed=0)  # warm-up
    sampling = []
    for seed in range(3):
        started = time.perf_counter()
        with torch.no_grad():
            task.generate(prompts, seed=seed)
        sampling.append(time.perf_counter() - started)

    times: list[float] = []
    peaks: dict[str, float] = {}

    class Measure(L.Callback):
        """Times every step; follows the tensors of the last one (tracking slows it: not timed)."""

        def on_train_batch_start(self, trainer: L.Trainer, *_: object) -> None:
            self.started = time.perf_counter()
            if trainer.global_step == args.steps:
                # The process's peak so far: models, references, the timed steps (not the tracker's own records).
                peaks["process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes
                self.tracker = LiveTensorBytes()
                self.tracker.__enter__()

        def on_train_batch_end(self, trainer: L.Trainer, *_: object) -> None:
            if trainer.global_step <= args.steps:
                times.append(time.perf_counter() - self.started)
                return
            self.tracker.__exit__(None, None, None)
            peaks["step"] = self.tracker.peak / 2**20

    jsonl = write_geneval_jsonl(Path(tempfile.mkdtemp()) / "prompts.jsonl", [p.get("metadata") or {} for p in batch])
    data = PromptDataModule(train=str(jsonl), batch_size=len(batch), shuffle=False)  # one fixed batch
    trainer = L.Trainer(
        max_steps=args.steps + 1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[Measure()],
    )  # fmt: skip
    trainer.fit(task, datamodule=data)
    print(json.dumps({
        "sampling_s": statistics.median(sampling), "refl_s": statistics.median(times[2:]),
        "references_s_per_prompt": references_s, "step_peak_mb": peaks["step"], "process_peak_mb": peaks["process"],
        "prompts_in_set": len(everything), "batch": len(batch),
    }))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=CONFIG, help="the RL config whose step is measured")
    parser.add_argument("--steps", type=int, default=12, help="timed ReFL steps per configuration (2 are warm-up)")
    parser.add_argument(
        "--run-steps",
        type=int,
        help="steps the references are amortised over (default: the config's run, see run_steps)",
    )
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    rows = {}
    for checkpointing in (False, True):
        cmd = [sys.executable, __file__, "--worker", "--config", args.config, "--steps", str(args.steps)]
        cmd += ["--checkpointing"] if checkpointing else []
        proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(proc.stderr[-3000:])
        rows[checkpointing] = json.loads(proc.stdout.strip().splitlines()[-1])
    r, first = recipe(args.config), rows[False]
    task, reward = r["task"], r["task"]["reward"]
    per_prompt = first["references_s_per_prompt"]
    references = per_prompt * first["prompts_in_set"]
    steps = args.run_steps or run_steps(r, references, first["refl_s"])
    print(
        f"\n{args.config}: generator {task['generator']}, reward {reward['path']} (these weights); batch "
        f"{first['batch']}, {task['height']} px, {task['num_inference_steps']} sampling steps, guidance "
        f"{task['guidance_scale']}, anchor weight {task.get('refl', {}).get('anchor_weight', 0)}; 1 CPU thread"
    )
    print(
        f"{'configuration':<30} {'sampling s':>10} {'ReFL step s':>11} {'ratio':>6} {'step peak MB':>12} {'process MB':>10}"
    )
    for checkpointing, row in rows.items():
        name = "ReFL, gradient checkpointing" if checkpointing else "ReFL"
        ratio = row["refl_s"] / row["sampling_s"]
        print(
            f"{name:<30} {row['sampling_s']:>10.3f} {row['refl_s']:>11.3f} {ratio:>6.2f} "
            f"{row['step_peak_mb']:>12.0f} {row['process_peak_mb']:>10.0f}"
        )
    amortised = references / steps
    ratio = first["refl_s"] / first["sampling_s"]
    total = (first["refl_s"] + amortised) / first["sampling_s"]
    print(
        f"references: best-of-{reward.get('best_of_n')} (top {reward.get('top_k')}) {per_prompt:.2f} s per prompt; "
        f"the config's {first['prompts_in_set']} prompts over its run of {steps} steps (max_steps {r['max_steps']}, "
        f"max_time {r['max_time']}): {amortised:.3f} s per step amortised; in the first epoch a step meets "
        f"{first['batch']} new prompts: +{first['batch'] * per_prompt:.1f} s"
    )
    print(
        f"target: ReFL step <= 1.5x a sampling pass: {ratio:.2f}x ({'met' if ratio <= 1.5 else 'missed'}); "
        f"with the references amortised {total:.2f}x ({'met' if total <= 1.5 else 'missed'})"
    )


if __name__ == "__main__":
    main()
