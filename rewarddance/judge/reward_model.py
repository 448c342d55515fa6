"""The Python scoring API: load an exported reward model and score images (or videos) in batches.

This is what RL code calls::

    from rewarddance.judge.reward_model import RewardModel

    rm = RewardModel.from_pretrained("runs/shapes_pairwise/version_0/export")
    rewards = rm.score(prompts, candidates, references=best_of_n)   # pairwise: P(candidate better)
    rewards = rm.score(prompts, candidates)                          # pointwise: P(yes)

An export folder (written by the reward tasks when fit ends, see :func:`export_reward_model`) is
an ordinary Hugging Face folder (``config.json``, weights, processor files) plus
``rewarddance_reward.json``, which records how the model was trained to be asked: paradigm,
template (name and full text), normalisation, rationale format, answer words and backbone.
:meth:`RewardModel.from_pretrained` loads the folder with :func:`rewarddance.models.load_backbone`,
the very code path used for a hub checkpoint, and renders inputs with the same
:mod:`rewarddance.judge.prompting` functions the task trained with, so scores equal the task's own.

Scores are computed without gradients (images arrive as PIL images). Videos are lists of frames;
they are subsampled to the ``num_frames`` the model was trained with.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from torch import Tensor, nn
from transformers import BatchFeature

from rewarddance.errors import BadFileError
from rewarddance.judge.prompting import (
    EncodeReport,
    Query,
    RationaleFormat,
    Template,
    check_visual,
    encode_queries,
    ordered_visuals,
)
from rewarddance.judge.readout import Normalization, PrefixNotShared, rewards_with_shared_prefix
from rewarddance.models import Backbone, load_backbone, sample_frames
from rewarddance.models.inputs import encode_images
from rewarddance.models.lora import unwrap_peft

EXPORT_CONFIG = "rewarddance_reward.json"
"""Name of the file that makes a Hugging Face folder a rewarddance reward model."""

HEAD_WEIGHTS = "reward_head.pt"
"""The regressive baseline's scalar head (a ``state_dict``; loaded with ``weights_only=True``)."""

EXAMPLES_DIR = "examples"
"""In-context examples of an export: their images, and ``examples.json``."""

EXPORT_VERSION = 1

_SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids", "labels", "position_ids")


# --------------------------------------------------------------------------------------------
# Reading rewards off a backbone (shared with rewarddance.tasks.reward)
# --------------------------------------------------------------------------------------------


class RewardHead(nn.Module):
    """The regressive baseline's head: ``r = w . h + b`` on the last hidden state at the last position.

    Args:
        hidden_size: Width of the language model's hidden state.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        # Zero init: every reward starts at 0, so the first BT gradients come from the data alone.
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        """``[batch, hidden]`` -> ``[batch]`` scalar rewards (float32)."""
        return self.linear(hidden.float()).squeeze(-1)


def last_hidden_state(model: nn.Module, inputs: Mapping[str, Any]) -> Tensor:
    """The language model's final (normed) hidden state at the last position, ``[batch, hidden]``.

    Runs the VLM body (``model.model``: vision tower, projector, language model) without the LM
    head, so no vocabulary-sized logits are ever computed. LoRA layers injected by PEFT are used.
    """
    base = unwrap_peft(model)
    device = next(base.parameters()).device
    model_inputs = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in inputs.items() if k != "labels"}
    return base.model(**model_inputs, use_cache=False).last_hidden_state[:, -1]


def hidden_size(model: nn.Module) -> int:
    """Width of a VLM's language model."""
    config = unwrap_peft(model).config
    return int(getattr(config, "text_config", config).hidden_size)


def drop_last_position(inputs: Mapping[str, Any]) -> BatchFeature:
    """Remove the last position of every sequence tensor (left padding: every row's last token).

    Used to read the reward right *before* the end-of-turn token that ``Backbone.encode`` appends
    to an answer: encoding a partial answer (the reasons-first prefix) that way reuses the
    encoder's token-boundary checks.
    """
    length = inputs["input_ids"].shape[1]
    out = {
        k: v[:, :-1] if k in _SEQUENCE_KEYS and isinstance(v, Tensor) and v.dim() >= 2 and v.shape[1] == length else v
        for k, v in inputs.items()
    }
    return BatchFeature(out)


def _split_reasons(text: str, template: Template) -> str:
    """The rationale part of a generated reasons-first answer (before the answer marker)."""
    for marker in (template.reasons_marker, template.reasons_marker.strip()):
        if marker and marker in text:
            return text.split(marker)[0].strip()
    return text.strip()


def generate_reasons(
    backbone: Backbone,
    template: Template,
    queries: Sequence[Query],
    *,
    max_new_tokens: int = 64,
    max_length: int | None = None,
) -> list[str]:
    """Greedily generate reasons-first rationales for queries (the text before the answer marker)."""
    inputs, _ = encode_queries(backbone, template, queries, rationale_format="reasons_first", max_length=max_length)
    model = backbone.model
    device = next(model.parameters()).device
    inputs = BatchFeature({k: v.to(device) if isinstance(v, Tensor) else v for k, v in inputs.items()})
    out = model.generate(
        **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=backbone.tokenizer.pad_token_id
    )
    texts = backbone.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return [_split_reasons(t, template) for t in texts]


def generative_log_probs(
    backbone: Backbone,
    template: Template,
    queries: Sequence[Query],
    *,
    normalization: Normalization = "yes_no",
    rationale_format: RationaleFormat = "none",
    max_length: int | None = None,
    max_new_tokens: int = 64,
) -> tuple[Tensor, EncodeReport, list[str] | None]:
    """``[n, 2]`` log P(yes), log P(no) for each query, read the way the model was trained.

    - ``none`` / ``judgment_first``: at the last prompt position (``logits_to_keep=1``): for a
      judgment-first model this is the first answer token, so no rationale is generated (the
      paper's RL setting).
    - ``reasons_first``: the rationale is generated greedily first (``max_new_tokens``), then
      P(yes) is read right after ``<reasons><answer marker>``.

    Returns:
        ``(log-probabilities [n, 2] float32 on the model's device, encode report, rationales or None)``.
    """
    queries = [Query(**{**q.__dict__, "answer": None}) for q in queries]
    reasons: list[str] | None = None
    if rationale_format == "reasons_first":
        reasons = generate_reasons(backbone, template, queries, max_new_tokens=max_new_tokens, max_length=max_length)
        prefixed = [Query(**{**q.__dict__, "answer": template.reasons_prefix(r)}) for q, r in zip(queries, reasons)]
        inputs, report = encode_queries(
            backbone, template, prefixed, rationale_format=rationale_format, with_answers=True, max_length=max_length
        )
        inputs = drop_last_position(inputs)
    else:
        inputs, report = encode_queries(
            backbone, template, queries, rationale_format=rationale_format, max_length=max_length
        )
    return backbone.yes_no_log_probs(inputs, normalization), report, reasons


def generative_rewards(
    backbone: Backbone,
    template: Template,
    queries: Sequence[Query],
    *,
    normalization: Normalization = "yes_no",
    rationale_format: RationaleFormat = "none",
    max_length: int | None = None,
    max_new_tokens: int = 64,
) -> tuple[Tensor, EncodeReport, list[str] | None]:
    """P("yes") for each query (see :func:`generative_log_probs`), as ``[n]`` float32 on CPU."""
    log_probs, report, reasons = generative_log_probs(
        backbone,
        template,
        queries,
        normalization=normalization,
        rationale_format=rationale_format,
        max_length=max_length,
        max_new_tokens=max_new_tokens,
    )
    return log_probs[:, 0].exp().float().cpu(), report, reasons


def regressive_rewards(
    backbone: Backbone,
    head: RewardHead,
    template: Template,
    queries: Sequence[Query],
    *,
    max_length: int | None = None,
) -> tuple[Tensor, EncodeReport]:
    """The regressive baseline's scalar reward for each (pointwise) query."""
    inputs, report = encode_queries(backbone, template, queries, max_length=max_length)
    return head(last_hidden_state(backbone.model, inputs)).float().cpu(), report


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def _frames(visual: Any) -> list[Image.Image]:
    """An image as a one-frame list; a video's frames."""
    return [visual] if isinstance(visual, Image.Image) else list(visual)


def _save_visual(visual: Any, folder: Path, stem: str) -> list[str]:
    frames = _frames(visual)
    names = [f"{stem}.png"] if isinstance(visual, Image.Image) else [f"{stem}.{t:03d}.png" for t in range(len(frames))]
    for frame, name in zip(frames, names):
        frame.save(folder / name)
    return names


def _examples_to_json(examples: Mapping[str, Sequence[Query]], folder: Path) -> dict[str, list[dict[str, Any]]]:
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


def _examples_from_json(records: Mapping[str, Sequence[Mapping[str, Any]]], folder: Path) -> dict[str, list[Query]]:
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
        record["examples"] = _examples_to_json(examples, folder / EXAMPLES_DIR)
    (folder / EXPORT_CONFIG).write_text(json.dumps(record, indent=2) + "\n")
    return folder


# --------------------------------------------------------------------------------------------
# The scoring API
# --------------------------------------------------------------------------------------------


class RewardModel:
    """A trained reward model, ready to score (pairwise, pointwise or regressive).

    Attributes:
        backbone: The loaded VLM.
        config: The contents of ``rewarddance_reward.json``.
        template: The prompt template the model was trained with.
        head: The scalar head of a regressive model, else None.
        examples: In-context examples per question kind (empty without).
        last_report: What the last :meth:`score` call had to do to its inputs (truncations).
        last_rationales: Rationales generated by the last call (reasons-first models).
    """

    def __init__(
        self,
        backbone: Backbone,
        config: Mapping[str, Any],
        *,
        head: RewardHead | None = None,
        examples: Mapping[str, list[Query]] | None = None,
    ) -> None:
        self.backbone = backbone
        self.config = dict(config)
        self.template = Template.from_dict(self.config["template"], source=EXPORT_CONFIG)
        self.head = head
        self.examples = dict(examples or {})
        self.last_report = EncodeReport()
        self.last_rationales: list[str] | None = None
        if self.kind == "regressive" and head is None:
            raise ValueError("A regressive reward model needs its head.")

    @property
    def kind(self) -> Literal["generative", "regressive"]:
        """``generative`` (reward = P(yes)) or ``regressive`` (reward = head output)."""
        return self.config["kind"]

    @property
    def paradigm(self) -> str:
        """``pairwise`` (needs references) or ``pointwise``."""
        return self.config["paradigm"]

    @classmethod
    def from_pretrained(
        cls,
        folder: str | os.PathLike,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        **load_kwargs: Any,
    ) -> RewardModel:
        """Load an export folder.

        Args:
            folder: A folder written by :func:`export_reward_model` (the tasks' ``export/``).
            device: Where to put the model (e.g. ``"cuda"``); default CPU.
            dtype: Parameter dtype, passed to :func:`load_backbone`.
            **load_kwargs: Further :func:`load_backbone` arguments (``attn_implementation``, ...).

        Raises:
            FileNotFoundError: ``folder`` is not a rewarddance reward model.
            ValueError: The recorded backbone family differs from the checkpoint's, or an unknown version.
        """
        folder = Path(folder)
        path = folder / EXPORT_CONFIG
        if not path.is_file():
            raise FileNotFoundError(
                f"{folder} has no {EXPORT_CONFIG}: not a rewarddance reward model export "
                "(written by the reward tasks when fit ends, or by rewarddance.judge.reward_model.export_reward_model)."
            )
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise BadFileError(f"{path}, line {err.lineno}: not valid JSON ({err.msg}); re-export the model.") from err
        if not isinstance(config, dict):
            raise BadFileError(f"{path}: expected a JSON object, got {type(config).__name__}; re-export the model.")
        if config.get("format") != "rewarddance-reward" or config.get("version") != EXPORT_VERSION:
            raise BadFileError(
                f"{path}: unsupported format/version {config.get('format')!r}/{config.get('version')!r}."
            )
        missing = [k for k in ("family", "kind", "template", "yes_word", "no_word") if k not in config]
        if missing:
            raise BadFileError(f"{path}: fields {missing} are missing; re-export the model.")
        backbone = load_backbone(
            folder, dtype=dtype, yes_word=config["yes_word"], no_word=config["no_word"], **load_kwargs
        )
        if backbone.family != config["family"]:
            raise ValueError(
                f"{path} describes a {config['family']!r} reward model but the checkpoint in {folder} is a "
                f"{backbone.family!r} model: the folder mixes files of different backbones."
            )
        head = None
        if config["kind"] == "regressive":
            head = RewardHead(hidden_size(backbone.model))
            from rewarddance.checkpointing import load_plain  # imports Lightning: only when needed

            head.load_state_dict(load_plain(folder / HEAD_WEIGHTS))
        examples = _examples_from_json(config.get("examples") or {}, folder / EXAMPLES_DIR)
        model = cls(backbone, config, head=head, examples=examples)
        if device is not None:
            model.to(device)
        return model

    def to(self, device: str | torch.device) -> RewardModel:
        """Move the model (and head) to ``device``; returns self."""
        self.backbone.model.to(device)
        if self.head is not None:
            self.head.to(device)
        return self

    def _visual(self, visual: Any) -> Any:
        if isinstance(visual, Image.Image):
            return visual
        return sample_frames(list(visual), int(self.config.get("num_frames") or len(visual)))

    def queries(
        self,
        prompts: Sequence[str],
        images: Sequence[Any],
        references: Sequence[Any] | None = None,
        criteria: str | None = None,
    ) -> list[Query]:
        """The model inputs :meth:`score` builds (before tokenisation), for inspection."""
        if len(prompts) != len(images):
            raise ValueError(f"Got {len(prompts)} prompts but {len(images)} images.")
        pairwise = self.kind == "generative" and self.paradigm == "pairwise"
        if pairwise and references is None:
            raise ValueError("A pairwise reward model compares each image with a reference: pass references=.")
        if not pairwise and references is not None:
            raise ValueError(f"A {self.paradigm} {self.kind} reward model takes no references.")
        if references is not None and len(references) != len(images):
            raise ValueError(f"Got {len(images)} images but {len(references)} references.")
        criteria_text, _ = self.template.criteria_text(
            criteria if criteria is not None else self.config.get("criteria")
        )
        question = "pairwise" if pairwise else "pointwise"
        examples = self.examples.get(question, [])
        out = []
        for i, (prompt, image) in enumerate(zip(prompts, images)):
            visuals = (
                [self._visual(references[i]), self._visual(image)] if references is not None else [self._visual(image)]
            )
            out.append(Query(question, prompt, visuals, criteria_text, examples=list(examples), key=f"item-{i}"))
        return out

    @torch.no_grad()
    def score_candidates(
        self, prompt: str, candidates: Sequence[Any], reference: Any, *, criteria: str | None = None
    ) -> Tensor:
        """Best-of-N: rewards of N candidates for one prompt against one reference.

        The instruction, the prompt and the reference image (and any in-context examples) are the
        same for every candidate, and same-size candidates even give the same tokens. So the
        question is rendered and processed once, with the first candidate; the other candidates
        only have their images processed; the model runs the shared prefix once and the N
        candidates' suffixes as one batch on its key/value cache
        (:func:`rewarddance.judge.readout.rewards_with_shared_prefix`). The rewards equal
        :meth:`score` on the same inputs to float tolerance. Falls back to :meth:`score` where the
        prefix cannot be shared: reasons-first models generate a rationale per candidate;
        candidates of different sizes encode to different lengths; a template that shows the
        candidate before the reference shares no reference.

        Returns:
            ``[N]`` float32 rewards on CPU.
        """
        if not (self.kind == "generative" and self.paradigm == "pairwise"):
            raise ValueError(
                f"score_candidates compares with a reference: a {self.paradigm} {self.kind} model has none"
            )
        n = len(candidates)
        queries = self.queries([prompt] * n, candidates, [reference] * n, criteria)

        def from_scratch() -> Tensor:
            return self.score([prompt] * n, candidates, [reference] * n, criteria=criteria, batch_size=n)

        candidate_last = ordered_visuals(self.template, queries[0])[-1] is queries[0].visuals[1]
        frames = [_frames(check_visual(q.visuals[1], q.key)) for q in queries]
        # Candidates of one kind and frame count give the same question text.
        same_kind = len({(isinstance(q.visuals[1], Image.Image), len(f)) for q, f in zip(queries, frames)}) == 1
        if self.config["rationale_format"] == "reasons_first" or n < 2 or not candidate_last or not same_kind:
            return from_scratch()
        self.backbone.model.eval()
        backbone = self.backbone
        pair, report = encode_queries(
            backbone, self.template, queries[:1], rationale_format=self.config["rationale_format"],
            max_length=self.config.get("max_length"),
        )  # fmt: skip
        others = encode_images(backbone.processor, [f for candidate in frames[1:] for f in candidate])
        try:
            rewards = rewards_with_shared_prefix(
                backbone.model, pair, others, backbone.yes_token_id, backbone.no_token_id, backbone.image_token_id,
                candidate_images=len(frames[0]), normalization=self.config["normalization"],
            )  # fmt: skip
        except PrefixNotShared:  # candidates of different sizes
            return from_scratch()
        # Same-size candidates have their prompt truncated alike: report each, as score() would.
        cut = report.cut.get(queries[0].key, 0)
        self.last_report = EncodeReport(
            truncated=n if cut else 0,
            truncated_tokens=n * cut,
            cut={q.key: cut for q in queries} if cut else {},
            limit=report.limit,
        )
        self.last_rationales = None
        return rewards.cpu()

    @torch.no_grad()
    def score(
        self,
        prompts: Sequence[str],
        images: Sequence[Any],
        references: Sequence[Any] | None = None,
        *,
        criteria: str | None = None,
        batch_size: int = 16,
    ) -> Tensor:
        """Score images (or videos as frame lists) against their prompts.

        Args:
            prompts: The generation prompt of each image.
            images: PIL images, or videos as lists of PIL frames.
            references: Pairwise models only: the reference of each image (image 1 of the question,
                e.g. the best-of-N sample); the reward is P(image better than its reference).
            criteria: A criteria name of the template (``"text-image alignment"``, ``"visual quality"``,
                ...) or a criteria text; default: what the model was exported with.
            batch_size: Items per forward pass.

        Returns:
            ``[n]`` float32 rewards on CPU: P(yes) for generative models, the head output for
            regressive ones. Prompts too long for the model are truncated (prompt text only) and
            counted in :attr:`last_report`.
        """
        queries = self.queries(prompts, images, references, criteria)
        self.backbone.model.eval()
        report, rewards, rationales = EncodeReport(), [], []
        for start in range(0, len(queries), batch_size):
            chunk = queries[start : start + batch_size]
            if self.kind == "regressive":
                assert self.head is not None
                r, part = regressive_rewards(
                    self.backbone, self.head, self.template, chunk, max_length=self.config.get("max_length")
                )
                reasons = None
            else:
                r, part, reasons = generative_rewards(
                    self.backbone,
                    self.template,
                    chunk,
                    normalization=self.config["normalization"],
                    rationale_format=self.config["rationale_format"],
                    max_length=self.config.get("max_length"),
                    max_new_tokens=int(self.config.get("max_new_tokens") or 64),
                )
            rewards.append(r)
            rationales += reasons or []
            report.add(part)
        self.last_report = report
        self.last_rationales = rationales or None
        return torch.cat(rewards) if rewards else torch.zeros(0)
