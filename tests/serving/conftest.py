"""Tiny reward-model exports and live reward servers on loopback, shared by the serving tests.

The two servers (pairwise with an API key, pointwise without) start together, once per session: each start
imports torch and transformers twice (server and LitServe worker), ~15 s of one core, so both run in parallel on
the two cores while the exports' in-process models load. Every server runs in its own process group and is
killed in teardown.
"""

from __future__ import annotations

import pytest

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
