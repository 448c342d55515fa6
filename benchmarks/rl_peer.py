"""rewarddance's GRPO against a peer, TRL's DDPOTrainer, on the same generator, reward, prompts and budget.

    pip install -e ".[peer]"   # trl==0.23.1, the last release with DDPOTrainer; nothing else uses it
    python benchmarks/rl_peer.py [--steps 6] [--repeats 1] [--kl-coef 0] [--per-tag 40] [--out runs/rl_peer.json]

Both arms train the bundled generator (``data/generators/shapes-t2i``: an SD 1.5-architecture UNet, DDIM,
v-prediction, 64 px) against the same reward, the shapes pixel oracle (``shapes-oracle``, its per-part mean score),
on the same prompt batches of ``shapes:train`` in the same order, with the settings of configs/rl/shapes_grpo.yaml
wherever the two algorithms share a meaning: prompts per batch and samples per prompt (4 x 4 = 16 samples per
update, advantages normalised within each prompt's 4 samples), DDIM eta, guidance (with CFG in the training pass
too), sampling steps, denoising steps trained per update (4), clip range (both clip the ratio of log-probs averaged
over latent elements), advantage clip, learning rate (AdamW, no weight decay), gradient-norm clip, and the same
LoRA (the config's rank, alpha and target modules, peft's default initialisation). What only one of them has stays
as that one has it: rewarddance's KL to the starting model (``kl_coef``), and which steps are trained (rewarddance
draws 4 of the 9 stochastic steps per update, the same for the batch; DDPO draws 4 of all 10 per sample).

- rewarddance: ``GeneratorRLTask(algorithm="grpo")`` through a Lightning ``Trainer`` on ``PromptDataModule``,
  as ``rewarddance fit`` runs it (no evaluation, plot or export during the run).
- TRL: ``DDPOTrainer`` with ``DefaultDDPOStableDiffusionPipeline`` on the same folder, its LoRA replaced by the
  config's (``get_trainable_layers`` is the wrapper's hook for that), ``mixed_precision="no"`` (rewarddance trains
  in float32 too), checkpoint saving off.

Each arm runs in a fresh subprocess (one CPU thread, ``OMP_NUM_THREADS=1``); with ``--repeats`` > 1 the arms
alternate (A B, B A, ...) so a change of the machine's load falls on both. Measured per arm:

- images/s: training samples / wall time of the training loop (trainer set-up, rollouts, reward, updates; model
  loading and the held-out evaluation excluded), and the median step time after the first step;
- peak memory: on CPU the peak resident memory of the arm's process (``ru_maxrss``) read right after training,
  next to the resident memory after loading; on a GPU ``torch.cuda.max_memory_allocated`` during training;
- oracle-reward gain per 1,000 training samples, two ways: (a) on the training samples, the mean reward of the
  last block of steps minus the first block (a block is a third of the steps), divided by the samples between the
  blocks' centres; (b) held out: ``shapes:test-id`` prompts sampled with the same seeds by both arms (plain DDIM,
  eta 0) before and after training, the paired gain divided by the samples trained. Both starting models are the
  same, so both arms' "before" must agree exactly: the script checks it, and that both saw the same prompts.

A handful of steps only measures throughput and memory well; the gains of so few samples are mostly noise, so
their standard errors are printed next to them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
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
CONFIG = "configs/rl/shapes_grpo.yaml"
HELDOUT = "shapes:test-id"
HELDOUT_SEED = 12345  # held-out image j is sampled with seed HELDOUT_SEED + j, in both arms, before and after
ARMS = ("rewarddance", "trl")
TRL_VERSION = "0.23.1"
ZERO_SNR_FLOOR = 2**-24  # alpha_bar of a zero-SNR schedule's first step in TRL's arm (see train_trl)


def recipe(config: str, kl_coef: float | None = None, per_tag: int | None = None) -> dict[str, Any]:
    """What both arms take from the GRPO config; ``kl_coef`` (rewarddance's KL coefficient) and ``per_tag`` (training
    prompts per tag) replace the config's when given."""
    with open(ROOT / config) as f:
        c = yaml.safe_load(f)
    model, data = c["model"]["init_args"], c["data"]["init_args"]
    return {
        "generator": model["generator"],
        "grpo": {**model["grpo"], **({} if kl_coef is None else {"kl_coef": kl_coef})},
        "lora": model["lora"],
        "height": model["height"],
        "width": model["width"],
        "steps": model["num_inference_steps"],
        "guidance": model["guidance_scale"],
        "lr": model["optimizer"]["init_args"]["lr"],
        "weight_decay": model["optimizer"]["init_args"].get("weight_decay", 0.0),
        "clip_grad": model.get("max_grad_norm", 1.0),  # the task's default
        "prompts": data["train"],
        "per_tag": per_tag or data["per_tag"],
        "batch": data["batch_size"],
        "seed": data.get("seed", 0),
    }


def import_trl() -> Any:
    """trl, or a clear error: it is an optional extra of this benchmark alone.

    Imported by name at run time (not an import statement) because the package and the benchmarks must run on
    the core dependencies (tests/test_dependencies.py reads every import statement); trl comes with ``[peer]``.
    """
    try:
        trl = importlib.import_module("trl")
    except ImportError as e:
        raise SystemExit(
            f"benchmarks/rl_peer.py needs trl=={TRL_VERSION} (the last release with DDPOTrainer): "
            'pip install -e ".[peer]"'
        ) from e
    if not hasattr(trl, "DDPOTrainer"):
        raise SystemExit(f"trl {trl.__version__} has no DDPOTrainer; install trl=={TRL_VERSION} (the [peer] extra)")
    return trl


# -------------------------------------------------------------------------------------------------- the worker


def prompt_batches(r: dict[str, Any], steps: int) -> list[list[dict[str, Any]]]:
    """The first ``steps`` training batches, in the order ``PromptDataModule`` (rewarddance's arm) serves them."""
    from rewarddance.data.prompts import PromptDataModule

    data = PromptDataModule(train=r["prompts"], per_tag=r["per_tag"], batch_size=r["batch"], seed=r["seed"])
    # One epoch only: its last batch can be short, and DDPO's sample batch is fixed, so neither arm meets it.
    batches = [[dict(item) for item in batch] for batch in data.train_dataloader()]
    full = [batch for batch in batches if len(batch) == r["batch"]]
    if len(full) < steps or any(len(batch) < r["batch"] for batch in batches[:steps]):
        raise SystemExit(
            f"--steps {steps}: {r['prompts']} at per_tag {r['per_tag']} has {len(full)} full batches of {r['batch']} "
            "prompts in an epoch, and both arms must see the same full batches: fewer steps, or a larger --per-tag"
        )
    return batches[:steps]


class Oracle:
    """The shapes-oracle reward (per-part mean, what both arms maximise), recording every training sample's score
    and prompt; ``overall`` (GenEval's all-or-nothing verdict) is computed for held-out images only."""

    def __init__(self) -> None:
        from rewarddance.rl.rewards import build_reward

        self.reward = build_reward("shapes-oracle")
        self.overall = build_reward({"kind": "shapes-oracle", "score": "overall"})
        self.scores: list[list[float]] = []
        self.prompts: list[list[str]] = []

    def __call__(self, images: Any, prompts: Any, metadata: Any) -> Any:
        scores = self.reward(images, list(prompts), list(metadata))
        self.scores.append(scores.tolist())
        self.prompts.append(list(prompts))
        return scores


def heldout(pipeline: Any, items: list[dict[str, Any]], samples: int, r: dict[str, Any], oracle: Oracle) -> dict:
    """Per-image oracle scores of the held-out prompts, sampled by the plain diffusers pipeline (DDIM, eta 0) with
    seeds that depend only on the image's index: the same noise in both arms, before and after."""
    import torch

    mean, overall = [], []
    jobs = [(item, j) for j, item in enumerate(item for item in items for _ in range(samples))]
    for start in range(0, len(jobs), 8):
        chunk = jobs[start : start + 8]
        with torch.no_grad():
            images = pipeline(
                prompt=[item["prompt"] for item, _ in chunk],
                num_inference_steps=r["steps"],
                guidance_scale=r["guidance"],
                height=r["height"],
                width=r["width"],
                eta=0.0,
                generator=[torch.Generator().manual_seed(HELDOUT_SEED + j) for _, j in chunk],
                output_type="pt",
            ).images
        metadata = [item["metadata"] for item, _ in chunk]
        prompts = [item["prompt"] for item, _ in chunk]
        mean += oracle.reward(images, prompts, metadata).tolist()
        overall += oracle.overall(images, prompts, metadata).tolist()
    return {"mean": mean, "overall": overall}


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def train_rewarddance(r: dict[str, Any], batches: list, oracle: Oracle, evaluate: Any) -> dict[str, Any]:
    import lightning as L
    import torch

    from rewarddance.data.prompts import PromptDataModule
    from rewarddance.tasks import GeneratorRLTask

    task = GeneratorRLTask(
        generator=r["generator"],
        reward=oracle,
        algorithm="grpo",
        grpo=r["grpo"],
        lora=r["lora"],
        height=r["height"],
        width=r["width"],
        num_inference_steps=r["steps"],
        guidance_scale=r["guidance"],
        eval_every=None,
        plot=False,
        export=False,
        seed=0,
        optimizer=lambda params: torch.optim.AdamW(params, lr=r["lr"], weight_decay=r["weight_decay"]),
        max_grad_norm=r["clip_grad"],
    )
    task.configure_model()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipeline = task.generator.pipeline.to(device)
    loaded = rss_mb()
    before = evaluate(pipeline)
    times: list[float] = []

    class Timer(L.Callback):
        def on_train_batch_start(self, *_: object) -> None:
            self.started = time.perf_counter()

        def on_train_batch_end(self, *_: object) -> None:
            times.append(time.perf_counter() - self.started)

    data = PromptDataModule(train=r["prompts"], per_tag=r["per_tag"], batch_size=r["batch"], seed=r["seed"])
    trainer = L.Trainer(
        max_steps=len(batches), accelerator=device, devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[Timer()], num_sanity_val_steps=0,
    )  # fmt: skip
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    trainer.fit(task, datamodule=data)
    wall = time.perf_counter() - started
    memory = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else peak_mb()
    pipeline.unet.eval()
    return {"loaded_mb": loaded, "peak_mb": memory, "wall_s": wall, "step_s": times, "before": before,
            "after": evaluate(pipeline)}  # fmt: skip


def train_trl(r: dict[str, Any], batches: list, oracle: Oracle, evaluate: Any) -> dict[str, Any]:
    import torch
    from accelerate import PartialState

    from rewarddance.rl.settings import GeneratorLora

    trl = import_trl()
    PartialState()  # trl's pipeline wrapper logs through accelerate, which wants its state first
    lora = GeneratorLora(**r["lora"]).to_peft_config()

    class Pipeline(trl.DefaultDDPOStableDiffusionPipeline):
        """TRL's wrapper with the config's LoRA instead of its built-in rank-4 one on attention alone."""

        def get_trainable_layers(self) -> Any:
            unet = self.sd_pipeline.unet
            unet.requires_grad_(False)
            unet.add_adapter(lora)
            return unet

    group = r["grpo"]["group_size"]
    queue = [(item["prompt"], item["metadata"]) for batch in batches for item in batch for _ in range(group)]
    queue.reverse()

    def prompt_fn() -> tuple[str, Any]:
        return queue.pop()  # each batch's prompts, each repeated group_size times: rewarddance's layout

    def reward_fn(images: Any, prompts: Any, metadata: Any) -> tuple[Any, dict]:
        return oracle(images, prompts, metadata), {}

    sd = Pipeline(str(ROOT / r["generator"]), use_lora=True)
    samples = r["batch"] * group
    steps = r["steps"]
    config = trl.DDPOConfig(
        num_epochs=len(batches),
        seed=0,
        mixed_precision="no",
        save_freq=10**9,  # no checkpoints (rewarddance's arm writes none either)
        project_kwargs={"project_dir": tempfile.mkdtemp(prefix="rl_peer_trl_")},
        sample_num_steps=steps,
        sample_eta=r["grpo"]["noise_level"],
        sample_guidance_scale=r["guidance"],
        sample_batch_size=samples,
        sample_num_batches_per_epoch=1,
        train_batch_size=samples,
        train_gradient_accumulation_steps=1,
        train_num_inner_epochs=r["grpo"].get("rollout_reuse", 1),
        train_timestep_fraction=r["grpo"]["train_steps"] / steps,
        train_cfg=True,
        train_learning_rate=r["lr"],
        train_adam_weight_decay=r["weight_decay"],
        train_max_grad_norm=r["clip_grad"],
        train_clip_range=r["grpo"]["clip_range"],
        train_adv_clip_max=r["grpo"]["adv_clip_max"],
        per_prompt_stat_tracking=True,  # advantages within each prompt's group of this batch, as GRPO
        per_prompt_stat_tracking_buffer_size=group,
        per_prompt_stat_tracking_min_count=group,
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipeline = sd.sd_pipeline.to(device)
    loaded = rss_mb()
    before = evaluate(pipeline)
    # The generator's schedule has zero terminal SNR (alpha_bar = 0 at the first step). There TRL's DDIM step takes
    # sqrt(1 - alpha_bar_prev - std^2) of a value that is 0 in exact arithmetic and slightly negative in float32:
    # NaN latents from the first step on (rewarddance clamps it at 0). During TRL's training only, that alpha_bar
    # is raised to 2**-24, as diffusers' Euler schedulers do for zero-SNR schedules; a change far below what
    # alters a sample (the first step's x0 prediction moves by sqrt(2**-24) times the latent).
    scheduler = pipeline.scheduler
    exact = scheduler.alphas_cumprod
    scheduler.alphas_cumprod = exact.clone()
    scheduler.alphas_cumprod[-1] = max(float(exact[-1]), ZERO_SNR_FLOOR)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    trainer = trl.DDPOTrainer(config, reward_fn, prompt_fn, sd)
    times, global_step = [], 0
    for epoch in range(len(batches)):  # DDPOTrainer.train's loop, timed per step
        step_started = time.perf_counter()
        global_step = trainer.step(epoch, global_step)
        times.append(time.perf_counter() - step_started)
    wall = time.perf_counter() - started
    memory = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else peak_mb()
    scheduler.alphas_cumprod = exact  # the held-out samples use the exact schedule, as in rewarddance's arm
    pipeline.unet.eval()
    return {"loaded_mb": loaded, "peak_mb": memory, "wall_s": wall, "step_s": times, "before": before,
            "after": evaluate(pipeline), "optimizer_steps": global_step}  # fmt: skip


def worker(args: argparse.Namespace) -> None:
    import torch

    from rewarddance.data.prompts import load_prompts

    torch.set_num_threads(1)
    r = recipe(args.config, args.kl_coef, args.per_tag)
    batches = prompt_batches(r, args.steps)
    items = load_prompts(HELDOUT, per_tag=args.heldout_per_tag)
    oracle = Oracle()

    def evaluate(pipeline: Any) -> dict:
        return heldout(pipeline, items, args.heldout_samples, r, oracle)

    train = train_rewarddance if args.worker == "rewarddance" else train_trl
    result = train(r, batches, oracle, evaluate)
    result.update(
        arm=args.worker,
        rewards=oracle.scores,
        prompts=oracle.prompts,
        samples_per_step=r["batch"] * r["grpo"]["group_size"],
        device="cuda" if torch.cuda.is_available() else "cpu",
    )
    print(json.dumps(result))


# -------------------------------------------------------------------------------------------------- the parent


def run_arm(arm: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", arm, "--config", args.config, "--steps", str(args.steps),
           "--heldout-per-tag", str(args.heldout_per_tag), "--heldout-samples", str(args.heldout_samples)]  # fmt: skip
    if args.kl_coef is not None:
        cmd += ["--kl-coef", str(args.kl_coef)]
    if args.per_tag is not None:
        cmd += ["--per-tag", str(args.per_tag)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{arm} arm failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - started
    return result


def mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    se = statistics.stdev(values) / math.sqrt(n) if n > 1 else float("nan")
    return mean, se


def summarise(run: dict[str, Any]) -> dict[str, Any]:
    """Throughput, memory and both gains per 1,000 samples (with standard errors) of one arm's run."""
    steps, per_step = len(run["rewards"]), run["samples_per_step"]
    samples = steps * per_step
    block = max(1, steps // 3)
    first = [x for s in run["rewards"][:block] for x in s]
    last = [x for s in run["rewards"][-block:] for x in s]
    (m0, se0), (m1, se1) = mean_se(first), mean_se(last)
    between = (steps - block) * per_step or samples  # samples between the two blocks' centres
    diffs = [a - b for a, b in zip(run["after"]["mean"], run["before"]["mean"])]
    held, held_se = mean_se(diffs)
    overall = [a - b for a, b in zip(run["after"]["overall"], run["before"]["overall"])]
    return {
        "images_s": samples / run["wall_s"],
        "steady_images_s": per_step / statistics.median(run["step_s"][1:] or run["step_s"]),
        "peak_mb": run["peak_mb"],
        "loaded_mb": run["loaded_mb"],
        "train_first": m0,
        "train_last": m1,
        "train_gain_per_1k": (m1 - m0) / between * 1000,
        "train_gain_se_per_1k": math.hypot(se0, se1) / between * 1000,
        "heldout_before": mean_se(run["before"]["mean"])[0],
        "heldout_after": mean_se(run["after"]["mean"])[0],
        "heldout_gain_per_1k": held / samples * 1000,
        "heldout_gain_se_per_1k": held_se / samples * 1000,
        "heldout_overall_gain": mean_se(overall)[0],
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=CONFIG, help="the GRPO config both arms take their settings from")
    parser.add_argument("--steps", type=int, default=6, help="updates per arm (16 samples each with the config)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per arm, alternating the order")
    parser.add_argument("--heldout-per-tag", type=int, default=4, help=f"{HELDOUT} prompts per tag")
    parser.add_argument("--heldout-samples", type=int, default=2, help="held-out images per prompt")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument(
        "--kl-coef", type=float, help="rewarddance's KL coefficient instead of the config's (0: DDPO's work per step)"
    )
    parser.add_argument(
        "--per-tag", type=int, help="training prompts per tag instead of the config's (one epoch must hold --steps)"
    )
    parser.add_argument("--out", type=Path, help="write every run's raw record (JSON) here")
    parser.add_argument("--worker", choices=ARMS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.worker:
        worker(args)
        return
    if "trl" in args.arms:
        import_trl()  # fail before the first arm runs, not after it
    prompt_batches(recipe(args.config, args.kl_coef, args.per_tag), args.steps)  # enough batches, before any arm
    load = os.getloadavg()
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in args.arms}
    for repeat in range(args.repeats):
        order = args.arms if repeat % 2 == 0 else args.arms[::-1]
        for arm in order:
            runs[arm].append(run_arm(arm, args))
            print(f"[rl_peer] {arm} run {repeat + 1}: {runs[arm][-1]['process_s']:.0f} s", file=sys.stderr)
    load = (load, os.getloadavg())
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs}))

    r = recipe(args.config, args.kl_coef, args.per_tag)
    device = next(iter(runs.values()))[0]["device"]
    print(
        f"\n{args.config} on {r['generator']}: reward shapes-oracle (per-part mean), {r['batch']} prompts x "
        f"{r['grpo']['group_size']} samples per update, {r['steps']} DDIM steps (eta {r['grpo']['noise_level']}), "
        f"guidance {r['guidance']}, {r['grpo']['train_steps']} steps trained per update, LoRA r {r['lora']['r']}, rewarddance's KL "
        f"coefficient {r['grpo']['kl_coef']}, "
        f"lr {r['lr']}; {args.steps} updates per arm, {args.repeats} run(s) each, {device}, 1 thread; load average "
        f"{load[0][0]:.1f} at the start, {load[1][0]:.1f} at the end (1 min)"
    )
    memory = "GPU peak MB (allocated)" if device == "cuda" else "peak RSS MB"
    print(
        f"{'arm':<12} {'run':>3} {'images/s':>8} {'steady':>7} {memory:>12} {'loaded MB':>9} "
        f"{'train reward first -> last':>27} {'gain/1k (SE)':>15} {'held-out before -> after':>25} "
        f"{'gain/1k (SE)':>15}"
    )
    table: dict[str, list[dict[str, Any]]] = {}
    for arm, arm_runs in runs.items():
        table[arm] = [summarise(run) for run in arm_runs]
        for i, s in enumerate(table[arm], start=1):
            print(
                f"{arm:<12} {i:>3} {s['images_s']:>8.2f} {s['steady_images_s']:>7.2f} {s['peak_mb']:>12.0f} "
                f"{s['loaded_mb']:>9.0f} {s['train_first']:>12.3f} -> {s['train_last']:.3f}    "
                f"{s['train_gain_per_1k']:>+7.3f} ({s['train_gain_se_per_1k']:.3f}) "
                f"{s['heldout_before']:>14.3f} -> {s['heldout_after']:.3f}  "
                f"{s['heldout_gain_per_1k']:>+7.3f} ({s['heldout_gain_se_per_1k']:.3f})"
            )
    if len(runs) < 2:
        return
    # The two arms start from the same model and see the same prompts: anything else is a broken comparison.
    baselines = {json.dumps(run["before"]) for arm_runs in runs.values() for run in arm_runs}
    prompts = {json.dumps(run["prompts"]) for arm_runs in runs.values() for run in arm_runs}
    print(
        f"checks: same held-out baseline in every run: {len(baselines) == 1}; same training prompts in every run: "
        f"{len(prompts) == 1}"
    )

    def median(arm: str, key: str) -> float:
        return statistics.median(s[key] for s in table[arm])

    speed = median("rewarddance", "images_s") / median("trl", "images_s")
    memory_ratio = median("rewarddance", "peak_mb") / median("trl", "peak_mb")
    verdicts = [gain_verdict(table, key) for key in ("heldout", "train")]
    print(
        f"target: rewarddance >= 1.5x TRL's images/s: {speed:.2f}x ({'met' if speed >= 1.5 else 'missed'}); "
        f"at no more memory: {memory_ratio:.2f}x ({'met' if memory_ratio <= 1.0 else 'missed'}); gain per 1,000 "
        f"samples at least TRL's: held-out {verdicts[0]}; training samples {verdicts[1]}"
    )


def gain_verdict(table: dict[str, list[dict[str, Any]]], key: str) -> str:
    """rewarddance's gain per 1,000 samples against TRL's (medians over runs, with the SE of their difference):
    met or missed only when the difference is more than 2 SE from 0, else undecided at this budget."""

    def median(arm: str, field: str) -> float:
        return statistics.median(s[field] for s in table[arm])

    ours, theirs = median("rewarddance", f"{key}_gain_per_1k"), median("trl", f"{key}_gain_per_1k")
    se = math.hypot(median("rewarddance", f"{key}_gain_se_per_1k"), median("trl", f"{key}_gain_se_per_1k"))
    difference = ours - theirs
    if not se > 0:  # NaN (one image) or 0 (no image changed in either arm): nothing to decide on
        verdict = "undecided: no spread to judge by" if difference == 0 else "undecided: no SE"
    elif abs(difference) <= 2 * se:
        verdict = "undecided at this budget: within 2 SE"
    else:
        verdict = "met" if difference > 0 else "missed"
    return f"{ours:+.3f} vs {theirs:+.3f}, difference {difference:+.3f} (SE {se:.3f}): {verdict}"


if __name__ == "__main__":
    main()
