"""``python -m rewarddance generate`` and ``evaluate``: sample a generator (plain, best-of-N, search over paths)
and judge it GenEval-style with the evaluator of the prompts' metadata (the shapes world's pixel oracle, registered
by its plug-in: :mod:`rewarddance.callbacks.evaluation`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from rewarddance.errors import UsageError
from rewarddance.outputs import atomic_output

Mode = Literal["plain", "best_of_n", "search"]


def _prompt_items(prompt: str | None, prompts: str | None, per_tag: int, limit: int | None) -> list[dict[str, Any]]:
    from rewarddance.data.prompts import load_prompts, prompt_item

    if (prompt is None) == (prompts is None):
        raise UsageError(
            "give exactly one of --prompt TEXT or --prompts SOURCE (a .jsonl file, shards or shapes:<split>)"
        )
    if prompt is not None:
        return [prompt_item({}, prompt)]
    return load_prompts(prompts, per_tag=per_tag, limit=limit)


def _run(
    generator: str, items: list[dict[str, Any]], images_per_prompt: int, settings: dict[str, Any], reward: str | None
) -> tuple[list[tuple[dict[str, Any], Any]], int]:
    """``(prompt item, Generation)`` per prompt, each prompt seeded by its index; and the verifier's judgments."""
    from rewarddance.inference import Verifier, generate
    from rewarddance.models.generators import load_generator

    model = load_generator(generator)
    verifier = Verifier(reward) if reward else None
    seed = settings.pop("seed")
    results = [
        (item, generate(
            model, item["prompt"], item.get("metadata"), num_images=images_per_prompt, verifier=verifier,
            seed=seed + index, **settings,
        ))
        for index, item in enumerate(tqdm(items, desc=settings["mode"], unit="prompt"))
    ]  # fmt: skip
    return results, verifier.judgments if verifier else 0


def generate(
    generator: str,
    prompt: str | None = None,
    prompts: str | None = None,
    out: str = "generated",
    mode: Mode = "plain",
    num_images: int = 1,
    n: int = 4,
    reward: str | None = None,
    steps: int = 20,
    guidance_scale: float | None = None,
    size: int = 64,
    seed: int = 0,
    branch_steps: list[int] | None = None,
    num_branches: int = 2,
    renoise_steps: int = 2,
    per_tag: int = 10,
    limit: int | None = None,
) -> dict[str, Any]:
    """Sample images into a folder (PNG files + metadata.jsonl, which `score` reads back).

    Args:
        generator: A generator name, hub id or folder (e.g. data/generators/shapes-t2i).
        prompt: One prompt.
        prompts: Or a prompt source: a GenEval-format .jsonl, shards, or shapes:<split> (fixed shapes prompts).
        out: Output folder.
        mode: plain, best_of_n (draw n, keep the best) or search (search over paths with n paths).
        num_images: Images kept per prompt.
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
    from rewarddance.models.pixels import to_pil_images

    settings = _settings(mode, n, steps, guidance_scale, size, seed, branch_steps, num_branches, renoise_steps)
    _check(settings, num_images, "--num_images", reward, limit)
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {out!r} is a file; give the folder to write the images to")
    items = _prompt_items(prompt, prompts, per_tag, limit)
    rows, nfe = [], 0
    results, _ = _run(generator, items, num_images, settings, reward)
    with atomic_output(folder, folder=True) as tmp:
        for index, (item, result) in enumerate(results):
            nfe += result.nfe
            for rank, image in enumerate(to_pil_images(result.images)):
                name = f"{index:05d}_{rank}.png"
                image.save(tmp / name)
                row = {"file_name": name, "prompt": item["prompt"], "mode": mode, "nfe": result.nfe}
                if result.scores is not None:
                    row["verifier_score"] = float(result.scores[rank])
                if item.get("metadata"):
                    row["metadata"] = item["metadata"]
                rows.append(row)
        (tmp / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(
        f"wrote {len(rows)} images for {len(items)} prompts to {folder} ({mode}, {nfe / len(items):.0f} NFE per prompt)"
    )
    return {"out": str(folder), "images": len(rows), "prompts": len(items), "nfe": nfe}


def evaluate(
    generator: str,
    prompts: str = "shapes:test-id",
    samples_per_prompt: int = 2,
    mode: Mode = "plain",
    n: int = 4,
    reward: str | None = None,
    steps: int = 20,
    guidance_scale: float | None = None,
    size: int = 64,
    seed: int = 0,
    branch_steps: list[int] | None = None,
    num_branches: int = 2,
    renoise_steps: int = 2,
    per_tag: int = 10,
    limit: int | None = None,
    out: str | None = None,
) -> dict[str, float]:
    """Score a generator on shapes prompts with the pixel oracle, GenEval-style (per tag and overall).

    Args:
        generator: A generator name, hub id or folder (e.g. data/generators/shapes-t2i).
        prompts: Prompts with GenEval metadata: shapes:<split> (fixed shapes prompts), a GenEval .jsonl or shards.
        samples_per_prompt: Images judged per prompt (GenEval uses 4).
        mode: plain, best_of_n or search (see `generate`).
        n: Best-of-N candidates, or search paths.
        reward: Verifier for best_of_n / search: a reward-model export folder or a reward name.
        steps: Denoising steps of one pass.
        guidance_scale: Classifier-free guidance (default: the pipeline's).
        size: Image side in pixels.
        seed: Seed of the first prompt (prompt i uses seed + i).
        branch_steps: Search: steps at which paths branch.
        num_branches: Search: re-noised copies per path and round.
        renoise_steps: Search: steps back each copy is re-noised.
        per_tag: Prompts per tag for shapes:<split> sources.
        limit: At most this many prompts.
        out: Also write the report to this JSON file.
    """
    from rewarddance.callbacks.evaluation import format_report, geneval_report, has_geneval_metadata
    from rewarddance.models.pixels import to_pil_images

    settings = _settings(mode, n, steps, guidance_scale, size, seed, branch_steps, num_branches, renoise_steps)
    _check(settings, samples_per_prompt, "--samples_per_prompt", reward, limit)
    if out and Path(out).is_dir():
        raise UsageError(f"--out {out!r} is a folder; give the path of the JSON report to write")
    items = [i for i in _prompt_items(None, prompts, per_tag, limit) if has_geneval_metadata(i.get("metadata"))]
    if not items:
        raise UsageError(f"{prompts}: no prompt has GenEval metadata (tag, include) for the oracle to judge")
    images, metadata, nfe = [], [], 0
    results, judgments = _run(generator, items, samples_per_prompt, settings, reward)
    for item, result in results:
        images += to_pil_images(result.images)
        metadata += [item["metadata"]] * len(result.images)
        nfe += result.nfe
    report = geneval_report(images, metadata)
    report["nfe_per_image"] = nfe / len(images)
    report["judgments_per_image"] = judgments / len(images)  # the verifier's reward-model calls
    print(f"[rewarddance] {mode}: {format_report(report)} | {report['nfe_per_image']:.0f} NFE per image")
    if out:
        with atomic_output(out) as tmp:
            tmp.write_text(json.dumps({"generator": generator, "prompts": prompts, "mode": mode, **report}, indent=2))
    return report


def _check(settings: dict[str, Any], images: int, images_option: str, reward: str | None, limit: int | None) -> None:
    """Refuse settings that cannot work before any model loads (:func:`rewarddance.inference.generate` checks
    them too, but only after the generator and the verifier are loaded)."""
    mode = settings["mode"]
    at_least_one = {
        "--n": settings["n"],
        images_option: images,
        "--steps": settings["num_inference_steps"],
        "--size": settings["height"],
        "--num_branches": settings["num_branches"],
        "--renoise_steps": settings["renoise_steps"],
        **({"--limit": limit} if limit is not None else {}),
    }
    for option, value in at_least_one.items():
        if value < 1:
            raise UsageError(f"{option} must be at least 1, got {value}")
    if mode != "plain" and not reward:
        raise UsageError(
            f"--mode {mode} needs a verifier: give --reward (a reward-model export folder or a reward name)"
        )
    if mode != "plain" and images > settings["n"]:
        raise UsageError(f"{images_option} {images} exceeds the --n {settings['n']} candidates of --mode {mode}")


def _settings(
    mode: str,
    n: int,
    steps: int,
    guidance_scale: float | None,
    size: int,
    seed: int,
    branch_steps: list[int] | None,
    num_branches: int,
    renoise_steps: int,
) -> dict[str, Any]:
    return {
        "mode": mode, "n": n, "num_inference_steps": steps, "guidance_scale": guidance_scale, "height": size,
        "width": size, "seed": seed, "branch_steps": branch_steps, "num_branches": num_branches,
        "renoise_steps": renoise_steps,
    }  # fmt: skip
