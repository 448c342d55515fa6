"""``python -m rewarddance score``: rewards of images (or videos) from a trained reward model."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from tqdm import tqdm

from rewarddance.data.jsonl import read_jsonl
from rewarddance.errors import BadFileError, UsageError
from rewarddance.outputs import atomic_output

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

Convention = Literal["auto", "pairwise", "pickscore", "hpsv2", "imagereward", "ties"]

RECORD_FIELDS = ("key", "prompt", "label", "category", "source", "group", "pair", "ranks")
"""Fields of a JSONL record besides the rewards, written when the item has them."""


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
        raise BadFileError(f"cannot read image {str(path)!r}: {err}") from err


def _folder_items(folder: Path) -> Iterator[dict[str, Any]]:
    """Rows of ``metadata.jsonl`` ({"file_name", "prompt", optional "reference", "tag"}), as in HF imagefolder."""
    meta = folder / "metadata.jsonl"
    if not meta.exists():
        raise FileNotFoundError(f"{folder} needs a metadata.jsonl with one {{'file_name', 'prompt'}} object per line")
    for line_no, row in read_jsonl(meta):
        for field in ("file_name", "prompt"):
            if not row.get(field):
                raise BadFileError(f"{meta}, line {line_no}, field {field!r}: missing or empty")
        yield {
            "key": row["file_name"],
            "prompt": row["prompt"],
            "image": load_visual(folder / row["file_name"]),
            "reference": load_visual(folder / row["reference"]) if row.get("reference") else None,
            "tag": row.get("tag") or row.get("category"),
        }


def _shard_items(source: str) -> Iterator[dict[str, Any]]:
    """Pair samples give (second vs first) and, for pointwise models, each image; point samples their image."""
    from rewarddance.data.stream import ShardStream

    for batch in ShardStream(source, batch_size=64):
        for s in batch:
            extra = {
                "label": s.label or s.answer,
                "category": s.category,
                "source": s.source,
                "criteria": s.criteria,
                "tag": (s.meta or {}).get("tag") or s.category,
                **_ranking(s),
            }
            if s.kind == "pair":
                first, second = _clip(s.first), _clip(s.second)
                yield {"key": s.key, "prompt": s.prompt, "image": second, "reference": first, "first": first, **extra}
            elif s.kind == "point":
                yield {"key": s.key, "prompt": s.prompt, "image": _clip(s.image), "reference": None, **extra}


def _ranking(sample: Any) -> dict[str, Any]:
    """Where a pair sits in the ranking it was cut from, for the ranking conventions (no image data).

    Importers of rankings (HPDv2 test, ImageReward, ImageRewardDB) store ``meta["pair"] = [i, j]``,
    the images' indices in the ranking, with the ranks in ``meta["ranks"]`` (ImageRewardDB: in
    ``meta["first"]["rank"]`` / ``meta["second"]["rank"]``), and key the pair ``<ranking key>-i-j``.
    ``group`` is that ranking key: the pairs of one prompt's ranking share it.
    """
    meta = sample.meta or {}
    pair = meta.get("pair")
    if sample.kind != "pair" or not isinstance(pair, (list, tuple)) or len(pair) != 2:
        return {}
    i, j = (int(x) for x in pair)
    suffix = f"-{i}-{j}"
    group = sample.key[: -len(suffix)] if sample.key.endswith(suffix) else meta.get("prompt_id", sample.key)
    ranks = meta.get("ranks")
    if ranks is None and isinstance(meta.get("first"), dict) and isinstance(meta.get("second"), dict):
        ranks = [meta["first"].get("rank"), meta["second"].get("rank")]
    out: dict[str, Any] = {"group": str(group), "pair": [i, j]}
    if isinstance(ranks, (list, tuple)) and len(ranks) == 2 and all(isinstance(r, (int, float)) for r in ranks):
        out["ranks"] = list(ranks)
    return out


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
    convention: Convention = "auto",
) -> Any:
    """Score images with a trained reward model: one image, or a whole shard set or folder to JSONL.

    For a shard set of pairs (e.g. an imported public benchmark) the accuracy is printed after the
    JSONL is written, in the benchmark's own convention (see ``--convention``), one line per number,
    such as ``imagereward accuracy (pairs, GT ties skipped, predicted ties wrong): 0.6543 over 1234
    pairs``. The per-pair decision is ``reward`` vs 0.5 for a pairwise model (``reward`` = P(second
    better)) and ``reward`` vs ``reward_first`` for a pointwise or regressive one.

    Args:
        model: A reward-model folder exported by ``fit`` (or any folder RewardModel.from_pretrained reads).
        prompt: The generation prompt (single-image form).
        image: The image to score, or a folder of frames for a video (single-image form).
        reference: Pairwise models: the reference image (image 1) the candidate is judged against.
        input: Batch form: a shard folder / pattern, or a folder of images with a metadata.jsonl of
            {"file_name", "prompt", optional "reference"} rows.
        out: Batch form: the JSONL file to write (one {"key", "prompt", "reward", ...} per item). Pairs
            from shards also get "label", "category", "source" and, when cut from a ranking, "group"
            (the ranking's key, shared by the pairs of one prompt), "pair" (the images' indices in it)
            and "ranks" (theirs, lower = better); pointwise models add "reward_first". A reasons-first
            model adds the "rationale" it wrote before its judgment (and "rationale_first").
        criteria: A criteria name of the model's template (e.g. "visual quality"), default the model's.
        batch_size: Items per forward pass.
        convention: How the pairs' accuracy is counted. "auto": by the shards' source, computed per
            source: Pick-a-Pic -> pickscore (and ties dropped), HPDv2 test -> hpsv2, ImageReward ->
            imagereward, VideoGen-RewardBench and GenAI-Bench -> ties, HPDv3, shapes and others ->
            pairwise. "pairwise": ties dropped, predicted ties wrong. "pickscore": ties 0.5 credit,
            and ties dropped. "hpsv2": per prompt 1 - discordant/total, mean over prompts.
            "imagereward": over pairs, GT ties skipped, predicted ties wrong. "ties": without ties,
            and with ties (tie threshold calibrated on the pairs). See
            :func:`rewarddance.metrics.benchmark_accuracy`.

    Returns:
        The single-image form: the reward. The batch form: {"written", "skipped", "out", "results"
        (one :func:`~rewarddance.metrics.benchmark_accuracy` dict per source, or one for a named
        convention; empty without labelled pairs), "lines" (the accuracy lines printed)}.
    """
    from rewarddance.judge.reward_model import RewardModel

    # Every argument is checked before the model loads, so a mistake costs no loading time.
    if batch_size < 1:
        raise UsageError(f"--batch_size must be at least 1, got {batch_size}")
    if input is None:
        if prompt is None or image is None:
            raise UsageError("give --prompt and --image (one image), or --input and --out (batch form)")
        visuals = [load_visual(image)]
        refs = [load_visual(reference)] if reference is not None else None
    elif out is None:
        raise UsageError("the batch form (--input) needs --out for the JSONL scores")
    elif Path(out).is_dir():
        raise UsageError(f"--out {out!r} is a folder; give the path of the JSONL file to write")
    reward_model = RewardModel.from_pretrained(model)
    pairwise = reward_model.paradigm == "pairwise"
    if input is None:
        assert prompt is not None
        if pairwise and refs is None:
            raise UsageError(f"{model} is a pairwise reward model: give --reference (image 1 of the comparison)")
        reward = reward_model.score([prompt], visuals, refs, criteria=criteria)[0].item()
        _warn_truncated(reward_model, [f"--image {image!r}"])
        if reward_model.last_rationales:
            print(f"rationale: {reward_model.last_rationales[0]}")
        print(f"reward {reward:.6f}")
        return reward
    assert out is not None
    source = Path(input)
    items = _folder_items(source) if (source / "metadata.jsonl").exists() else _shard_items(input)
    written = skipped = 0
    pairs: list[dict[str, Any]] = []  # the labelled pairs' records, for the accuracy
    with atomic_output(out) as tmp, open(tmp, "w") as f:
        chunk: list[dict[str, Any]] = []
        for item in tqdm(items, desc="score", unit="item"):
            if pairwise and item["reference"] is None:
                skipped += 1  # a pairwise model judges a candidate against a reference; there is none
                continue
            chunk.append(item)
            if len(chunk) == batch_size:
                pairs += _labelled_pairs(_score_chunk(reward_model, chunk, pairwise, criteria, f))
                written += len(chunk)
                chunk = []
        if chunk:
            pairs += _labelled_pairs(_score_chunk(reward_model, chunk, pairwise, criteria, f))
            written += len(chunk)
    note = f" (skipped {skipped} items without a reference: the model is pairwise)" if skipped else ""
    print(f"wrote {written} scores to {out}{note}")
    results = accuracy_report(pairs, convention)
    lines = [line for result in results for line in result["lines"]]
    for line in [*lines, *(w for result in results for w in result["warnings"])]:
        print(line)
    return {"written": written, "skipped": skipped, "out": str(out), "results": results, "lines": lines}


def _labelled_pairs(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of pairs with a pair label, without the prompt (all the accuracy needs)."""
    return [
        {k: v for k, v in r.items() if k not in ("prompt", "rationale", "rationale_first")}
        for r in records
        if r.get("label") in ("first", "second", "tie")
    ]


def accuracy_report(records: list[dict[str, Any]], convention: Convention = "auto") -> list[dict[str, Any]]:
    """The accuracy of scored pairs: one :func:`~rewarddance.metrics.benchmark_accuracy` result per source.

    With ``convention="auto"`` each source gets its own convention (and its own lines, prefixed with
    ``[source]`` when there are several); a named convention counts all pairs together. No labelled
    pairs: no results.
    """
    from rewarddance.metrics import benchmark_accuracy

    pairs = [r for r in records if r.get("label") in ("first", "second", "tie")]
    if not pairs:
        return []
    if convention != "auto":
        return [benchmark_accuracy(pairs, convention)]
    by_source: dict[str, list[dict[str, Any]]] = {}
    for r in pairs:
        by_source.setdefault(str(r.get("source") or "unknown"), []).append(r)
    results = [benchmark_accuracy(group, "auto") for _, group in sorted(by_source.items())]
    if len(results) > 1:
        for result in results:
            result["lines"] = [f"[{result['sources'][0]}] {line}" for line in result["lines"]]
    return results


def _rewards(
    reward_model: Any, items: list[dict[str, Any]], image_key: str, criteria: str | None, with_reference: bool
) -> tuple[Any, list[str | None]]:
    """Rewards of ``items``, each judged by its own criteria (a shard sample's ``criteria``, e.g.
    "visual quality" for a degraded pair) unless ``criteria`` is given for all, as in training; and
    the rationale of each (None unless the model writes one before its judgment)."""
    import torch

    out = torch.zeros(len(items))
    rationales: list[str | None] = [None] * len(items)
    groups: dict[str | None, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(criteria or item.get("criteria"), []).append(index)
    for group_criteria, indices in groups.items():
        chosen = [items[i] for i in indices]
        references = [i["reference"] for i in chosen] if with_reference else None
        rewards = reward_model.score(
            [i["prompt"] for i in chosen],
            [i[image_key] for i in chosen],
            references,
            criteria=group_criteria,
            tags=[i.get("tag") for i in chosen],
            keys=[i["key"] for i in chosen],  # a model with an example pool never shows an item its own sample
        )
        out[indices] = rewards
        for index, text in zip(indices, reward_model.last_rationales or []):
            rationales[index] = text
        if image_key == "image":  # a pair's first image is judged with the same prompt: warn once
            _warn_truncated(reward_model, [f"sample {i['key']!r}" for i in chosen])
    return out, rationales


def _warn_truncated(reward_model: Any, names: list[str]) -> None:
    """Say on stderr which prompts of the last ``score`` call were cut to fit the model (``names[i]``: query i)."""
    report = reward_model.last_report
    for key, removed in report.cut.items():
        name = names[int(key.removeprefix("item-"))]  # RewardModel.queries keys its queries item-<index>
        print(
            f"rewarddance: warning: the prompt of {name} does not fit the model's limit of {report.limit} tokens "
            f"per sequence: its last {removed} tokens were cut, so the reward judges the shortened prompt.",
            file=sys.stderr,
        )


def _score_chunk(
    reward_model: Any, chunk: list[dict[str, Any]], pairwise: bool, criteria: str | None, f: Any
) -> list[dict[str, Any]]:
    """Score ``chunk``, write one JSONL record per item to ``f`` and return the records."""
    rewards, rationales = _rewards(reward_model, chunk, "image", criteria, with_reference=pairwise)
    extra: list[dict[str, Any]] = [{} if text is None else {"rationale": text} for text in rationales]
    if not pairwise:
        # A pair from a shard also gets its first image's reward, so the pair can be compared.
        firsts = [i for i in chunk if "first" in i]
        first_rewards, first_rationales = _rewards(reward_model, firsts, "first", criteria, with_reference=False)
        by_item = iter(zip(first_rewards.tolist(), first_rationales))
        for item, more in zip(chunk, extra):
            if "first" in item:
                reward_first, text = next(by_item)
                more["reward_first"] = reward_first
                if text is not None:
                    more["rationale_first"] = text
    records = []
    for item, reward, more in zip(chunk, rewards.tolist(), extra):
        record = {k: item[k] for k in RECORD_FIELDS if item.get(k) is not None}
        records.append({**record, "reward": reward, **more})
        f.write(json.dumps(records[-1]) + "\n")
    return records
