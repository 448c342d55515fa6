"""Tiny reward-model exports and live reward servers on loopback, shared by the serving tests.

The two servers (pairwise with an API key, pointwise without) start together, once per session: each start
imports torch and transformers twice (server and LitServe worker), ~15 s of one core, so both run in parallel on
the two cores while the exports' in-process models load. Every server runs in its own process group and is
killed in teardown.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from rewarddance.judge.prompting import Query
from rewarddance.judge.reward_model import RewardModel
from rewarddance.serving.process import ServerProcess
from rewarddance.tasks import GenerativeRewardTask

API_KEY = "test-key-not-secret"
READY_TIMEOUT = 120.0


@pytest.fixture(scope="session")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving-exports")
    out = {}
    for paradigm in ("pairwise", "pointwise"):
        task = GenerativeRewardTask(paradigm=paradigm)
        task.configure_model()
        out[paradigm] = task.export_to(root / paradigm)
    return out


@pytest.fixture(scope="session")
def servers(exports, tmp_path_factory):
    logs = tmp_path_factory.mktemp("serving-logs")
    started = {
        "pairwise": ServerProcess(
            exports["pairwise"], api_key=API_KEY, log=logs / "pairwise.log",
            args=["--max_batch_size", "4", "--batch_timeout", "0.05", "--accelerator", "cpu"],
        ),
        "pointwise": ServerProcess(
            exports["pointwise"], log=logs / "pointwise.log",
            args=["--max_batch_size", "8", "--batch_timeout", "0.05", "--accelerator", "cpu"],
        ),
    }  # fmt: skip
    try:
        for server in started.values():
            server.start()
        for server in started.values():
            server.wait_ready(READY_TIMEOUT)
        yield started
    finally:
        for server in started.values():
            server.kill()  # the whole process group at once: server, HTTP processes, workers


@pytest.fixture(scope="session")
def models(exports):
    """The same exports loaded in this process: what served rewards must equal."""
    return {paradigm: RewardModel.from_pretrained(folder) for paradigm, folder in exports.items()}


# The tag-retrieval pool of the context exports: two tags, a yes and a no in each, different pictures per tag.
POOL = [
    ("colors-yes", "a red circle", "red", "yes", "colors"),
    ("colors-no", "a blue square", "blue", "no", "colors"),
    ("counting-yes", "three circles", "green", "yes", "counting"),
    ("counting-no", "two squares", "white", "no", "counting"),
]


def context_export(folder, paradigm: str = "pointwise"):
    """A tiny reasons-first export that retrieves its 2 in-context examples per query by tag.

    A random tiny model repeats its last input token, and the assistant turn ends in a newline: its rationale would
    strip to "". Zeroing that token's (tied) embedding makes it write visible text, so a served rationale that
    matches the in-process one is a real match, not two empty strings.
    """
    task = GenerativeRewardTask(
        paradigm=paradigm, rationale_format="reasons_first", examples=2, example_retrieval="tag", max_new_tokens=6
    )
    task.configure_model()
    backbone = task.backbone
    with torch.no_grad():
        backbone.model.get_input_embeddings().weight[backbone.tokenizer.convert_tokens_to_ids("Ċ")] = 0
    shown = 2 if paradigm == "pairwise" else 1
    task.examples_pool = {
        paradigm: [
            Query(
                paradigm,
                prompt,
                [Image.new("RGB", (32, 32), colour)] * shown,
                "",
                answer=task.template.answer(answer, f"The picture is {colour}.", "reasons_first"),
                key=key,
                tag=tag,
            )
            for key, prompt, colour, answer, tag in POOL
        ]
    }
    return task.export_to(folder)


@pytest.fixture(scope="session")
def context_model_dir(tmp_path_factory):
    return context_export(tmp_path_factory.mktemp("serving-context") / "pointwise")


@pytest.fixture(scope="session")
def context_server(context_model_dir, tmp_path_factory):
    """The reasons-first tag-retrieval export served (started only by the tests that use it)."""
    log = tmp_path_factory.mktemp("serving-logs") / "context.log"
    server = ServerProcess(
        context_model_dir, log=log, args=["--max_batch_size", "4", "--batch_timeout", "0.05", "--accelerator", "cpu"]
    )
    try:
        server.start().wait_ready(READY_TIMEOUT)
        yield server
    finally:
        server.kill()
