"""Score with an exported reward model using transformers alone, as another engine or a user would.

Run as a script by ``test_portable_export.py`` in a fresh process: it must never import rewarddance.
Everything about the question comes from the export folder: ``rewarddance_reward.json``'s ``query``
section, the processor files and the chat template.

    python plain_transformers_client.py EXPORT_DIR REQUESTS_JSON OUT_JSON

REQUESTS_JSON: ``[{"prompt": str, "image": png path}]`` (pointwise) or ``[{"prompt": str, "candidate": png
path, "reference": png path}]`` (pairwise): the names the query gives its image items; a list of png paths
is a video (its frames), and ``"criteria"`` (a name or a text) asks with other criteria than the default.
OUT_JSON gets ``{"rewards": [...], "prompts": [the prompt each was scored with, after truncation], "route":
"AutoProcessor" | "tokenizer+image_processor", "modules": [...]}``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import torch
import transformers
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer


def clean(query: dict, text: str) -> str:
    """User text as the query reads it: no image slots (prompt_replacements), no outer spaces."""
    for old, new in query["prompt_replacements"].items():
        text = text.replace(old, new)
    return text.strip()


def criteria_text(query: dict, criteria: str, media: str) -> str:
    """A criteria name or text, as ``templates.fill`` says: the named text, media words, replacements, strip."""
    text = query["criteria_options"]["named"].get(criteria, criteria)
    text = text.replace("{media}", media).replace("{Media}", media.capitalize())
    return clean(query, text)


def fill(query: dict, messages: list[dict], prompt: str, criteria: str | None = None) -> list[dict]:
    """``messages`` with the generation prompt (and criteria text) filled in, in one pass over each text."""
    values = {query["prompt_field"]: clean(query, prompt)}
    if criteria is not None:
        values[query["templates"]["criteria_field"]] = criteria
    pattern = re.compile("|".join(re.escape(field) for field in values))

    def text(value: str) -> str:
        return pattern.sub(lambda match: values[match.group(0)], value)

    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            content = text(content)
        else:
            content = [{**item, "text": text(item["text"])} if item["type"] == "text" else item for item in content]
        out.append({**message, "content": content})
    return out


def sampled(frames: list, num_frames: int) -> list:
    """The frames the video rule keeps: the middle of each of num_frames equal segments."""
    n = len(frames)
    return list(frames) if n <= num_frames else [frames[int((i + 0.5) * n / num_frames)] for i in range(num_frames)]


def query_for(query: dict, folder: Path, request: dict, prompt: str) -> tuple[list[dict], list[Image.Image]]:
    """Messages (prompt and criteria filled, videos expanded to frames) and their images, in item order."""
    video = any(isinstance(request.get(name), list) for name in query["images"])
    if video or "criteria" in request:
        media = "video" if video else "image"
        form = query["templates"][media]
        criteria = request.get("criteria", query["criteria_options"]["default"])
        messages = fill(query, form["messages"], prompt, criteria_text(query, criteria, media))
        names = form["images"]
    else:  # the default criteria, already in the plain messages
        messages, names = fill(query, query["messages"], prompt), query["images"]
    sources = iter(names)
    expanded, images = [], []
    for message in messages:
        if isinstance(message["content"], str):
            expanded.append(message)
            continue
        content = []
        for item in message["content"]:
            if item["type"] not in ("image", "video"):
                content.append(item)
                continue
            name = next(sources)
            given = request.get(name) or str(folder / name)
            if item["type"] == "video":  # a still in a video slot is a one-frame video
                paths = sampled(
                    given if isinstance(given, list) else [given], query["templates"]["video"]["num_frames"]
                )
            else:
                paths = [given]
            content += [{"type": "image"}] * len(paths)
            images += [Image.open(path).convert("RGB") for path in paths]
        expanded.append({**message, "content": content})
    return expanded, images


def inputs_without_torchvision(folder: Path, messages: list[dict], images: list[Image.Image]) -> dict:
    """What the upstream processor would build, from the tokenizer and the (PIL) image processor.

    Without torchvision transformers cannot build the upstream Qwen-VL processor (its video
    processor needs torchvision), so the client expands each image token itself: one per merged
    patch, ``grid_t * grid_h * grid_w / merge_size**2``.
    """
    tokenizer = AutoTokenizer.from_pretrained(folder)
    image_processor = AutoImageProcessor.from_pretrained(folder)
    template = (folder / "chat_template.jinja").read_text()
    text = tokenizer.apply_chat_template(messages, chat_template=template, add_generation_prompt=True, tokenize=False)
    pixels = image_processor(images=images, return_tensors="pt")
    image_token = "<|image_pad|>"
    pieces = text.split(image_token)
    counts = (pixels["image_grid_thw"].prod(dim=-1) // image_processor.merge_size**2).tolist()
    assert len(pieces) == len(counts) + 1, "one image token per image item"
    text = pieces[0] + "".join(image_token * n + piece for n, piece in zip(counts, pieces[1:]))
    encoded = tokenizer(text, return_tensors="pt")
    image_token_id = tokenizer.convert_tokens_to_ids(image_token)
    encoded["mm_token_type_ids"] = (encoded["input_ids"] == image_token_id).long()
    return {**encoded, **pixels}


def main() -> None:
    folder, requests_path, out_path = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    query = json.loads((folder / "rewarddance_reward.json").read_text())["query"]
    readout = query["readout"]
    if not query["portable"]:  # the export says a client cannot reproduce its reward: do not pretend
        raise SystemExit(f"not portable: {query['not_portable']}")
    assert readout["kind"] == "next_token", readout
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    processor = None
    if transformers.utils.is_torchvision_available():
        processor = AutoProcessor.from_pretrained(folder)
        assert isinstance(processor, transformers.ProcessorMixin), type(processor)
    else:
        try:
            AutoProcessor.from_pretrained(folder)
        except ImportError as err:  # loud, never a bare tokenizer in disguise
            assert "torchvision" in str(err).lower(), err
        else:
            raise AssertionError(
                "AutoProcessor loaded without torchvision: the export no longer names the upstream class"
            )
    tokenizer = processor.tokenizer if processor is not None else AutoTokenizer.from_pretrained(folder)
    limit = query["truncation"]["max_length"]

    def inputs_of(prompt: str, request: dict) -> dict:
        messages, images = query_for(query, folder, request, prompt)
        if processor is not None:
            text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return processor(text=[text], images=images, return_tensors="pt")
        return inputs_without_torchvision(folder, messages, images)

    rewards, prompts_used = [], []
    for request in json.loads(requests_path.read_text()):
        prompt = request["prompt"]
        for _ in range(8):  # the truncation rule: cut the prompt's last tokens until the query fits
            inputs = inputs_of(prompt, request)
            excess = inputs["input_ids"].shape[1] - limit if limit else 0
            if excess <= 0:
                break
            ids = tokenizer.encode(prompt, add_special_tokens=False)
            assert excess < len(ids), f"cannot fit {request['prompt']!r} into {limit} tokens"
            prompt = tokenizer.decode(ids[: len(ids) - excess]).strip()
        else:
            raise AssertionError(f"{request['prompt']!r} did not fit into {limit} tokens in 8 rounds")
        prompts_used.append(prompt)
        with torch.no_grad():
            logits = model(**inputs).logits[0, -1].float()
        pair = [readout["yes_token_id"], readout["no_token_id"]]
        if readout["normalization"] == "yes_no":
            log_probs = torch.log_softmax(logits[pair], dim=-1)
        else:
            log_probs = torch.log_softmax(logits, dim=-1)[pair]
        rewards.append(log_probs[0].exp().item())
    route = "AutoProcessor" if processor is not None else "tokenizer+image_processor"
    modules = sorted(name for name in sys.modules if name.split(".")[0] == "rewarddance")
    out = {"rewards": rewards, "prompts": prompts_used, "route": route, "modules": modules}
    out_path.write_text(json.dumps(out))


if __name__ == "__main__":
    main()
