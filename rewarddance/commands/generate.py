"""``python -m rewarddance generate`` and ``evaluate``: sample a generator (plain, best-of-N, search over paths)
and judge it GenEval-style with the evaluator of the prompts' metadata (the shapes world's pixel oracle, registered
by its plug-in: :mod:`rewarddance.callbacks.evaluation`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from rewarddance.errors import UsageError
from rewarddance.outputs import atomic_output

Mode = Literal["plain", "best_of_n", "search"]


@dataclass
class Sampling:
    """How ``generate`` and ``evaluate`` sample each prompt, and which prompts of a source they take.

    The commands take these as keyword arguments (``**sampling``), so each is one command-line option of both.

    Attributes:
        mode: plain, best_of_n (draw n, keep the best) or search (search over paths with n paths).
        n: Best-of-N candidates, or search paths.
        reward: Verifier for best_of_n / search: a reward-model export folder or a reward name (e.g. shapes-color).
        steps: Denoising steps of one pass.
        guidance_scale: Classifier-free guidance (default: the pipeline's).
        size: Image side in pixels.
        seed: Seed of the first prompt (prompt i uses seed + i).
        branch_steps: Search: steps at which paths branch (default: 1/2 and 3/4 of the schedule).
        num_branches: Search: re-noised copies per path and round.
        renoise_steps: Search: steps back each copy is re-noised.
        per_tag: Prompts per tag for shapes:<split> sources.
        limit: At most this many prompts.
    """

    mode: Mode = "plain"
    n: int = 4
    reward: str | None = None
    steps: int = 20
    guidance_scale: float | None = None
    size: int = 64
    seed: int = 0
    branch_steps: list[int] | None = None
    num_branches: int = 2
    renoise_steps: int = 2
    per_tag: int = 10
    limit: int | None = None

    def generate_kwargs(self, seed: int) -> dict[str, Any]:
        """The arguments of :func:`rewarddance.inference.generate` for the prompt sampled with ``seed``."""
        return {
            "mode": self.mode, "n": self.n, "num_inference_steps": self.steps, "guidance_scale": self.guidance_scale,
            "height": self.size, "width": self.size, "seed": seed, "branch_steps": self.branch_steps,
            "num_branches": self.num_branches, "renoise_steps": self.renoise_steps,
        }  # fmt: skip

    def check(self, images: int, images_option: str) -> None:
        """Refuse settings that cannot work before any model loads (:func:`rewarddance.inference.generate` checks
        them too, but only after the generator and the verifier are loaded)."""
        at_least_one = {
            "--n": self.n,
            images_option: images,
            "--steps": self.steps,
            "--size": self.size,
            "--num_branches": self.num_branches,
            "--renoise_steps": self.renoise_steps,
            **({"--limit": self.limit} if self.limit is not None else {}),
        }
        for option, value in at_least_one.items():
            if value < 1:
                raise UsageError(f"{option} must be at least 1, got {value}")
        if self.mode != "plain" and not self.reward:
            raise UsageError(
                f"--mode {self.mode} needs a verifier: give --reward (a reward-model export folder or a reward name)"
            )
        if self.mode != "plain" and images > self.n:
            raise UsageError(f"{images_option} {images} exceeds the --n {self.n} candidates of --mode {self.mode}")


def _prompt_items(prompt: str | None, prompts: str | None, sampling: Sampling) -> list[dict[str, Any]]:
    from rewarddance.data.prompts import load_prompts, prompt_item

    if (prompt is None) == (prompts is None):
        raise UsageError(
            "give exactly one of --prompt TEXT or --prompts SOURCE (a .jsonl file, shards or shapes:<split>)"
        )
    if prompt is not None:
        return [prompt_item({}, prompt)]
    return load_prompts(prompts, per_tag=sampling.per_tag, limit=sampling.limit)


def sample_prompts(
    generator: str, items: list[dict[str, Any]], images_per_prompt: int, sampling: Sampling
) -> tuple[list[tuple[dict[str, Any], Any]], int]:
    """``(prompt item, Generation)`` per prompt, each prompt seeded by its index; and the verifier's judgments."""
    from rewarddance.inference import Verifier, generate
    from rewarddance.models.generators import load_generator

    model = load_generator(generator)
    verifier = Verifier(sampling.reward) if sampling.reward else None
    results = [
        (item, generate(
            model, item["prompt"], item.get("metadata"), num_images=images_per_prompt, verifier=verifier,
            **sampling.generate_kwargs(sampling.seed + index),
        ))
        for index, item in enumerate(tqdm(items, desc=sampling.mode, unit="prompt"))
    ]  # fmt: skip
    return results, verifier.judgments if verifier else 0


def generate(
    generator: str,
    prompt: str | None = None,
    prompts: str | None = None,
    out: str = "generated",
    num_images: int = 1,
    **sampling: Any,
) -> dict[str, Any]:
    """Sample images into a folder (PNG files + metadata.jsonl, which `score` reads back).

    Args:
        generator: A generator name, hub id or folder (e.g. data/generators/shapes-t2i).
        prompt: One prompt.
        prompts: Or a prompt source: a GenEval-format .jsonl, shards, or shapes:<split> (fixed shapes prompts).
        out: Output folder.
        num_images: Images kept per prompt.
        **sampling: How each prompt is sampled (:class:`Sampling`: mode, n, reward, steps, ...).
    """
    from rewarddance.models.pixels import to_pil_images

    options = Sampling(**sampling)
    options.check(num_images, "--num_images")
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {out!r} is a file; give the folder to write the images to")
    items = _prompt_items(prompt, prompts, options)
    rows, nfe = [], 0
    results, _ = sample_prompts(generator, items, num_images, options)
    with atomic_output(folder, folder=True) as tmp:
        for index, (item, result) in enumerate(results):
            nfe += result.nfe
            for rank, image in enumerate(to_pil_images(result.images)):
                name = f"{index:05d}_{rank}.png"
                image.save(tmp / name)
                row = {"file_name": name, "prompt": item["prompt"], "mode": options.mode, "nfe": result.nfe}
                if result.scores is not None:
                    row["verifier_score"] = float(result.scores[rank])
                if item.get("metadata"):
                    row["metadata"] = item["metadata"]
                rows.append(row)
        (tmp / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(
        f"wrote {len(rows)} images for {len(items)} prompts to {folder} ({options.mode}, "
        f"{nfe / len(items):.0f} NFE per prompt)"
    )
    return {"out": str(folder), "images": len(rows), "prompts": len(items), "nfe": nfe}


def evaluate(
    generator: str,
    prompts: str = "shapes:test-id",
    samples_per_prompt: int = 2,
    out: str | None = None,
    **sampling: Any,
) -> dict[str, float]:
    """Score a generator on shapes prompts with the pixel oracle, GenEval-style (per tag and overall).

    Args:
        generator: A generator name, hub id or folder (e.g. data/generators/shapes-t2i).
        prompts: Prompts with GenEval metadata: shapes:<split> (fixed shapes prompts), a GenEval .jsonl or shards.
        samples_per_prompt: Images judged per prompt (GenEval uses 4).
        out: Also write the report to this JSON file.
        **sampling: How each prompt is sampled (:class:`Sampling`: mode, n, reward, steps, ...).
    """
    from rewarddance.callbacks.evaluation import format_report, geneval_report, has_geneval_metadata
    from rewarddance.models.pixels import to_pil_images

    options = Sampling(**sampling)
    options.check(samples_per_prompt, "--samples_per_prompt")
    if out and Path(out).is_dir():
        raise UsageError(f"--out {out!r} is a folder; give the path of the JSON report to write")
    items = [i for i in _prompt_items(None, prompts, options) if has_geneval_metadata(i.get("metadata"))]
    if not items:
        raise UsageError(f"{prompts}: no prompt has GenEval metadata (tag, include) for the oracle to judge")
    images, metadata, nfe = [], [], 0
    results, judgments = sample_prompts(generator, items, samples_per_prompt, options)
    for item, result in results:
        images += to_pil_images(result.images)
        metadata += [item["metadata"]] * len(result.images)
        nfe += result.nfe
    report = geneval_report(images, metadata)
    report["nfe_per_image"] = nfe / len(images)
    report["judgments_per_image"] = judgments / len(images)  # the verifier's reward-model calls
    print(f"[rewarddance] {options.mode}: {format_report(report)} | {report['nfe_per_image']:.0f} NFE per image")
    if out:
        with atomic_output(out) as tmp:
            report_file = {"generator": generator, "prompts": prompts, "mode": options.mode, **report}
            tmp.write_text(json.dumps(report_file, indent=2))
    return report
