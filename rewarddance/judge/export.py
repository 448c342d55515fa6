"""Export: the folder a trained reward model is written to, which :class:`rewarddance.judge.reward_model.RewardModel` loads.

An export folder is an ordinary Hugging Face folder (``config.json``, weights, processor files)
plus ``rewarddance_reward.json`` (:data:`EXPORT_CONFIG`), which records how the model was trained
to be asked: paradigm, template (name and full text), normalisation, rationale format, answer
words and backbone; a regressive model adds its head (:data:`HEAD_WEIGHTS`), a model with
in-context examples their images and records (:data:`EXAMPLES_DIR`).

The folder also loads without rewarddance. Its processor files name the upstream transformers
classes (:func:`rewarddance.models.processors.write_upstream_processor_files`), and
``rewarddance_reward.json`` carries the judging question as data under ``"query"``
(:func:`portable_query`): chat messages with ``{prompt}`` where the generation prompt goes, what
each image item shows, and how the reward is read. A client fills the prompt, applies the
processor's chat template with the generation prompt, runs the model and reads the next-token
logits of the yes and no tokens; the result equals :meth:`RewardModel.score` (tested in
``tests/judge/test_portable_export.py``, which does it in a process that never imports rewarddance).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from rewarddance.judge.prompting import Query, Template, model_max_length, render_conversation
from rewarddance.judge.readout import RewardHead
from rewarddance.models import Backbone
from rewarddance.models.inputs import prompt_to_messages
from rewarddance.models.processors import write_upstream_processor_files

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


PROMPT_FIELD = "{prompt}"
"""Where a client puts the generation prompt in the text items of the exported ``query`` messages."""

CRITERIA_FIELD = "{criteria}"
"""Where a client puts the criteria text in the ``query``'s ``templates`` messages."""

PROMPT_REPLACEMENTS = {"<image>": "(image)", "<video>": "(video)"}
"""What a client replaces in a generation prompt before filling it in (then it strips spaces): user
text must not create image slots. The same replacement ``rewarddance.judge.prompting`` makes."""

FILL_RULE = (
    "Fill every field of a text item in one pass (text filled in is not searched again). {prompt}: the generation "
    "prompt with prompt_replacements applied, then stripped. {criteria}: a name of criteria.named gives its text, "
    "any other string is the criteria text itself; in it {media} and {Media} become image and Image (video and Video "
    "in the video template), prompt_replacements are applied, then it is stripped."
)
TRUNCATION_RULE = (
    "Count the tokens of the filled query: chat template applied with the generation prompt, each image item "
    "expanded to its image tokens. While the count exceeds max_length (at most 8 rounds), tokenize the generation "
    "prompt as given (before prompt_replacements) without special tokens, drop its last (count - max_length) tokens, "
    "decode and strip it, and fill the query again. Only the prompt is cut, never image tokens or the question; a "
    "query that cannot fit with every prompt token dropped is an error."
)
VIDEO_RULE = (
    "A video is judged as its frames: of a clip with more than num_frames frames keep frames[int((i + 0.5) * n / "
    "num_frames)] for i in range(num_frames) (n: the clip's frame count), else all of them. Each {'type': 'video'} "
    "item becomes one {'type': 'image'} item per kept frame, in order, and the frames are passed as images. An image "
    "in this template (a still reference next to a video candidate) is a one-frame video."
)


def _template_messages(
    template: Template,
    config: Mapping[str, Any],
    question: str,
    slots: Sequence[str],
    criteria: str,
    video: bool,
    examples: Sequence[Query],
    example_records: Sequence[Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], list[str]]:
    """The query rendered by :func:`render_conversation` with :data:`PROMPT_FIELD`, ``criteria`` and stand-in
    visuals (two-frame clips when ``video``), as chat messages and the name of each image or video item."""
    stand_ins: list[Any] = [
        [Image.new("RGB", (1, 1)), Image.new("RGB", (1, 1))] if video else Image.new("RGB", (1, 1)) for _ in slots
    ]
    labels: dict[int, list[str]] = {id(v): [name] for v, name in zip(stand_ins, slots)}
    for example, record in zip(examples, example_records):
        for visual, item in zip(example.visuals, record["visuals"]):
            labels[id(visual)] = [f"{EXAMPLES_DIR}/{name}" for name in item["frames"]]
    query = Query(question, PROMPT_FIELD, stand_ins, criteria, examples=list(examples), key="portable-query")
    rendered, visuals = render_conversation(template, query, config["rationale_format"])
    chat = prompt_to_messages(rendered, visuals) if isinstance(rendered, str) else rendered
    # An example's video becomes one image item per stored frame (as rewarddance feeds video to every family);
    # the query's own video slots stay video items, for the client to expand by the clip it judges.
    own = {id(v) for v in stand_ins}
    remaining = iter(visuals)
    messages: list[dict[str, Any]] = []
    images: list[str] = []
    for message in chat:
        if isinstance(message["content"], str):
            messages.append(dict(message))
            continue
        content: list[dict[str, Any]] = []
        for item in message["content"]:
            if item["type"] in ("image", "video"):
                visual = next(remaining)
                files = labels[id(visual)]
                kind = "video" if video and id(visual) in own else "image"
                content += [{"type": kind}] * len(files)
                images += files
            else:
                content.append(dict(item))
        messages.append({**message, "content": content})
    return messages, images


def portable_query(
    config: Mapping[str, Any],
    backbone: Backbone,
    examples: Mapping[str, Sequence[Query]] | None = None,
    example_records: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    *,
    upstream_processor: bool = True,
) -> dict[str, Any]:
    """The judging question of an export as data a client without rewarddance can fill.

    The question is rendered by the very functions :meth:`RewardModel.score` uses, with
    :data:`PROMPT_FIELD` as the prompt and stand-in images, and split into chat messages with
    ``{"type": "image"}`` items; ``images`` names, for each image item in order, what goes there:
    ``reference`` and ``candidate`` (pairwise), ``image`` (pointwise), or the file of an in-context
    example under the export folder. ``messages`` asks with the model's default criteria (fill
    ``{prompt}`` only); ``templates.image`` and ``templates.video`` ask with a ``{criteria}`` field
    too (:data:`FILL_RULE`), the video one with ``{"type": "video"}`` items (:data:`VIDEO_RULE`).
    ``truncation`` gives the token limit the model holds inputs to and how the prompt is cut
    (:data:`TRUNCATION_RULE`).

    ``portable`` is False, with the reasons in ``not_portable``, where a client cannot reproduce
    :meth:`RewardModel.score` from these files: a regressive model (its reward is a scalar head in
    ``reward_head.pt`` on rewarddance's pooled hidden state, not a next-token readout), a reasons-first
    model (the reward is read after a rationale the model generates first), a model that retrieves its in-context
    examples per query (``example_pool`` in ``config``: which examples a query is shown depends on its tag or
    prompt, chosen by rewarddance's retriever; these messages show none), or a processor left as rewarddance saved
    it (InternVL: the upstream class would tile images differently).
    """
    template = Template.from_dict(config["template"], source=EXPORT_CONFIG)
    pairwise = config["kind"] == "generative" and config["paradigm"] == "pairwise"
    question = "pairwise" if pairwise else "pointwise"
    slots = ["reference", "candidate"] if pairwise else ["image"]
    default_name = config.get("criteria") or template.default_criteria
    criteria, _ = template.criteria_text(default_name)
    shown = list((examples or {}).get(question, []))
    records = list((example_records or {}).get(question, []))
    messages, images = _template_messages(template, config, question, slots, criteria, False, shown, records)
    templates = {
        media: dict(zip(("messages", "images"), _template_messages(
            template, config, question, slots, CRITERIA_FIELD, media == "video", shown, records
        )))
        for media in ("image", "video")
    }  # fmt: skip
    limit = config.get("max_length") or model_max_length(backbone)
    not_portable = []
    if config["kind"] == "regressive":
        readout = "regressive_head"
        not_portable.append(
            "regressive: the reward is the scalar head in reward_head.pt applied to rewarddance's pooled hidden "
            "state, not a next-token readout a client can take from the logits"
        )
    elif config["rationale_format"] == "reasons_first":
        readout = "after_generated_rationale"
        not_portable.append(
            "reasons_first: the reward is read at the judgment token after a rationale the model generates first "
            f"(greedy, max_new_tokens {config.get('max_new_tokens') or 64}), then re-assembled with the template's "
            "reasons marker; the next-token readout of these messages is a different quantity"
        )
    else:
        readout = "next_token"
    pool = config.get("example_pool")
    if pool:
        # Retrieval could be written as data (the pool, the TF-IDF and seeded-order rules), but a client would have
        # to reimplement rewarddance's retriever bit for bit: refused instead, so a client knows to serve the model.
        not_portable.append(
            f"example_retrieval {pool.get('retrieval')}: the model was trained with {pool.get('k')} in-context "
            f"examples chosen per query from its pool (under {pool.get('dir')}/) by rewarddance's retriever "
            "(rewarddance.judge.examples); these messages show none, and a client without rewarddance cannot choose "
            "them. Serve the model (python -m rewarddance serve; items carry their tag) or use RewardModel.score"
        )
    if not upstream_processor:
        not_portable.append(
            "the processor files name rewarddance's own image processor (the upstream class would tile images "
            "differently), so plain transformers cannot build the model's inputs"
        )
    return {
        "portable": not not_portable,
        "not_portable": not_portable,
        "question": question,
        "messages": messages,
        "images": images,
        "prompt_field": PROMPT_FIELD,
        "prompt_replacements": dict(PROMPT_REPLACEMENTS),
        "criteria": criteria,
        "add_generation_prompt": True,
        "templates": {
            **templates,
            "criteria_field": CRITERIA_FIELD,
            "fill": FILL_RULE,
            "video": {**templates["video"], "num_frames": int(config.get("num_frames") or 8), "rule": VIDEO_RULE},
        },
        "criteria_options": {"default": default_name, "named": dict(template.criteria)},
        "truncation": {"max_length": limit, "rule": TRUNCATION_RULE},
        "readout": {
            "kind": readout,
            "yes_token_id": backbone.yes_token_id,
            "no_token_id": backbone.no_token_id,
            "normalization": config.get("normalization", "yes_no"),
            "reward": "yes_no: softmax over the [yes, no] logits at the last position, take yes; "
            "vocab: softmax over the whole vocabulary at the last position, take yes",
        },
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
    upstream = write_upstream_processor_files(folder, backbone.model.config.model_type)
    record = {"format": "rewarddance-reward", "version": EXPORT_VERSION, **config}
    if head is not None:
        torch.save({k: v.detach().cpu() for k, v in head.state_dict().items()}, folder / HEAD_WEIGHTS)
    if examples and any(examples.values()):
        record["examples"] = examples_to_json(examples, folder / EXAMPLES_DIR)
    record["query"] = portable_query(record, backbone, examples, record.get("examples"), upstream_processor=upstream)
    (folder / EXPORT_CONFIG).write_text(json.dumps(record, indent=2) + "\n")
    return folder
