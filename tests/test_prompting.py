"""Templates as data: rendering (golden strings), validation errors, context, truncation, bad inputs."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from rewarddance.judge.prompting import (
    BadInputError,
    Query,
    Template,
    TemplateError,
    encode_queries,
    load_template,
    question_text,
    render_conversation,
    swap_image_mentions,
)
from rewarddance.models import load_backbone


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("tiny-qwen2-vl")


@pytest.fixture
def template() -> Template:
    return load_template("default")


def _image(colour: str = "red", size: tuple[int, int] = (64, 64)) -> Image.Image:
    return Image.new("RGB", size, colour)


def _pair(template: Template, criteria: str = "text-image alignment", **kwargs) -> Query:
    text, _ = template.criteria_text(criteria)
    return Query("pairwise", "a red circle", [_image("red"), _image("blue")], text, key="k", **kwargs)


# -- golden strings -------------------------------------------------------------------------------


def test_pairwise_question_golden(template):
    assert question_text(template, _pair(template)) == (
        "You are an expert judge of AI-generated images. Please evaluate two images generated from the "
        'prompt: "a red circle". Image 1: <image> Image 2: <image> Is image 2 better than image 1? '
        "Judge text-image alignment: the objects, their number, colours and positions must match the prompt. "
        'Please answer "yes" or "no".'
    )


def test_pointwise_video_question_golden(template):
    text, _ = template.criteria_text("visual quality")
    query = Query("pointwise", "a ball moving left", [[_image(), _image()]], text, instruction="Be strict.")
    assert question_text(template, query, "judgment_first") == (
        'Be strict. Please evaluate a video generated from the prompt: "a ball moving left". <video> '
        "Does the video meet the criteria? Judge visual quality: the video should be clean and sharp, "
        'without blur, noise or artefacts. Please answer "yes" or "no", and give the detailed reason.'
    )


def test_short_template_golden():
    template = load_template("short")
    assert question_text(template, _pair(template, "visual quality")) == (
        'Prompt: "a red circle". Image 1: <image> Image 2: <image> Is image 2 better than image 1? '
        "Criteria: quality. Answer yes or no."
    )


def test_answer_formats(template):
    assert template.answer("yes", None, "judgment_first") == "yes"
    assert template.answer("no", "Image 2 is empty.", "none") == "no"
    assert template.answer("yes", "Image 1 is blurry.", "judgment_first") == "yes. Image 1 is blurry."
    assert template.answer("no", "Image 2 is empty.", "reasons_first") == "Image 2 is empty.\nAnswer:\nno"
    assert template.reasons_prefix("Image 2 is empty.") == "Image 2 is empty.\nAnswer:\n"
    assert template.reasons_marker == "\nAnswer:\n"


def test_user_text_cannot_create_image_slots(template):
    query = Query("pointwise", "a <image> circle", [_image()], "overall")
    assert question_text(template, query).count("<image>") == 1


def test_visuals_follow_placeholder_order(template):
    data = template.to_dict()
    data["pairwise"] = "{image2} then {image1}: {prompt}? {criteria} {answer_request}"
    reordered = Template.from_dict(data)
    query = _pair(reordered)
    text, visuals = render_conversation(reordered, query)
    assert text.startswith("<image> then <image>")
    assert visuals == [query.visuals[1], query.visuals[0]]


def test_conversation_with_system_and_examples(template):
    data = {**template.to_dict(), "system": "You judge images."}
    chat = Template.from_dict(data)
    example = _pair(chat, answer="yes")
    query = _pair(chat, examples=[example, _pair(chat, answer="no")])
    messages, visuals = render_conversation(chat, query)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[2]["content"] == "yes" and messages[4]["content"] == "no"
    assert len(visuals) == 6
    assert sum(item["type"] == "image" for item in messages[-1]["content"]) == 2


def test_criteria_names_resolve_and_unknown_is_verbatim(template):
    assert template.criteria_text(None) == (template.criteria["overall"], True)
    assert template.criteria_text("motion quality")[1]
    assert template.criteria_text("Judge the vibe.") == ("Judge the vibe.", False)


def test_swap_image_mentions():
    text = "Image 1 has no circle. Image 2 matches; the first image loses to the second image, not image 12."
    assert swap_image_mentions(text) == (
        "Image 2 has no circle. Image 1 matches; the second image loses to the first image, not image 12."
    )
    assert swap_image_mentions(swap_image_mentions(text)) == text


# -- template errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("pairwise"), "field 'pairwise': missing"),
        (lambda d: d.update(pairwise="{image1} {prompt}"), "{image2} exactly once"),
        (lambda d: d.update(pointwise="{image} {colour}"), "unknown placeholder {colour}"),
        (lambda d: d.update(extra="x"), "field 'extra': unknown field"),
        (lambda d: d.update(default_criteria="beauty"), "not a key of criteria"),
        (lambda d: d["answer_formats"].update(judgment_first="{reasons} {judgment}"), "must start with {judgment}"),
        (lambda d: d["answer_formats"].update(reasons_first="{judgment} {reasons}"), "must end with {judgment}"),
        (lambda d: d["answer_requests"].pop("reasons_first"), "answer_requests.reasons_first"),
        (lambda d: d["criteria"].update(overall=True), "quote 'yes'/'no'"),
    ],
)
def test_template_errors_name_the_field(template, change, message):
    data = template.to_dict()
    data["answer_formats"] = dict(data["answer_formats"])
    data["answer_requests"] = dict(data["answer_requests"])
    data["criteria"] = dict(data["criteria"])
    change(data)
    with pytest.raises(TemplateError, match=message.replace("{", r"\{").replace("}", r"\}")):
        Template.from_dict(data, source="mine.yaml")


def test_unknown_template_name():
    with pytest.raises(TemplateError, match="default"):
        load_template("no-such-template")


def test_shipped_templates_load():
    for name in ("default", "short"):
        assert load_template(name).name == name


# -- encoding -------------------------------------------------------------------------------------


def test_long_prompt_is_truncated_not_images(backbone, template):
    short = _pair(template)
    long = _pair(template)
    long.prompt = "a red circle to the left of a blue square " * 40
    plain, _ = encode_queries(backbone, template, [short])
    limit = int(plain["input_ids"].shape[1]) + 20
    batch, report = encode_queries(backbone, template, [short, long], max_length=limit)
    assert report.truncated == 1 and report.truncated_tokens > 0
    assert batch["input_ids"].shape[1] <= limit
    image_tokens = (batch["input_ids"] == backbone.image_token_id).sum(dim=1)
    assert image_tokens[0] == image_tokens[1] == (plain["input_ids"] == backbone.image_token_id).sum()


def test_query_that_cannot_fit_raises(backbone, template):
    with pytest.raises(BadInputError, match="even before its prompt"):
        encode_queries(backbone, template, [_pair(template)], max_length=20)


def test_bad_images_are_named(backbone, template):
    good = _pair(template)
    bad = Query("pointwise", "a circle", [_image(size=(1, 400))], "overall", key="thin-one")
    with pytest.raises(BadInputError, match="thin-one") as info:
        encode_queries(backbone, template, [good, bad])
    assert info.value.keys == ["thin-one"]
    wrong_type = Query("pointwise", "a circle", ["not an image"], "overall", key="text-one")
    with pytest.raises(BadInputError, match=r"text-one.*PIL image"):
        encode_queries(backbone, template, [wrong_type])


def test_other_image_modes_are_converted(backbone, template):
    query = Query("pointwise", "a circle", [Image.new("RGBA", (64, 64))], "overall")
    batch, _ = encode_queries(backbone, template, [query])
    assert batch["input_ids"].shape[0] == 1


def test_answer_tokens_line_up_with_the_reward_position(backbone, template):
    """Judgment first: the first answer token is "yes"; reasons first: the prefix read at scoring
    time tokenises exactly as the start of the trained answer, so P(yes) is read where it was trained."""
    query = _pair(template, answer=template.answer("yes", "Image 2 matches.", "judgment_first"))
    batch, _ = encode_queries(backbone, template, [query], rationale_format="judgment_first", with_answers=True)
    answer = batch["labels"][0][batch["labels"][0] != -100]
    assert int(answer[0]) == backbone.yes_token_id
    tokenizer = backbone.tokenizer
    full = tokenizer.encode(template.answer("no", "Image 2 is empty.", "reasons_first"), add_special_tokens=False)
    prefix = tokenizer.encode(template.reasons_prefix("Image 2 is empty."), add_special_tokens=False)
    assert full[: len(prefix)] == prefix and full[len(prefix) :] == [backbone.no_token_id]
    assert torch.is_tensor(batch["input_ids"])
