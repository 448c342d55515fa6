"""Caption pretraining data as text sequences: one image, one prompt, one answer each.

A caption sample (``Sample.caption``, ``Sample.qa``) holds one caption and many visual questions.
:func:`sample_sequences` draws training sequences from them (one task per sequence, question types
balanced); :func:`all_sequences` lists every task for evaluation. :func:`question_type` names the
question types of the bundled shapes-world questions (other questions are ``other``), so
evaluation can report accuracy per type.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from rewarddance.data.schema import Sample
from rewarddance.models.inputs import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER

CAPTION = "caption"
"""Type name of the caption task."""

QUESTION_TYPES: tuple[str, ...] = ("color", "count", "shape", "exists", "where", "position", "motion")
"""Visual question types (see :func:`question_type`); ``position`` is the yes/no relation question."""

_TYPE_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("color", re.compile(r"^What colou?r is ")),
    ("shape", re.compile(r"^What shape is ")),
    ("count", re.compile(r"^How many ")),
    ("exists", re.compile(r"^Is there ")),
    ("where", re.compile(r"^Where is ")),
    ("position", re.compile(r"^Is the .+ (left of|right of|above|below) the ")),
    ("motion", re.compile(r"^(Which way is|Is the .+ moving\?)")),
)


def question_type(question: str) -> str:
    """The type of a shapes-world question (``color``, ``count``, ``shape``, ``exists``, ``where``,
    ``position``, ``motion``), or ``other``.

    Args:
        question: A question as written by :func:`rewarddance.shapes.scene_questions`.

    Returns:
        The type name.
    """
    for name, pattern in _TYPE_PATTERNS:
        if pattern.search(question):
            return name
    return "other"


@dataclass
class Sequences:
    """Text-level training sequences: one image, one prompt, one answer each.

    Attributes:
        prompts: Prompts with one ``<image>`` placeholder.
        images: Per sequence, its visuals (one image, or a clip as a list of frames).
        answers: Target answers (the EOS token is appended by the encoder).
        types: Task type per sequence (``caption`` or a question type).
    """

    prompts: list[str] = field(default_factory=list)
    images: list[list[Any]] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)

    def add(self, sample: Sample, prompt: str, answer: str, kind: str) -> None:
        """Append one sequence about ``sample``'s image."""
        clip = sample.image or []
        # A Clip is a list of frames; a still image is a one-frame clip.
        if sample.is_video:
            self.prompts.append(f"{VIDEO_PLACEHOLDER} {prompt}")
            self.images.append([list(clip)])
        else:
            self.prompts.append(f"{IMAGE_PLACEHOLDER} {prompt}")
            self.images.append([clip[0]])
        self.answers.append(answer)
        self.types.append(kind)

    def __len__(self) -> int:
        return len(self.prompts)


def all_sequences(samples: Iterable[Sample], include_caption: bool = True) -> Sequences:
    """Every task of every sample as its own sequence: the caption, then each question (for evaluation).

    Args:
        samples: Caption samples (``Sample.caption``, ``Sample.qa``); padding repeats are skipped.
        include_caption: Include the caption task.

    Returns:
        The sequences.
    """
    out = Sequences()
    for sample in samples:
        if sample.padding:
            continue
        if include_caption and sample.caption:
            out.add(sample, sample.prompt, sample.caption, CAPTION)
        for question, answer in sample.qa:
            out.add(sample, question, answer, question_type(question))
    return out


def sample_sequences(
    samples: Iterable[Sample],
    rng: random.Random,
    caption_fraction: float = 0.25,
    balance_types: bool = True,
    sequences_per_sample: int = 1,
    mixing: Literal["batch", "sample"] = "batch",
) -> Sequences:
    """Training sequences: per sample, ``sequences_per_sample`` random tasks, each in its own sequence.

    Args:
        samples: Caption samples.
        rng: Source of the random choices.
        caption_fraction: Probability that a task is the caption (else one visual question).
        balance_types: Pick a question type uniformly first, then a question of it, so rare types
            (shape, position) are seen as often as frequent ones (count); else uniform over questions.
        sequences_per_sample: Tasks drawn per sample (without repeating a task where possible);
            more than one reuses a decoded image, which is cheap, but its sequences are correlated.
        mixing: ``batch``: the caption-or-question coin is tossed once per call (one batch), so
            short question batches are not padded to caption length; ``sample``: once per task.

    Returns:
        The sequences.
    """
    out = Sequences()
    samples = [s for s in samples if not s.padding]
    # "batch" mixing decides caption-or-questions once per batch: captions are ~2x longer than
    # questions and a batch is padded to its longest sequence, so mixing them within a batch
    # costs ~1.5x compute for the same supervision.
    whole_batch = rng.random() < caption_fraction if mixing == "batch" else None
    for sample in samples:
        tasks: list[tuple[str, str, str]] = [(question_type(q), q, a) for q, a in sample.qa]
        caption_left = bool(sample.caption)
        for _ in range(sequences_per_sample):
            wants_caption = rng.random() < caption_fraction if whole_batch is None else whole_batch
            if caption_left and (not tasks or wants_caption):
                out.add(sample, sample.prompt, sample.caption or "", CAPTION)
                caption_left = False
                continue
            if not tasks:
                break
            if balance_types:
                kind = rng.choice(sorted({t[0] for t in tasks}))
                options = [i for i, t in enumerate(tasks) if t[0] == kind]
            else:
                options = list(range(len(tasks)))
            kind, question, answer = tasks.pop(rng.choice(options))
            out.add(sample, question, answer, kind)
    return out
