"""A reward-model export loads and scores in plain transformers, in a process that never imports rewarddance.

The client (``plain_transformers_client.py``) builds each query from the exported files alone:
``rewarddance_reward.json``'s ``query`` section, the processor files and the chat template. Its rewards
must equal ``RewardModel.score`` on the same inputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rewarddance.judge.prompting import Query, encode_queries
from rewarddance.judge.reward_model import RewardModel
from rewarddance.tasks import GenerativeRewardTask, RegressiveRewardTask

CLIENT = Path(__file__).with_name("plain_transformers_client.py")
# "<image>" in user text must not open an image slot; the client replaces it as the export says.
PROMPTS = ["a red circle", "  two <image> squares above a green triangle "]


def _noise(seed: int, width: int, height: int) -> Image.Image:
    # Sides that are multiples of patch * merge (16): no resize, so the PIL and torchvision image
    # processors (the client uses whichever transformers picks) see the same pixels.
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _plain_rewards(folder: Path, requests: list[dict], tmp_path: Path) -> dict:
    requests_path, out_path = tmp_path / "requests.json", tmp_path / "out.json"
    requests_path.write_text(json.dumps(requests))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [sys.executable, str(CLIENT), str(folder), str(requests_path), str(out_path)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, f"client failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return json.loads(out_path.read_text())


@pytest.mark.parametrize(
    ("paradigm", "normalization", "with_example"),
    # The default tier runs the bundled model's case below (the README's snippet); these three add ~60 s.
    [
        pytest.param("pairwise", "yes_no", False, marks=pytest.mark.slow),
        pytest.param("pointwise", "vocab", False, marks=pytest.mark.slow),
        pytest.param("pairwise", "yes_no", True, marks=pytest.mark.slow),
    ],
)
def test_plain_transformers_reproduces_score(
    paradigm: str, normalization: str, with_example: bool, tmp_path: Path
) -> None:
    task = GenerativeRewardTask(paradigm=paradigm, normalization=normalization)
    task.configure_model()
    if with_example:  # an earlier solved turn whose images the export stores under examples/
        visuals = [_noise(10, 64, 64), _noise(11, 64, 64)]
        task.examples_pool = {"pairwise": [Query("pairwise", "a blue square", visuals, "", answer="yes", key="ex-0")]}
    folder = task.export_to(tmp_path / "export")
    processor_config = json.loads((folder / "processor_config.json").read_text())
    assert processor_config["processor_class"] == "Qwen2VLProcessor"
    assert processor_config["image_processor"]["image_processor_type"] == "Qwen2VLImageProcessorPil"

    images = [_noise(1, 64, 64), _noise(2, 96, 64)]
    references = [_noise(3, 64, 96), _noise(4, 64, 64)] if paradigm == "pairwise" else None
    requests = []
    for i, prompt in enumerate(PROMPTS):
        # Named as the export's query names its image items: "image" (pointwise), "candidate" and "reference".
        slot = "image" if references is None else "candidate"
        request = {"prompt": prompt, slot: str(tmp_path / f"image-{i}.png")}
        images[i].save(request[slot])
        if references is not None:
            request["reference"] = str(tmp_path / f"reference-{i}.png")
            references[i].save(request["reference"])
        requests.append(request)

    plain = _plain_rewards(folder, requests, tmp_path)
    assert plain["modules"] == []  # the client never imported rewarddance

    model = RewardModel.from_pretrained(folder)  # rewarddance's own loading of the same folder
    assert len(model.queries(PROMPTS, images, references)[0].examples) == int(with_example)
    expected = model.score(PROMPTS, images, references=references)
    torch.testing.assert_close(torch.tensor(plain["rewards"]), expected, atol=1e-5, rtol=0)


# A criteria name, and a text with what the fill rule rewrites: a media word and an image slot in user text.
CRITERIA = ["visual quality", "  Which {media} has <image> fewer artifacts? "]


@pytest.mark.parametrize("name", ["shapes-rm-pairwise", "shapes-rm-onpolicy", "shapes-rm-onpolicy-cot"])
def test_bundled_reward_model_loads_in_plain_transformers(tmp_path: Path, name: str) -> None:
    folder = Path(__file__).resolve().parents[2] / "data" / "reward_models" / name
    images, references = [_noise(5, 64, 64), _noise(6, 64, 64)], [_noise(7, 64, 64), _noise(8, 64, 64)]
    requests = []
    for i, prompt in enumerate(PROMPTS):
        request = {"prompt": prompt, "candidate": str(tmp_path / f"c{i}.png"), "reference": str(tmp_path / f"r{i}.png")}
        images[i].save(request["candidate"])
        references[i].save(request["reference"])
        requests.append(request)
    # the same pairs asked with each other criteria (the query's templates.image, {criteria} filled)
    requests += [{**request, "criteria": criteria} for criteria in CRITERIA for request in requests[: len(PROMPTS)]]
    plain = _plain_rewards(folder, requests, tmp_path)
    assert plain["modules"] == []
    model = RewardModel.from_pretrained(folder)
    expected = [model.score(PROMPTS, images, references=references)]
    expected += [model.score(PROMPTS, images, references=references, criteria=c) for c in CRITERIA]
    torch.testing.assert_close(torch.tensor(plain["rewards"]), torch.cat(expected), atol=1e-5, rtol=0)
    # the criteria change what the model reads, so matching them is not matching the default again
    assert (torch.cat(expected[1:]) - expected[0].repeat(len(CRITERIA))).abs().max() > 1e-4


@pytest.mark.slow
def test_plain_transformers_reproduces_criteria_truncation_and_video(tmp_path: Path) -> None:
    """A pointwise export held to a token limit that cuts a long prompt, judging stills and videos with criteria."""
    task = GenerativeRewardTask(paradigm="pointwise", normalization="vocab", num_frames=3)
    task.configure_model()
    probe = RewardModel.from_pretrained(task.export_to(tmp_path / "probe"))  # sizes the limit
    # the longest query with a short prompt: a clip of three sampled frames, with either criteria
    lengths = []
    for criteria in (None, "visual quality"):
        short = probe.queries(["a red circle"], [[_noise(1, 64, 64)] * 5], criteria=criteria)
        lengths.append(int(encode_queries(probe.backbone, probe.template, short)[0]["attention_mask"].sum()))
    task.hparams.max_length = max(lengths) + 4  # room for a short prompt only
    folder = task.export_to(tmp_path / "export")
    model = RewardModel.from_pretrained(folder)
    assert model.config["max_length"] == task.hparams.max_length

    long_prompt = "a red circle above " + " and ".join(f"{n} small blue squares" for n in range(2, 40))
    prompts = ["a red circle", long_prompt]
    stills = [_noise(1, 64, 64), _noise(2, 64, 64)]
    clips = [[_noise(10 + t, 64, 64) for t in range(5)], [_noise(20 + t, 64, 64) for t in range(2)]]
    requests = []
    for criteria in (None, "visual quality"):
        for i, prompt in enumerate(prompts):
            still = str(tmp_path / f"still-{i}.png")
            stills[i].save(still)
            frames = []
            for t, frame in enumerate(clips[i]):
                frames.append(str(tmp_path / f"clip-{i}-{t}.png"))
                frame.save(frames[-1])
            extra = {} if criteria is None else {"criteria": criteria}
            requests += [{"prompt": prompt, "image": still, **extra}, {"prompt": prompt, "image": frames, **extra}]
    plain = _plain_rewards(folder, requests, tmp_path)
    assert plain["modules"] == []

    expected = []
    for criteria in (None, "visual quality"):
        for i, prompt in enumerate(prompts):
            for visual in (stills[i], clips[i]):
                expected.append(model.score([prompt], [visual], criteria=criteria))
                cut = model.last_report.truncated
                assert cut == (prompt == long_prompt)  # the long prompt was cut, by rewarddance and the client
    torch.testing.assert_close(torch.tensor(plain["rewards"]), torch.cat(expected), atol=1e-5, rtol=0)
    cut_prompts = {p for p, r in zip(plain["prompts"], requests) if r["prompt"] == long_prompt}
    assert all(long_prompt.startswith(p) and len(p) < len(long_prompt) for p in cut_prompts)


def test_exports_a_client_cannot_reproduce_say_so(tmp_path: Path) -> None:
    """Regressive and reasons-first rewards are not a next-token readout: the export says so, with the reason."""
    regressive = RegressiveRewardTask()
    regressive.configure_model()
    reasons = GenerativeRewardTask(paradigm="pointwise", rationale_format="reasons_first")
    reasons.configure_model()
    plain = GenerativeRewardTask(paradigm="pointwise")
    plain.configure_model()
    queries = {}
    for name, task in (("regressive", regressive), ("reasons_first", reasons), ("plain", plain)):
        folder = task.export_to(tmp_path / name)
        queries[name] = json.loads((folder / "rewarddance_reward.json").read_text())["query"]
    assert queries["plain"]["portable"] is True and queries["plain"]["not_portable"] == []
    for name, words in (("regressive", "reward_head.pt"), ("reasons_first", "rationale")):
        query = queries[name]
        assert query["portable"] is False and len(query["not_portable"]) == 1
        assert query["not_portable"][0].startswith(name) and words in query["not_portable"][0]
    assert queries["regressive"]["readout"]["kind"] == "regressive_head"
    assert queries["reasons_first"]["readout"]["kind"] == "after_generated_rationale"


@pytest.mark.parametrize("mode", ["tag", "similar"])
def test_an_export_that_retrieves_its_examples_per_query_is_not_portable(mode: str, tmp_path: Path) -> None:
    """Which examples a query is shown depends on its tag or prompt: a client without rewarddance cannot choose them."""
    task = GenerativeRewardTask(paradigm="pointwise", examples=1, example_retrieval=mode)
    task.configure_model()
    task.examples_pool = {
        "pointwise": [
            Query("pointwise", prompt, [_noise(i, 32, 32)], "", answer=answer, key=f"ex-{i}", tag=tag)
            for i, (prompt, answer, tag) in enumerate(
                [("a red circle", "yes", "colors"), ("two squares", "no", "counting")]
            )
        ]
    }
    record = json.loads((task.export_to(tmp_path / "export") / "rewarddance_reward.json").read_text())
    query = record["query"]
    assert record["example_pool"]["retrieval"] == mode and len(record["example_pool"]["records"]["pointwise"]) == 2
    assert query["portable"] is False and len(query["not_portable"]) == 1
    reason = query["not_portable"][0]
    assert reason.startswith(f"example_retrieval {mode}:") and "serve" in reason and "example_pool/" in reason
    # The messages show no examples (no fixed context to show): the one image item is the query's own.
    assert query["images"] == ["image"]
