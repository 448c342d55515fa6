"""Export: the folder a trained reward model is written to, which :class:`rewarddance.judge.reward_model.RewardModel` loads.

An export folder is an ordinary Hugging Face folder (``config.json``, weights, processor files)
plus ``rewarddance_reward.json`` (:data:`EXPORT_CONFIG`), which records how the model was trained
to be asked: paradigm, template (name and full text), normalisation, rationale format, answer
words and backbone; a regressive model adds its head (:data:`HEAD_WEIGHTS`), a model with
in-context examples their images and records (:data:`EXAMPLES_DIR`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from rewarddance.judge.prompting import Query
from rewarddance.judge.readout import RewardHead
from rewarddance.models import Backbone

EXPORT_CONFIG = "rewarddance_reward.json"
"""Name of the file that makes a Hugging Face folder a rewarddance reward model."""

HEAD_WEIGHTS = "reward_head.pt"
"""The regressive baseline's scalar head (a ``state_dict``; loaded with ``weights_only=True``)."""

EXAMPLES_DIR = "examples"
"""In-context examples of an export: their images, and ``examples.json``."""

EXPORT_VERSION = 1


def frames_of(visual: Any) -> list[Image.Image]:
    """An image as a one-frame list; a video's frames."""
    return [visual] if isinstance(visual, Image.Image) else list(visual)


def _save_visual(visual: Any, folder: Path, stem: str) -> list[str]:
    frames = frames_of(visual)
    names = [f"{stem}.png"] if isinstance(visual, Image.Image) else [f"{stem}.{t:03d}.png" for t in range(len(frames))]
    for frame, name in zip(frames, names):
        frame.save(folder / name)
    return names


def examples_to_json(examples: Mapping[str, Sequence[Query]], folder: Path) -> dict[str, list[dict[str, Any]]]:
    """In-context examples as JSON records, their images saved as PNG files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[dict[str, Any]]] = {}
    for kind, queries in examples.items():
        records = []
        for i, q in enumerate(queries):
            visuals = [_save_visual(v, folder, f"{kind}-{i}-{j}") for j, v in enumerate(q.visuals)]
            records.append(
                {
                    "question": q.question,
                    "prompt": q.prompt,
                    "criteria": q.criteria,
                    "instruction": q.instruction,
                    "answer": q.answer,
                    "key": q.key,
                    "visuals": [
                        {"frames": v, "video": not isinstance(q.visuals[j], Image.Image)} for j, v in enumerate(visuals)
                    ],
                }
            )
        out[kind] = records
    return out


def examples_from_json(records: Mapping[str, Sequence[Mapping[str, Any]]], folder: Path) -> dict[str, list[Query]]:
    """The in-context examples :func:`examples_to_json` wrote, images loaded from ``folder``."""

    def visual(item: Mapping[str, Any]) -> Any:
        frames = [Image.open(folder / name).convert("RGB") for name in item["frames"]]
        return frames if item["video"] else frames[0]

    return {
        kind: [
            Query(
                question=r["question"],
                prompt=r["prompt"],
                visuals=[visual(v) for v in r["visuals"]],
                criteria=r["criteria"],
                instruction=r["instruction"],
                answer=r["answer"],
                key=r["key"],
            )
            for r in items
        ]
        for kind, items in records.items()
    }


def export_reward_model(
    folder: str | os.PathLike,
    backbone: Backbone,
    config: Mapping[str, Any],
    *,
    head: RewardHead | None = None,
    examples: Mapping[str, Sequence[Query]] | None = None,
) -> Path:
    """Write a reward model folder that :meth:`RewardModel.from_pretrained` loads.

    Args:
        folder: Output folder (created).
        backbone: The backbone to save; its model must be a plain transformers model (merge LoRA
            adapters first: ``peft_model.merge_and_unload()``).
        config: What ``rewarddance_reward.json`` records (see :meth:`RewardModel.from_pretrained`).
        head: The regressive head, saved as ``reward_head.pt``.
        examples: In-context examples per question kind, saved under ``examples/``.

    Returns:
        The folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    backbone.save_pretrained(folder)
    record = {"format": "rewarddance-reward", "version": EXPORT_VERSION, **config}
    if head is not None:
        torch.save({k: v.detach().cpu() for k, v in head.state_dict().items()}, folder / HEAD_WEIGHTS)
    if examples and any(examples.values()):
        record["examples"] = examples_to_json(examples, folder / EXAMPLES_DIR)
    (folder / EXPORT_CONFIG).write_text(json.dumps(record, indent=2) + "\n")
    return folder
