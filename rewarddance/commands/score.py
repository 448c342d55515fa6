"""``python -m rewarddance score``: rewards of images (or videos) from a trained reward model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def load_visual(path: str | Path) -> Image.Image | list[Image.Image]:
    """An image file, or a folder of frames (sorted by name) for a video clip."""
    path = Path(path)
    if path.is_dir():
        frames = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not frames:
            raise FileNotFoundError(f"{path} is a folder without image frames ({', '.join(IMAGE_SUFFIXES)})")
        return [Image.open(p).convert("RGB") for p in frames]
    if not path.exists():
        raise FileNotFoundError(f"image {str(path)!r} does not exist")
    try:
        return Image.open(path).convert("RGB")
    except Exception as err:
        raise ValueError(f"cannot read image {str(path)!r}: {err}") from err


def _folder_items(folder: Path) -> Iterator[dict[str, Any]]:
    """Rows of ``metadata.jsonl`` ({"file_name", "prompt", optional "reference"}), as in HF imagefolder."""
    meta = folder / "metadata.jsonl"
    if not meta.exists():
        raise FileNotFoundError(f"{folder} needs a metadata.jsonl with one {{'file_name', 'prompt'}} object per line")
    for line_no, line in enumerate(meta.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        for field in ("file_name", "prompt"):
            if not row.get(field):
                raise ValueError(f"{meta}, line {line_no}, field {field!r}: missing or empty")
        yield {
            "key": row["file_name"],
            "prompt": row["prompt"],
            "image": load_visual(folder / row["file_name"]),
            "reference": load_visual(folder / row["reference"]) if row.get("reference") else None,
        }


def _shard_items(source: str) -> Iterator[dict[str, Any]]:
    """Pair samples give (second vs first) and, for pointwise models, each image; point samples their image."""
    from rewarddance.data.stream import ShardStream

    for batch in ShardStream(source, batch_size=64):
        for s in batch:
            extra = {"label": s.label or s.answer, "category": s.category}
            if s.kind == "pair":
                first, second = _clip(s.first), _clip(s.second)
                yield {"key": s.key, "prompt": s.prompt, "image": second, "reference": first, "first": first, **extra}
            elif s.kind == "point":
                yield {"key": s.key, "prompt": s.prompt, "image": _clip(s.image), "reference": None, **extra}


def _clip(clip: list[Image.Image] | None) -> Image.Image | list[Image.Image]:
    assert clip is not None
    return clip[0] if len(clip) == 1 else clip


def score(
    model: str,
    prompt: str | None = None,
    image: str | None = None,
    reference: str | None = None,
    input: str | None = None,
    out: str | None = None,
    criteria: str | None = None,
    batch_size: int = 16,
) -> Any:
    """Score images with a trained reward model: one image, or a whole shard set or folder to JSONL.

    Args:
        model: A reward-model folder exported by ``fit`` (or any folder RewardModel.from_pretrained reads).
        prompt: The generation prompt (single-image form).
        image: The image to score, or a folder of frames for a video (single-image form).
        reference: Pairwise models: the reference image (image 1) the candidate is judged against.
        input: Batch form: a shard folder / pattern, or a folder of images with a metadata.jsonl of
            {"file_name", "prompt", optional "reference"} rows.
        out: Batch form: the JSONL file to write (one {"key", "prompt", "reward", ...} per item).
        criteria: A criteria name of the model's template (e.g. "visual quality"), default the model's.
        batch_size: Items per forward pass.
    """
    from rewarddance.reward_model import RewardModel

    reward_model = RewardModel.from_pretrained(model)
    pairwise = reward_model.paradigm == "pairwise"
    if input is None:
        if prompt is None or image is None:
            raise ValueError("give --prompt and --image (one image), or --input and --out (batch form)")
        if pairwise and reference is None:
            raise ValueError(f"{model} is a pairwise reward model: give --reference (image 1 of the comparison)")
        refs = [load_visual(reference)] if reference is not None else None
        reward = reward_model.score([prompt], [load_visual(image)], refs, criteria=criteria)[0].item()
        print(f"reward {reward:.6f}")
        return reward
    if out is None:
        raise ValueError("the batch form (--input) needs --out for the JSONL scores")
    source = Path(input)
    items = _folder_items(source) if (source / "metadata.jsonl").exists() else _shard_items(input)
    written = skipped = 0
    with open(out, "w") as f:
        chunk: list[dict[str, Any]] = []
        for item in tqdm(items, desc="score", unit="item"):
            if pairwise and item["reference"] is None:
                skipped += 1  # a pairwise model judges a candidate against a reference; there is none
                continue
            chunk.append(item)
            if len(chunk) == batch_size:
                written += _score_chunk(reward_model, chunk, pairwise, criteria, f)
                chunk = []
        if chunk:
            written += _score_chunk(reward_model, chunk, pairwise, criteria, f)
    note = f" (skipped {skipped} items without a reference: the model is pairwise)" if skipped else ""
    print(f"wrote {written} scores to {out}{note}")
    return written


def _score_chunk(reward_model: Any, chunk: list[dict[str, Any]], pairwise: bool, criteria: str | None, f: Any) -> int:
    if pairwise:
        rewards = reward_model.score(
            [i["prompt"] for i in chunk],
            [i["image"] for i in chunk],
            [i["reference"] for i in chunk],
            criteria=criteria,
        )
        extra: list[dict[str, Any]] = [{} for _ in chunk]
    else:
        rewards = reward_model.score([i["prompt"] for i in chunk], [i["image"] for i in chunk], criteria=criteria)
        # A pair from a shard also gets its first image's reward, so the pair can be compared.
        firsts = [i for i in chunk if "first" in i]
        first_rewards = iter(
            reward_model.score([i["prompt"] for i in firsts], [i["first"] for i in firsts], criteria=criteria).tolist()
            if firsts
            else []
        )
        extra = [{"reward_first": next(first_rewards)} if "first" in i else {} for i in chunk]
    for item, reward, more in zip(chunk, rewards.tolist(), extra):
        record = {k: item[k] for k in ("key", "prompt", "label", "category") if item.get(k) is not None}
        f.write(json.dumps({**record, "reward": reward, **more}) + "\n")
    return len(chunk)
