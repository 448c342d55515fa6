"""The rewarddance shard format, version 1 (documented in data/README.md).

One WebDataset sample per training example. Every sample has a ``json`` member with its
metadata and one or more image members named by *role*:

- ``first`` / ``second``: the two candidates of a preference pair (``kind="pair"``),
- ``image``: the single image of a pointwise or caption sample (``kind="point"`` / ``"caption"``),
- ``ref0``, ``ref1``, ...: optional reference images,
- ``condition``: an optional condition image, the input of an image-to-video (or image-editing) generation
  that the candidates must follow; always one still image (``condition.<ext>``), also in video samples.

A still image is one member ``<role>.<ext>``; a video clip is its frames ``<role>.<t:03d>.<ext>``
(t = 0, 1, ...) with ``video.fps`` in the metadata. Allowed image extensions are png, jpg, jpeg
and webp. Nothing else is ever decoded: members with other extensions (pickles, torch files)
are ignored, never loaded, so a shard from the internet cannot run code on the reader's machine.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image, UnidentifiedImageError

from rewarddance.errors import RewardDanceError

SCHEMA_VERSION = 1
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")
KINDS = ("pair", "point", "caption")
LABELS = ("first", "second", "tie")
ANSWERS = ("yes", "no")

SampleKind = Literal["pair", "point", "caption"]
PairLabel = Literal["first", "second", "tie"]
Answer = Literal["yes", "no"]
Clip = list[Image.Image]
"""A visual: one frame for a still image, several for a video clip."""

_ROLE_MEMBER = re.compile(r"^(?P<role>first|second|image|condition|ref\d+)(?:\.(?P<frame>\d+))?\.(?P<ext>[a-z]+)$")


class ShardFormatError(RewardDanceError, ValueError):
    """A sample that violates the shard format; the message names shard, sample and field."""

    def __init__(self, shard: str, key: str, field_name: str, problem: str) -> None:
        self.shard, self.key, self.field, self.problem = shard, key, field_name, problem
        super().__init__(f"shard {shard!r}, sample {key!r}, field {field_name!r}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        # The default reduce replays ``args`` (the formatted message) into __init__, which takes four
        # arguments: without this the error could not cross a DataLoader worker or DDP process boundary.
        return (type(self), (self.shard, self.key, self.field, self.problem))


@dataclass
class Sample:
    """One decoded training example. Visuals are lists of PIL frames (length 1 for images)."""

    key: str
    kind: SampleKind
    prompt: str
    first: Clip | None = None
    second: Clip | None = None
    image: Clip | None = None
    references: list[Clip] = field(default_factory=list)
    condition: Image.Image | None = None
    """The condition image of an image-to-video sample (the first frame the clips must start from), or None."""
    label: PairLabel | None = None
    """Pair label: which candidate is better, or a tie."""
    soft_label: float | None = None
    """Optional probability that ``first`` is better (e.g. a vote share); ties are 0.5."""
    answer: Answer | None = None
    """Pointwise label: does the image satisfy the prompt / criteria?"""
    instruction: str | None = None
    criteria: str | None = None
    rationale: str | None = None
    caption: str | None = None
    qa: list[tuple[str, str]] = field(default_factory=list)
    """Visual questions and their answers (caption samples)."""
    fps: float | None = None
    """Frames per second when the visuals are video clips."""
    source: str = "unknown"
    models: list[str] = field(default_factory=list)
    category: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    """Free-form metadata, e.g. the GenEval-style scene description of a shapes sample."""
    shard: str = ""
    padding: bool = False
    """Set by the streaming reader on a repeat added so every rank gets the same number of batches
    (or that stands in for a skipped bad sample): metrics should leave it out. Not stored in shards."""

    @property
    def is_video(self) -> bool:
        return self.fps is not None

    def roles(self) -> dict[str, Clip]:
        """The visuals present, by member role name."""
        out = {name: clip for name in ("first", "second", "image") if (clip := getattr(self, name)) is not None}
        out.update({f"ref{i}": clip for i, clip in enumerate(self.references)})
        return out


def _encode_image(img: Image.Image, ext: str) -> bytes:
    buf = io.BytesIO()
    fmt = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[ext]
    img = img.convert("RGB") if fmt == "JPEG" and img.mode != "RGB" else img
    img.save(buf, format=fmt, **({"quality": 95} if fmt != "PNG" else {"compress_level": 9}))
    return buf.getvalue()


def encode_sample(sample: Sample, image_ext: str = "png") -> dict[str, Any]:
    """Turn a :class:`Sample` into the member dict that ``webdataset.TarWriter`` writes.

    The sample is validated first, so a writer can never produce a shard its reader rejects.
    """
    validate_sample(sample)
    if image_ext not in IMAGE_EXTENSIONS:
        raise ValueError(f"image_ext must be one of {IMAGE_EXTENSIONS}, got {image_ext!r}")
    meta = {
        "schema_version": SCHEMA_VERSION,
        "kind": sample.kind,
        "prompt": sample.prompt,
        "label": sample.label,
        "soft_label": sample.soft_label,
        "answer": sample.answer,
        "num_references": len(sample.references),
        "instruction": sample.instruction,
        "criteria": sample.criteria,
        "rationale": sample.rationale,
        "caption": sample.caption,
        "qa": [list(pair) for pair in sample.qa],
        "video": {"fps": sample.fps} if sample.fps is not None else None,
        "source": sample.source,
        "models": list(sample.models),
        "category": sample.category,
        "meta": sample.meta,
    }
    out: dict[str, Any] = {"__key__": sample.key, "json": json.dumps(meta).encode()}
    for role, clip in sample.roles().items():
        if sample.is_video:
            for t, frame in enumerate(clip):
                out[f"{role}.{t:03d}.{image_ext}"] = _encode_image(frame, image_ext)
        else:
            out[f"{role}.{image_ext}"] = _encode_image(clip[0], image_ext)
    if sample.condition is not None:
        out[f"condition.{image_ext}"] = _encode_image(sample.condition, image_ext)
    return out


def validate_sample(sample: Sample) -> None:
    """Raise :class:`ShardFormatError` if ``sample`` breaks the format's rules."""

    def fail(field_name: str, problem: str) -> None:
        raise ShardFormatError(sample.shard or "<memory>", sample.key, field_name, problem)

    if not sample.key or "." in sample.key or "/" in sample.key:
        fail("__key__", "must be non-empty and contain no '.' or '/'")
    if sample.kind not in KINDS:
        fail("kind", f"must be one of {KINDS}, got {sample.kind!r}")
    if not isinstance(sample.prompt, str) or not sample.prompt.strip():
        fail("prompt", "must be a non-empty string")
    required = {"pair": ("first", "second"), "point": ("image",), "caption": ("image",)}[sample.kind]
    for name in ("first", "second", "image"):
        present = getattr(sample, name) is not None
        if name in required and not present:
            fail(name, f"a {sample.kind} sample needs a {name!r} visual")
        if name not in required and present:
            fail(name, f"a {sample.kind} sample must not have a {name!r} visual")
    for role, clip in sample.roles().items():
        if not clip:
            fail(role, "visual has no frames")
        if not sample.is_video and len(clip) != 1:
            fail(role, f"{len(clip)} frames but no video.fps: still images have exactly one frame")
    if sample.condition is not None and not isinstance(sample.condition, Image.Image):
        fail("condition", f"must be one still image, got {type(sample.condition).__name__}")
    if sample.kind == "pair" and sample.label not in LABELS:
        fail("label", f"must be one of {LABELS}, got {sample.label!r}")
    if sample.kind != "pair" and sample.label is not None:
        fail("label", "only pair samples have a pair label")
    if sample.soft_label is not None and (sample.kind != "pair" or not (0.0 <= float(sample.soft_label) <= 1.0)):
        fail("soft_label", f"must be a probability in [0, 1] on a pair sample, got {sample.soft_label!r}")
    if sample.kind == "point" and sample.answer not in ANSWERS:
        fail("answer", f"must be one of {ANSWERS}, got {sample.answer!r}")
    if sample.kind != "point" and sample.answer is not None:
        fail("answer", "only point samples have a yes/no answer")
    if sample.kind == "caption" and not (sample.caption or sample.qa):
        fail("caption", "a caption sample needs a caption or visual questions")
    if sample.fps is not None and not (float(sample.fps) > 0):
        fail("video.fps", f"must be positive, got {sample.fps!r}")
    for i, qa in enumerate(sample.qa):
        if len(qa) != 2 or not all(isinstance(s, str) and s for s in qa):
            fail(f"qa[{i}]", "must be a [question, answer] pair of non-empty strings")


def member_role(member: str) -> tuple[str, int | None, str] | None:
    """Parse ``first.png`` / ``ref1.004.webp`` into (role, frame index or None, extension)."""
    m = _ROLE_MEMBER.match(member)
    if m is None or m["ext"] not in IMAGE_EXTENSIONS:
        return None
    return m["role"], (int(m["frame"]) if m["frame"] is not None else None), m["ext"]


def decode_sample(
    raw: dict[str, Any],
    *,
    load_references: bool = True,
    load_visuals: bool = True,
) -> Sample:
    """Decode and validate one raw WebDataset sample (member name -> bytes).

    Only the ``json`` member and image members are ever parsed, with ``json.loads`` and PIL.
    Visuals the caller does not need are left undecoded (``load_references=False`` skips the
    reference images), which is where most of the read time goes.

    Raises:
        ShardFormatError: naming the shard, the sample key and the offending field.
    """
    shard = str(raw.get("__url__", "<unknown shard>"))
    key = str(raw.get("__key__", "<unknown key>"))

    def fail(field_name: str, problem: str) -> None:
        raise ShardFormatError(shard, key, field_name, problem)

    if "json" not in raw:
        fail("json", "missing metadata member")
    try:
        meta = json.loads(raw["json"])
    except (ValueError, UnicodeDecodeError) as err:
        fail("json", f"not valid JSON ({err})")
    if not isinstance(meta, dict):
        fail("json", "metadata must be a JSON object")
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        fail("schema_version", f"expected {SCHEMA_VERSION}, got {version!r}")

    frames: dict[str, dict[int | None, tuple[str, bytes]]] = {}
    for member, payload in raw.items():
        parsed = member_role(member)
        if parsed is not None:
            role, t, _ = parsed
            frames.setdefault(role, {})[t] = (member, payload)

    video = meta.get("video")
    fps = video.get("fps") if isinstance(video, dict) else None
    num_refs = meta.get("num_references", 0)
    if not isinstance(num_refs, int) or num_refs < 0:
        fail("num_references", f"must be a non-negative integer, got {num_refs!r}")

    def load(role: str) -> Clip | None:
        members = frames.get(role)
        if not members:
            return None
        if fps is None and set(members) != {None}:
            fail(role, "frame-numbered members but no video.fps in the metadata")
        if fps is not None and (None in members or sorted(members) != list(range(len(members)))):
            fail(role, f"video frames must be numbered 0..n-1, got {sorted(members, key=str)}")
        if not load_visuals:
            return []
        return [open_member(*members[t]) for t in sorted(members, key=lambda x: -1 if x is None else x)]

    def open_member(member: str, payload: bytes) -> Image.Image:
        try:
            img = _open_image(payload, member.rsplit(".", 1)[-1])
        except Exception as err:  # PIL raises many types for corrupt data
            fail(member, f"cannot decode image ({type(err).__name__}: {err})")
        return img.convert("RGB") if img.mode != "RGB" else img

    references: list[Clip] = []
    for i in range(num_refs):
        if f"ref{i}" not in frames:
            fail(f"ref{i}", f"num_references is {num_refs} but the member is missing")
        if load_references:
            references.append(load(f"ref{i}"))  # type: ignore[arg-type]

    condition: Image.Image | None = None
    if "condition" in frames:
        if set(frames["condition"]) != {None}:
            fail("condition", "the condition is one still image: condition.<ext>, without a frame number")
        if load_visuals:
            condition = open_member(*frames["condition"][None])

    def text(name: str) -> str | None:
        value = meta.get(name)
        if value is not None and not isinstance(value, str):
            fail(name, f"must be a string or null, got {type(value).__name__}")
        return value

    qa = meta.get("qa") or []
    if not isinstance(qa, list):
        fail("qa", "must be a list of [question, answer] pairs")
    models = meta.get("models") or []
    if not isinstance(models, list):
        fail("models", "must be a list of strings")
    sample = Sample(
        key=key,
        kind=meta.get("kind"),  # type: ignore[arg-type]
        prompt=meta.get("prompt"),  # type: ignore[arg-type]
        first=load("first"),
        second=load("second"),
        image=load("image"),
        references=references,
        condition=condition,
        label=meta.get("label"),
        soft_label=meta.get("soft_label"),
        answer=meta.get("answer"),
        instruction=text("instruction"),
        criteria=text("criteria"),
        rationale=text("rationale"),
        caption=text("caption"),
        qa=[tuple(p) if isinstance(p, list) else p for p in qa],  # type: ignore[misc]
        fps=fps,
        source=text("source") or "unknown",
        models=[str(m) for m in models],
        category=text("category"),
        meta=meta.get("meta") or {},
        shard=shard,
    )
    if not load_visuals:
        # Presence was checked above; validate the rest with placeholder frames.
        for name in ("first", "second", "image"):
            if getattr(sample, name) == []:
                setattr(sample, name, None)
        _validate_without_visuals(sample, frames)
    else:
        validate_sample(sample)
    return sample


_PIL_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}


def _open_image(payload: bytes, ext: str) -> Image.Image:
    # Naming the format skips PIL's probing of every plugin (~20% of decode time on 64 px PNGs);
    # a member whose bytes do not match its extension is still read, by probing.
    try:
        img = Image.open(io.BytesIO(payload), formats=[_PIL_FORMATS[ext]])
    except UnidentifiedImageError:
        img = Image.open(io.BytesIO(payload))
    img.load()
    return img


def _validate_without_visuals(sample: Sample, frames: dict[str, Any]) -> None:
    placeholder = [Image.new("RGB", (1, 1))]
    probe = Sample(**{**sample.__dict__, "references": []})
    for name in ("first", "second", "image"):
        if name in frames:
            setattr(probe, name, placeholder * (2 if sample.is_video else 1))
    validate_sample(probe)
