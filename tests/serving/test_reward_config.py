"""A reward in an RL config, in every form, through the real command line (``main([...])`` in-process).

The issue's form ``reward: {class_path: RemoteReward, init_args: {url: ...}}`` (short class names and import paths)
parses, prints, and runs a GRPO step against a live ``serve`` process; the older forms (registered names,
``kind:`` mappings, ``module:function``) keep working; a wrong class_path or init argument is a one-line error
naming ``model.init_args.reward`` before anything loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from rewarddance.cli import main
from rewarddance.rl.combined import CombinedReward
from rewarddance.rl.rewards import CallableReward, build_reward
from rewarddance.serving import OpenAIReward, RemoteReward

ROOT = Path(__file__).resolve().parents[2]
GRPO = str(ROOT / "configs" / "rl" / "shapes_grpo.yaml")
URL = "http://127.0.0.1:9"  # never contacted: printing and refusing a config do not set the reward up


def _rl(tmp_path: Path, *extra: str) -> list[str]:
    """The GRPO recipe cut to one small step: no logger, checkpoints, evaluation, plot or export."""
    return [
        "fit", "--config", GRPO, "--trainer.max_steps", "1", "--trainer.logger", "false", "--trainer.callbacks", "[]",
        "--trainer.enable_checkpointing", "false", "--trainer.default_root_dir", str(tmp_path / "rl"),
        "--model.init_args.height", "32", "--model.init_args.width", "32", "--model.init_args.num_inference_steps", "2",
        "--model.init_args.grpo.group_size", "2", "--model.init_args.grpo.train_steps", "1",
        "--model.init_args.eval_every", "null", "--model.init_args.plot", "false", "--model.init_args.export", "false",
        "--data.init_args.batch_size", "2", "--data.init_args.per_tag", "1", "--data.init_args.val_per_tag", "1",
        *extra,
    ]  # fmt: skip


def _with_reward(tmp_path: Path, reward: Any) -> str:
    """A config file that sets only the reward, as a user's RL config would write it."""
    path = tmp_path / "reward.yaml"
    path.write_text(yaml.safe_dump({"model": {"init_args": {"reward": reward}}}, sort_keys=False))
    return str(path)


COMBINED = {
    "class_path": "CombinedReward",
    "init_args": {
        "components": [
            {"reward": {"class_path": "RemoteReward", "init_args": {"url": URL}}, "weight": 1.0, "normalize": "zscore"},
            {"reward": "shapes-color", "weight": 0.5, "normalize": "rank", "name": "colour"},
        ]
    },
}

FORMS = {
    # the form, short class names and a full import path
    "RemoteReward": ({"class_path": "RemoteReward", "init_args": {"url": URL}}, RemoteReward),
    "import path": (
        {"class_path": "rewarddance.serving.client.RemoteReward", "init_args": {"url": URL, "retries": 1}},
        RemoteReward,
    ),
    "OpenAIReward": ({"class_path": "OpenAIReward", "init_args": {"url": URL + "/v1", "model": "judge"}}, OpenAIReward),
    "CombinedReward": (COMBINED, CombinedReward),
    # the forms that worked before
    "registered name": ("shapes-oracle", None),
    "kind mapping": ({"kind": "remote", "url": URL, "timeout": 5.0}, RemoteReward),
    "module:function": ("tests.serving.test_combined:brightness", CallableReward),
}


# The default tier runs the forms and one older form (~0.5 s each); the rest are in the slow tier.
SLOW_FORMS = {"OpenAIReward", "kind mapping", "module:function"}
SLOW_REFUSALS = {"missing init arg", "unimportable path", "a key beside class_path", "a value the class refuses"}


def _tiered(names: dict, slow: set[str]) -> list[Any]:
    return [pytest.param(name, id=name, marks=[pytest.mark.slow] if name in slow else []) for name in names]


@pytest.mark.parametrize("form", _tiered(FORMS, SLOW_FORMS))
def test_every_reward_form_parses_prints_and_builds(form: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    reward, expected_type = FORMS[form]
    with pytest.raises(SystemExit) as exit_info:
        main([*_rl(tmp_path), "--config", _with_reward(tmp_path, reward), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["reward"]
    assert printed == reward  # as written: the class and its arguments, nothing added
    built = build_reward(printed)  # what the task builds from it
    if expected_type is not None:
        assert isinstance(built, expected_type)
    if form == "CombinedReward":
        assert isinstance(built.rewards[0], RemoteReward) and built.rewards[0].client.url == URL
        assert built.weights == [1.0, 0.5] and built.normalizations == ["zscore", "rank"]
    if form == "import path":
        assert built.client.retries == 1


def test_one_key_of_the_reward_is_overridden_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # --model.init_args.reward.<key>=<value> merges into the config's reward mapping (tutorial 04 does this).
    with pytest.raises(SystemExit) as exit_info:
        main([*_rl(tmp_path), "--model.init_args.reward.best_of_n=4", "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["reward"]
    configured = yaml.safe_load(Path(GRPO).read_text())["model"]["init_args"]["reward"]
    assert printed == {**configured, "best_of_n": 4}


def test_the_printed_config_runs_again(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main([*_rl(tmp_path), "--config", _with_reward(tmp_path, COMBINED), "--print_config"])
    first = capsys.readouterr().out
    (tmp_path / "printed.yaml").write_text(first)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(tmp_path / "printed.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    assert yaml.safe_load(capsys.readouterr().out) == yaml.safe_load(first)


REFUSALS = {
    "unknown class_path": (
        {"class_path": "NoSuchReward", "init_args": {"url": URL}},
        "model.init_args.reward: Unknown reward 'NoSuchReward'",
    ),
    "unknown init arg": (
        {"class_path": "RemoteReward", "init_args": {"urll": URL}},
        "model.init_args.reward: reward 'RemoteReward': got an unexpected keyword argument 'urll'; it takes ['url',",
    ),
    "missing init arg": (
        {"class_path": "RemoteReward", "init_args": {"timeout": 5}},
        "model.init_args.reward: reward 'RemoteReward': missing a required argument: 'url'",
    ),
    "unimportable path": (
        {"class_path": "rewarddance.serving.NoSuch", "init_args": {}},
        "model.init_args.reward: Unknown reward 'rewarddance.serving.NoSuch': not registered and not importable",
    ),
    "a key beside class_path": (
        {"class_path": "RemoteReward", "init_args": {"url": URL}, "weight": 2},
        "model.init_args.reward: a reward with class_path takes init_args (a mapping) and nothing else",
    ),
    "a component's class_path": (
        {"class_path": "CombinedReward", "init_args": {"components": [{"reward": {"class_path": "RemotReward"}}]}},
        "model.init_args.reward: combined reward, component 0: Unknown reward 'RemotReward'",
    ),
    "a value the class refuses": (
        {"class_path": "RemoteReward", "init_args": {"url": URL, "top_k": 0}},
        "model.init_args.reward: remote reward: top_k must be in [1, best_of_n=16], got 0",
    ),
}


@pytest.mark.parametrize("case", _tiered(REFUSALS, SLOW_REFUSALS))
def test_a_wrong_reward_is_one_line_naming_the_field(case: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    reward, message = REFUSALS[case]
    with pytest.raises(SystemExit) as exit_info:
        main([*_rl(tmp_path), "--config", _with_reward(tmp_path, reward)])
    assert exit_info.value.code == 1  # rewarddance's refusal, before the generator loads, not the parser's dump
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.splitlines()) <= 3, err


def test_a_grpo_step_scores_with_the_served_reward_given_as_class_path(
    servers: Any, models: Any, tmp_path: Path
) -> None:
    """The issue's exact form, in a config file, against a live ``python -m rewarddance serve``."""
    reward = {"class_path": "RemoteReward", "init_args": {"url": servers["pointwise"].url, "timeout": 60.0}}
    cli = main([*_rl(tmp_path), "--config", _with_reward(tmp_path, reward)])
    assert cli.trainer.global_step == 1
    served = cli.model.reward
    assert isinstance(served, RemoteReward) and served.pairwise is False
    metrics = cli.trainer.callback_metrics
    assert served.requests >= 1 and float(metrics["reward/remote/requests"]) == served.requests
    assert float(metrics["reward/remote/retries"]) == 0
    # P(yes) of the served pointwise model: a probability, from the server (no in-process model was built)
    assert 0.0 < float(metrics["train/reward"]) < 1.0
    # the task got the equivalent kind mapping; the checkpoint's hyperparameters keep the config as written
    assert cli.model.reward_spec == {"kind": "RemoteReward", **reward["init_args"]}
    assert cli.model.hparams["reward"] == reward
    assert isinstance(build_reward(cli.model.hparams["reward"]), RemoteReward)
