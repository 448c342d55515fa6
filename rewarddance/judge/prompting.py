"""Reward-model prompts as data: templates (``rewarddance/judge/templates/*.yaml``) -> model inputs.

A :class:`Template` holds every piece of text a reward model reads: the instruction, the
pairwise question ("Is image 2 better than image 1?", the paper's main paradigm), the pointwise
question, the criteria texts per task (text-image alignment, visual quality, motion, overall),
the sentence asking for the answer, and the chain-of-thought answer layouts. Templates are YAML
files so the context can be scaled (RewardDance, arXiv 2509.08826, "context scaling") without
touching code; ``default.yaml`` documents the fields.

A :class:`Query` is one model input before tokenisation: the question kind, the generation
prompt, its visuals (a PIL image, or a video as a list of frames), the criteria and
instruction texts, optionally solved in-context examples and a target answer.
:func:`render_conversation` turns it into the backbone's input (one user turn, or a chat with a
system turn and one user/assistant turn pair per example); :func:`encode_queries` tokenises a
batch through :meth:`Backbone.encode` (left padding, the family's chat template) and keeps every
sequence under the model's length limit by truncating the *prompt text*, never image tokens.

The same functions serve training (``rewarddance.tasks.reward``) and scoring
(``rewarddance.judge.reward_model``), so an exported model reads exactly what it was trained on.
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from PIL import Image
from transformers import BatchFeature

from rewarddance.errors import RewardDanceError
from rewarddance.models.inputs import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER, Visual, prompt_to_messages

QuestionKind = Literal["pairwise", "pointwise"]
RationaleFormat = Literal["none", "judgment_first", "reasons_first"]

TEMPLATE_DIR = Path(__file__).parent / "templates"
"""Where the shipped templates live; ``load_template("default")`` reads ``default.yaml`` there."""

RATIONALE_FORMATS: tuple[str, ...] = ("none", "judgment_first", "reasons_first")

_TEXT_FIELDS = ("instruction", "prompt", "criteria", "answer_request", "media", "Media", "condition")
_QUESTION_FIELDS: dict[str, tuple[set[str], tuple[str, ...]]] = {
    # question kind: (allowed fields, visual fields that must appear exactly once, in any order)
    "pairwise": ({*_TEXT_FIELDS, "image1", "image2"}, ("image1", "image2")),
    "pointwise": ({*_TEXT_FIELDS, "image"}, ("image",)),
}
_REQUIRED_KEYS = ("name", "pairwise", "pointwise", "criteria", "default_criteria", "answer_requests", "answer_formats")
_OPTIONAL_KEYS = ("system", "instruction", "condition")

DEFAULT_CONDITION = "The {media} must start from this first frame: {image} "
"""How a query's condition image (image-to-video) is introduced when a template does not say: its ``condition``."""


class TemplateError(RewardDanceError, ValueError):
    """A template file or dict misses a field, has an unknown one, or misplaces a placeholder."""


class BadInputError(RewardDanceError, ValueError):
    """Inputs the processor cannot take (named by sample key), or a prompt that cannot fit at all.

    Attributes:
        keys: Keys of the offending queries.
    """

    def __init__(self, message: str, keys: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.keys = list(keys)

    def __reduce__(self) -> tuple[Any, ...]:
        # Crosses DataLoader worker boundaries (collate runs in workers).
        return (type(self), (str(self), self.keys))


# --------------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------------


def _fields(text: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]


@dataclass(frozen=True)
class Template:
    """The text of a reward model, loaded from YAML (see ``rewarddance/judge/templates/default.yaml``).

    Attributes:
        name: Template name (recorded in exports).
        pairwise: Pairwise question with ``{image1}``/``{image2}`` (reference, candidate).
        pointwise: Pointwise question with ``{image}``.
        criteria: Criteria texts by name (``text-image alignment``, ``visual quality``, ...).
        default_criteria: The criteria name used when neither the sample nor the config gives one.
        answer_requests: The sentence asking for the answer, per rationale format.
        answer_formats: Chain-of-thought answer layouts (``judgment_first``, ``reasons_first``).
        system: Optional system turn.
        instruction: Default instruction (a sample's own instruction replaces it).
        condition: The sentence showing a query's condition image (``{image}`` once, ``{media}`` allowed); it
            fills the questions' optional ``{condition}`` placeholder (empty without a condition image), or, in a
            question without one, goes before the question.
    """

    name: str
    pairwise: str
    pointwise: str
    criteria: dict[str, str]
    default_criteria: str
    answer_requests: dict[str, str]
    answer_formats: dict[str, str]
    system: str | None = None
    instruction: str = ""
    condition: str = DEFAULT_CONDITION

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> Template:
        """Validate and build a template.

        Args:
            data: The parsed YAML.
            source: Where it came from, for error messages.

        Raises:
            TemplateError: Naming the source and the field that is missing, unknown or malformed.
        """

        def fail(field_name: str, problem: str) -> None:
            raise TemplateError(f"template {source!r}, field {field_name!r}: {problem}")

        if not isinstance(data, Mapping):
            raise TemplateError(f"template {source!r}: expected a mapping, got {type(data).__name__}")
        for key in _REQUIRED_KEYS:
            if key not in data or data[key] is None:
                fail(key, "missing")
        for key in data:
            if key not in _REQUIRED_KEYS + _OPTIONAL_KEYS:
                fail(key, f"unknown field; allowed: {sorted(_REQUIRED_KEYS + _OPTIONAL_KEYS)}")
        for kind, (allowed, visuals) in _QUESTION_FIELDS.items():
            text = data[kind]
            if not isinstance(text, str):
                fail(kind, f"must be a string, got {type(text).__name__}")
            names = _fields(text)
            for name in names:
                if name not in allowed:
                    fail(kind, f"unknown placeholder {{{name}}}; allowed: {sorted(allowed)}")
            for name in visuals:
                if names.count(name) != 1:
                    fail(kind, f"needs the placeholder {{{name}}} exactly once (found {names.count(name)})")
            if names.count("condition") > 1:
                fail(kind, "may use the placeholder {condition} at most once")
        for key in ("criteria", "answer_requests", "answer_formats"):
            if not isinstance(data[key], Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in data[key].items()
            ):
                fail(key, "must map names to strings (quote 'yes'/'no' in YAML)")
        for key, text in data["criteria"].items():
            if set(_fields(text)) - {"media", "Media"}:
                fail(f"criteria.{key}", "may only use {media}/{Media}")
        if data["default_criteria"] not in data["criteria"]:
            fail(
                "default_criteria", f"{data['default_criteria']!r} is not a key of criteria {sorted(data['criteria'])}"
            )
        for fmt in RATIONALE_FORMATS:
            if fmt not in data["answer_requests"]:
                fail(f"answer_requests.{fmt}", "missing")
        formats = data["answer_formats"]
        for fmt in ("judgment_first", "reasons_first"):
            if fmt not in formats:
                fail(f"answer_formats.{fmt}", "missing")
            if sorted(_fields(formats[fmt])) != ["judgment", "reasons"]:
                fail(f"answer_formats.{fmt}", "needs {judgment} and {reasons} exactly once each")
        # The reward is read at the judgment token: right after the prompt (judgment first) or
        # right after the reasons and the text between (reasons first).
        if not formats["judgment_first"].startswith("{judgment}"):
            fail("answer_formats.judgment_first", "must start with {judgment}")
        if not formats["reasons_first"].endswith("{judgment}"):
            fail("answer_formats.reasons_first", "must end with {judgment}")
        for key in _OPTIONAL_KEYS:
            if data.get(key) is not None and not isinstance(data[key], str):
                fail(key, "must be a string")
        condition = data.get("condition") or DEFAULT_CONDITION
        if sorted(set(_fields(condition)) - {"media", "Media"}) != ["image"] or _fields(condition).count("image") != 1:
            fail("condition", "needs {image} exactly once and may use only {media}/{Media} besides")
        return cls(
            name=str(data["name"]),
            pairwise=data["pairwise"],
            pointwise=data["pointwise"],
            criteria=dict(data["criteria"]),
            default_criteria=data["default_criteria"],
            answer_requests=dict(data["answer_requests"]),
            answer_formats=dict(formats),
            system=data.get("system"),
            instruction=data.get("instruction") or "",
            condition=condition,
        )

    def to_dict(self) -> dict[str, Any]:
        """The template as plain data (what exports record; :meth:`from_dict` reads it back)."""
        return dataclasses.asdict(self)

    def criteria_text(self, name_or_text: str | None) -> tuple[str, bool]:
        """Resolve a criteria name to its text.

        Args:
            name_or_text: A key of :attr:`criteria`, None for :attr:`default_criteria`, or any other
                string, which is used verbatim as the criteria text.

        Returns:
            ``(text, known)``; ``known`` is False when the string was not a criteria name (callers
            count these, so a typo in a criteria name does not go unnoticed).
        """
        name = self.default_criteria if name_or_text is None else name_or_text
        if name in self.criteria:
            return self.criteria[name], True
        return name, False

    def answer(self, judgment: str, reasons: str | None, rationale_format: RationaleFormat) -> str:
        """The target answer text.

        Args:
            judgment: The answer word (``"yes"``/``"no"``).
            reasons: The rationale, or None (then the answer is the judgment alone, whatever the format).
            rationale_format: ``none``, ``judgment_first`` or ``reasons_first``.
        """
        if rationale_format == "none" or not reasons:
            return judgment
        return self.answer_formats[rationale_format].format(judgment=judgment, reasons=_clean(reasons))

    def reasons_prefix(self, reasons: str) -> str:
        """The reasons-first answer up to (not including) the judgment: where the reward is read."""
        fmt = self.answer_formats["reasons_first"]
        return fmt[: -len("{judgment}")].format(reasons=_clean(reasons))

    @property
    def reasons_marker(self) -> str:
        """The text between reasons and judgment in the reasons-first format (e.g. ``"\\nAnswer:\\n"``)."""
        fmt = self.answer_formats["reasons_first"]
        return fmt[fmt.index("{reasons}") + len("{reasons}") : -len("{judgment}")]


def load_template(template: str | Path | Mapping[str, Any] | Template) -> Template:
    """Load a template by name (``"default"``, ``"short"``), YAML path, dict, or pass one through.

    Raises:
        TemplateError: Unknown name, unreadable file, or an invalid template.
    """
    if isinstance(template, Template):
        return template
    if isinstance(template, Mapping):
        return Template.from_dict(template)
    path = Path(template)
    if path.suffix not in (".yaml", ".yml"):
        path = TEMPLATE_DIR / f"{template}.yaml"
    if not path.is_file():
        shipped = sorted(p.stem for p in TEMPLATE_DIR.glob("*.yaml"))
        raise TemplateError(f"No template {str(template)!r}: not a YAML file and not one of {shipped}.")
    return Template.from_dict(yaml.safe_load(path.read_text()), source=str(path))


# --------------------------------------------------------------------------------------------
# Queries and rendering
# --------------------------------------------------------------------------------------------


@dataclass
class Query:
    """One model input before tokenisation.

    Attributes:
        question: ``pairwise`` (visuals: reference/first, candidate/second) or ``pointwise`` (one visual).
        prompt: The generation prompt being judged.
        visuals: PIL images, or videos as lists of frames.
        criteria: Criteria text (already resolved, see :meth:`Template.criteria_text`).
        instruction: Instruction text; None uses the template's.
        answer: Target answer text (training), or None (scoring).
        examples: Solved queries shown before this one as earlier chat turns (their ``answer`` set).
        key: Sample key, for error messages (and so a sample is never its own in-context example).
        tag: The sample's tag (GenEval tag or category): in-context examples can be retrieved by it
            (:mod:`rewarddance.judge.examples`). Not shown to the model.
        condition: The condition image of an image-to-video query (the first frame the clips must start from),
            shown before the clips (:attr:`Template.condition`), or None.
    """

    question: QuestionKind
    prompt: str
    visuals: list[Visual]
    criteria: str
    instruction: str | None = None
    answer: str | None = None
    examples: list[Query] = field(default_factory=list)
    key: str = ""
    tag: str | None = None
    condition: Image.Image | None = None


def _clean(text: str) -> str:
    # User text must not create image slots: a literal "<image>" would steal the next visual.
    return text.replace(IMAGE_PLACEHOLDER, "(image)").replace(VIDEO_PLACEHOLDER, "(video)").strip()


def _with_media(text: str, media: Mapping[str, str]) -> str:
    # str.replace, not str.format: criteria and instructions may come from samples (user text).
    for name, value in media.items():
        text = text.replace("{" + name + "}", value)
    return text


def _is_video(visual: Visual) -> bool:
    return not isinstance(visual, Image.Image)


def question_text(template: Template, query: Query, rationale_format: RationaleFormat = "none") -> str:
    """The user text of ``query`` with ``<image>``/``<video>`` placeholders where the visuals go.

    Visuals are placed in the order their placeholders appear in the template (see
    :func:`ordered_visuals`).
    """
    form = template.pairwise if query.question == "pairwise" else template.pointwise
    video = any(_is_video(v) for v in query.visuals)
    media = {"media": "video" if video else "image", "Media": "Video" if video else "Image"}
    slots = _QUESTION_FIELDS[query.question][1]
    if len(query.visuals) != len(slots):
        raise ValueError(
            f"A {query.question} query needs {len(slots)} visuals, got {len(query.visuals)} ({query.key})."
        )
    placeholders = {
        name: VIDEO_PLACEHOLDER if _is_video(v) else IMAGE_PLACEHOLDER for name, v in zip(slots, query.visuals)
    }
    instruction = template.instruction if query.instruction is None else query.instruction
    condition = ""
    if query.condition is not None:
        condition = _with_media(template.condition, media).replace("{image}", IMAGE_PLACEHOLDER)
        if "condition" not in _fields(form):
            form = "{condition}" + form
    values = {
        **media,
        **placeholders,
        "instruction": _clean(_with_media(instruction, media)),
        "prompt": _clean(query.prompt),
        "criteria": _clean(_with_media(query.criteria, media)),
        "answer_request": template.answer_requests[rationale_format],
        "condition": condition,
    }
    return form.format(**values).strip()


def ordered_visuals(template: Template, query: Query) -> list[Visual]:
    """``query.visuals`` in the order their placeholders appear in the template's question, after the
    condition image where the question shows one (see :attr:`Template.condition`)."""
    form = template.pairwise if query.question == "pairwise" else template.pointwise
    slots = _QUESTION_FIELDS[query.question][1]
    if query.condition is not None and "condition" not in _fields(form):
        form = "{condition}" + form
    order = [name for name in _fields(form) if name in slots or (name == "condition" and query.condition is not None)]
    return [query.condition if name == "condition" else query.visuals[slots.index(name)] for name in order]  # type: ignore[misc]


def render_conversation(
    template: Template, query: Query, rationale_format: RationaleFormat = "none"
) -> tuple[str | list[dict[str, Any]], list[Visual]]:
    """The backbone input of one query: a prompt string, or a chat when there is context.

    Without a system turn or examples the result is a prompt string (one user turn, rendered by
    the family's chat template inside :meth:`Backbone.encode`). With them it is a conversation:
    ``[system], (user: example question, assistant: example answer) * k, user: question``; the
    chat template then marks every turn the way the model was instruction-tuned on.

    Returns:
        ``(prompt string or messages, visuals in placeholder order)``.
    """
    text = question_text(template, query, rationale_format)
    visuals = ordered_visuals(template, query)
    if template.system is None and not query.examples:
        return text, visuals
    messages: list[dict[str, Any]] = []
    if template.system is not None:
        messages.append({"role": "system", "content": template.system})
    all_visuals: list[Visual] = []
    for example in query.examples:
        if example.answer is None:
            raise ValueError(f"In-context example {example.key!r} has no answer.")
        example_visuals = ordered_visuals(template, example)
        user = prompt_to_messages(question_text(template, example, rationale_format), example_visuals)[0]
        messages += [user, {"role": "assistant", "content": example.answer}]
        all_visuals += example_visuals
    messages.append(prompt_to_messages(text, visuals)[0])
    return messages, all_visuals + visuals


def swap_image_mentions(text: str) -> str:
    """Swap "image 1" and "image 2" (and "video 1/2", "first/second image") in a rationale.

    Pairwise training shows every pair in both orders; the rationale of the swapped order must
    name the images the other way round or it would contradict what the model sees.
    """
    pattern = re.compile(r"\b(image|video|Image|Video) ([12])\b|\b(first|second|First|Second) (image|video)\b")

    def swap(m: re.Match[str]) -> str:
        if m.group(1):
            return f"{m.group(1)} {'2' if m.group(2) == '1' else '1'}"
        word = m.group(3)
        other = {"first": "second", "second": "first", "First": "Second", "Second": "First"}[word]
        return f"{other} {m.group(4)}"

    return pattern.sub(swap, text)


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


@dataclass
class EncodeReport:
    """What :func:`encode_queries` had to do to the inputs.

    Attributes:
        truncated: Queries whose prompt text was shortened to fit ``max_length``.
        truncated_tokens: Prompt tokens removed in total.
        cut: Prompt tokens removed, by the key of each shortened query.
        limit: The token limit the sequences were held to (None: no limit known).
    """

    truncated: int = 0
    truncated_tokens: int = 0
    cut: dict[str, int] = field(default_factory=dict)
    limit: int | None = None

    def add(self, other: EncodeReport) -> None:
        """Count ``other`` (a later batch) in this report too."""
        self.truncated += other.truncated
        self.truncated_tokens += other.truncated_tokens
        self.cut.update(other.cut)
        self.limit = other.limit if other.limit is not None else self.limit


def model_max_length(backbone: Any) -> int | None:
    """The longest sequence the backbone's language model takes (``max_position_embeddings``)."""
    config = backbone.model.config
    text_config = getattr(config, "text_config", None) or getattr(config, "get_text_config", lambda: config)()
    return getattr(text_config, "max_position_embeddings", None)


def check_visual(visual: Any, key: str) -> Visual:
    """An RGB PIL image (or list of them), or a :class:`BadInputError` naming the sample.

    Other PIL modes (RGBA, L, I;16, ...) are converted to RGB.
    """
    if isinstance(visual, Image.Image):
        if visual.width < 1 or visual.height < 1:
            raise BadInputError(f"Sample {key!r}: empty image ({visual.width}x{visual.height}).", [key])
        return visual if visual.mode == "RGB" else visual.convert("RGB")
    if isinstance(visual, (list, tuple)) and visual and all(isinstance(f, Image.Image) for f in visual):
        return [check_visual(f, key) for f in visual]  # type: ignore[misc]
    raise BadInputError(
        f"Sample {key!r}: a visual must be a PIL image or a non-empty list of PIL frames, got {type(visual).__name__}.",
        [key],
    )


def _checked(query: Query) -> Query:
    visuals = [check_visual(v, query.key) for v in query.visuals]
    examples = [_checked(e) for e in query.examples]
    condition = query.condition
    if condition is not None and not isinstance(condition, Image.Image):
        raise BadInputError(
            f"Sample {query.key!r}: the condition must be one PIL image, got {type(condition).__name__}.", [query.key]
        )
    condition = None if condition is None else check_visual(condition, query.key)
    return dataclasses.replace(query, visuals=visuals, examples=examples, condition=condition)


def _encode(
    backbone: Any, template: Template, queries: Sequence[Query], rationale_format: RationaleFormat, with_answers: bool
) -> BatchFeature:
    rendered = [render_conversation(template, q, rationale_format) for q in queries]
    answers = [q.answer or "" for q in queries] if with_answers else None
    return backbone.encode([r[0] for r in rendered], [r[1] for r in rendered], answers=answers)


def _find_bad(
    backbone: Any, template: Template, queries: Sequence[Query], rationale_format: RationaleFormat, with_answers: bool
) -> BadInputError:
    problems: list[str] = []
    keys: list[str] = []
    for query in queries:
        try:
            _encode(backbone, template, [query], rationale_format, with_answers)
        except Exception as err:  # the processor raises many types
            keys.append(query.key)
            problems.append(f"{query.key!r}: {type(err).__name__}: {err}")
    return BadInputError("The processor cannot take these inputs: " + "; ".join(problems), keys)


def encode_queries(
    backbone: Any,
    template: Template,
    queries: Sequence[Query],
    *,
    rationale_format: RationaleFormat = "none",
    with_answers: bool = False,
    max_length: int | None = None,
) -> tuple[BatchFeature, EncodeReport]:
    """Tokenise a batch of queries (left-padded), keeping every sequence within ``max_length``.

    A sequence over the limit has its *prompt text* shortened (from the end) until it fits, and is
    counted in the report: image tokens cannot be cut without breaking the image/token alignment,
    and the instruction, criteria and question are what the model was trained to read.

    Args:
        backbone: A :class:`rewarddance.models.Backbone`.
        template: The template.
        queries: The queries.
        rationale_format: Selects the template's answer request.
        with_answers: Append each query's ``answer`` and return ``labels`` (see :meth:`Backbone.encode`).
        max_length: Token limit per sequence; None uses the model's ``max_position_embeddings``.

    Returns:
        ``(model inputs, report)``.

    Raises:
        BadInputError: A visual the processor cannot take (naming the samples), or a query that
            does not fit even with an empty prompt.
    """
    queries = [_checked(q) for q in queries]
    limit = max_length if max_length is not None else model_max_length(backbone)
    report = EncodeReport(limit=limit)
    original = [q.prompt for q in queries]
    for _ in range(8):
        try:
            batch = _encode(backbone, template, queries, rationale_format, with_answers)
        except BadInputError:
            raise
        except Exception as err:
            raise _find_bad(backbone, template, queries, rationale_format, with_answers) from err
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        over = [i for i, n in enumerate(lengths) if limit is not None and n > limit]
        if not over:
            break
        for i in over:
            queries[i] = dataclasses.replace(queries[i], prompt=_shorten(backbone, queries[i], lengths[i] - limit))
    else:
        raise BadInputError(f"Could not fit queries {[queries[i].key for i in over]} into {limit} tokens.")
    for before, query in zip(original, queries):
        if query.prompt != before:
            report.truncated += 1
            tokenizer = backbone.tokenizer
            removed = len(tokenizer.encode(before, add_special_tokens=False)) - len(
                tokenizer.encode(query.prompt, add_special_tokens=False)
            )
            report.truncated_tokens += removed
            report.cut[query.key] = removed
    return batch, report


def _shorten(backbone: Any, query: Query, excess: int) -> str:
    ids = backbone.tokenizer.encode(query.prompt, add_special_tokens=False)
    if excess >= len(ids):
        raise BadInputError(
            f"Sample {query.key!r} is {excess} tokens over the limit even before its prompt text "
            f"({len(ids)} tokens) counts: the images, instruction and context alone are too long. "
            "Use fewer frames or in-context examples, a shorter template, or a larger max_length.",
            [query.key],
        )
    return backbone.tokenizer.decode(ids[: len(ids) - excess]).strip()
