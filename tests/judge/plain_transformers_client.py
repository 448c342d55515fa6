"""Score with an exported reward model using transformers alone, as another engine or a user would.

Run as a script by ``test_portable_export.py`` in a fresh process: it must never import rewarddance.
Everything about the question comes from the export folder: ``rewarddance_reward.json``'s ``query``
section, the processor files and the chat template.

    python plain_transformers_client.py EXPORT_DIR REQUESTS_JSON OUT_JSON

REQUESTS_JSON: ``[{"prompt": str, "image": png path}]`` (pointwise) or ``[{"prompt": str, "candidate": png
path, "reference": png path}]`` (pairwise): the names the query gives its image items. OUT_JSON
gets ``{"rewards": [...], "route": "AutoProcessor" | "tokenizer+image_processor", "modules": [...]}``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import transformers
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer


def fill(query: dict, prompt: str) -> list[dict]:
    """The query's messages with the generation prompt filled in."""
    for old, new in query["prompt_replacements"].items():
        prompt = prompt.replace(old, new)
    prompt = prompt.strip()

    def text(value: str) -> str:
        return value.replace(query["prompt_field"], prompt)

    messages = []
    for message in query["messages"]:
        content = message["content"]
        if isinstance(content, str):
            content = text(content)
        else:
            content = [{**item, "text": text(item["text"])} if item["type"] == "text" else item for item in content]
        messages.append({**message, "content": content})
    return messages


def images_for(query: dict, folder: Path, request: dict) -> list[Image.Image]:
    """The image of each image item, in order: the request's, or an in-context example's file."""
    paths = [request.get(name) or folder / name for name in query["images"]]
    return [Image.open(path).convert("RGB") for path in paths]


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
    rewards = []
    for request in json.loads(requests_path.read_text()):
        messages = fill(query, request["prompt"])
        images = images_for(query, folder, request)
        if processor is not None:
            text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            inputs = processor(text=[text], images=images, return_tensors="pt")
        else:
            inputs = inputs_without_torchvision(folder, messages, images)
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
    out_path.write_text(json.dumps({"rewards": rewards, "route": route, "modules": modules}))


if __name__ == "__main__":
    main()
