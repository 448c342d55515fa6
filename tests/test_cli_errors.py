"""Bad inputs through the real command line: a short message naming the culprit, an exit code, no traceback.

Every case runs ``main([...])`` in-process, as ``python -m rewarddance`` does, and checks that it
ends in ``SystemExit`` with a non-zero code (1 for errors rewarddance finds, 2 for jsonargparse's
usage errors), that the output names the culprit (the file, name, field or option), that no
traceback is printed, and, for commands that write, that nothing was left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from PIL import Image

from rewarddance.cli import main
from rewarddance.errors import describe
from rewarddance.shapes import build_split
from rewarddance.tasks import GenerativeRewardTask
from tests.data import importer_fixtures as fx
from tests.data.streamkit import good_record, with_meta, write_records

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
GENERATOR = ROOT / "data" / "generators" / "shapes-t2i"


@dataclass
class Case:
    """One bad command line: ``args(env)``, the text the output must contain, and paths that must not exist."""

    args: Callable[[Any], list[str]]
    culprit: Callable[[Any], str]
    code: int = 1
    absent: Callable[[Any], list[Path]] = field(default=lambda e: [])


class Payload:
    """Unpickling this would call ``print``: an object outside torch's allow-list."""

    def __reduce__(self) -> tuple[Any, ...]:
        return print, ("unpickled",)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("cli_errors")
    e = SimpleNamespace(root=root)
    task = GenerativeRewardTask(paradigm="pointwise")
    task.configure_model()
    e.model = task.export_to(root / "model")
    e.image = root / "red.png"
    Image.new("RGB", (64, 64), "red").save(e.image)
    (root / "not-an-image.png").write_text("these bytes are text, not a PNG")
    (root / "empty").mkdir()
    e.shards = root / "shards"
    build_split(e.shards, "test-id", samples=4, seed=0, progress=False)

    # A model folder whose rewarddance_reward.json is garbage, and one whose transformers config.json is.
    for name, file in (("bad-reward-json", "rewarddance_reward.json"), ("bad-config-json", "config.json")):
        folder = root / name
        folder.mkdir()
        for entry in Path(e.model).iterdir():
            if entry.is_file():
                (folder / entry.name).write_bytes(entry.read_bytes())
        (folder / file).write_text("{this is not json")

    # Checkpoints: a real one cut in half, random bytes, an empty file, an unsafe pickle, a folder.
    ckpt = root / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(4096)}, "global_step": 3}, ckpt)
    data = ckpt.read_bytes()
    (root / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (root / "garbage.ckpt").write_bytes(os.urandom(4096))
    (root / "empty.ckpt").write_bytes(b"")
    torch.save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": {"x": Payload()}}, root / "unsafe.ckpt")
    (root / "ckpt-folder").mkdir()

    # Shards: one sample with a bad label; a shard cut in half.
    write_records(root / "bad-sample", [[good_record("ok-0", 0), with_meta(good_record("bad-1", 1), label="sideways")]])
    (root / "cut").mkdir()
    tar = next(e.shards.glob("*.tar"))
    (root / "cut" / tar.name).write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])

    # Image folders for `score --input`: a metadata.jsonl with a broken line, one with a row lacking its prompt.
    for name, rows in (
        ("bad-line", ['{"file_name": "red.png", "prompt": "a red square"}', '{"file_name": "red.png", "prompt"']),
        ("no-prompt", ['{"file_name": "red.png", "prompt": "a red square"}', '{"file_name": "red.png"}']),
    ):
        folder = root / name
        folder.mkdir()
        Image.new("RGB", (64, 64), "red").save(folder / "red.png")
        (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    # A generator folder with its model_index.json but without its components' weights.
    (root / "bare-generator").mkdir()
    (root / "bare-generator" / "model_index.json").write_bytes((GENERATOR / "model_index.json").read_bytes())
    (root / "prompts.jsonl").write_text('{"prompt": "a red square"}\n[1, 2]\n')
    (root / "broken.yaml").write_text("trainer: [unclosed\n")
    (root / "a-file").write_text("x")
    e.pickapic = fx.make_pickapic(root / "pickapic").input  # its row 4 has an undecodable image

    # Shard folders whose manifest.json is of another schema_version, not JSON, or lists no shards.
    for name, edit in (
        ("v99", lambda m: {**m, "schema_version": 99}),
        ("bad-manifest", None),
        ("no-shards-listed", lambda m: {**m, "total": 0, "shards": []}),
    ):
        folder = root / name
        folder.mkdir()
        for entry in e.shards.iterdir():
            (folder / entry.name).write_bytes(entry.read_bytes())
        manifest = folder / "manifest.json"
        manifest.write_text(json.dumps(edit(json.loads(manifest.read_text()))) if edit else "{not json")
    # GenEval prompt files: one with a line lacking its prompt, one of a single "colors" prompt.
    (root / "no-prompt.jsonl").write_text('{"tag": "colors", "prompt": "a red circle"}\n{"tag": "colors"}\n')
    (root / "colors.jsonl").write_text('{"tag": "colors", "prompt": "a red circle", "include": []}\n')
    return e


def _score(e: Any, *extra: str) -> list[str]:
    return ["score", "--model", str(e.model), *extra]


def _fit(e: Any, *extra: str) -> list[str]:
    """A quickstart fit on the tiny test shards, no logger or checkpoints, under the module's folder."""
    return [
        "fit", "--config", QUICKSTART, "--data.init_args.train", str(e.shards), "--data.init_args.val", str(e.shards),
        "--data.init_args.test", "null", "--data.init_args.num_workers", "0", "--test_after_fit", "false",
        "--trainer.max_steps", "1", "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
        "--trainer.default_root_dir", str(e.root / "runs"), "--model.init_args.export_dir", str(e.root / "export"),
        *extra,
    ]  # fmt: skip


def _rl(e: Any, *extra: str) -> list[str]:
    """The GRPO recipe on the bundled generator with the toy reward, small and without logger or checkpoints."""
    return [
        "fit", "--config", str(ROOT / "configs" / "rl" / "shapes_grpo.yaml"), "--trainer.max_steps", "1",
        "--trainer.logger", "false", "--trainer.callbacks", "[]", "--trainer.default_root_dir", str(e.root / "rl"),
        "--model.init_args.reward", "shapes-color", "--model.init_args.height", "32", "--model.init_args.width", "32",
        "--model.init_args.num_inference_steps", "4", "--data.init_args.val_per_tag", "1", *extra,
    ]  # fmt: skip


def _export(e: Any, checkpoint: str) -> list[str]:
    return ["export", "--checkpoint", str(e.root / checkpoint), "--out", str(e.root / f"export-{checkpoint}")]


CASES: dict[str, Case] = {
    # configs and the fit command
    "missing config file": Case(
        lambda e: ["fit", "--config", str(e.root / "nope.yaml")], lambda e: str(e.root / "nope.yaml"), code=2
    ),
    "config file with broken YAML": Case(
        lambda e: ["fit", "--config", str(e.root / "broken.yaml")],
        lambda e: "broken.yaml, line 2, column 1: not valid YAML",
    ),
    "bad config value": Case(
        lambda e: ["fit", "--config", QUICKSTART, "--trainer.max_steps", "many"], lambda e: "trainer.max_steps", code=2
    ),
    "unknown option": Case(
        lambda e: ["fit", "--config", QUICKSTART, "--no_such_option", "1"], lambda e: "no_such_option", code=2
    ),
    "value a task's constructor refuses": Case(
        lambda e: _fit(e, "--model.init_args.examples", "-1"), lambda e: "examples must be >= 0, got -1"
    ),
    "unknown backbone in fit": Case(
        lambda e: _fit(e, "--model.init_args.backbone", "nosuch-vlm"), lambda e: "unknown backbone 'nosuch-vlm'"
    ),
    "backbone folder that does not exist": Case(
        lambda e: _fit(e, "--model.init_args.backbone", str(e.root / "no-backbone")), lambda e: "no-backbone"
    ),
    "missing training shards": Case(
        lambda e: _fit(e, "--data.init_args.train", str(e.root / "no-shards")), lambda e: "no-shards"
    ),
    "training shard with a bad sample": Case(
        lambda e: _fit(e, "--data.init_args.train", str(e.root / "bad-sample")),
        lambda e: "sample 'bad-1', field 'label'",
    ),
    "fit --ckpt_path truncated": Case(
        lambda e: _fit(e, "--ckpt_path", str(e.root / "truncated.ckpt")), lambda e: "truncated.ckpt' is corrupt"
    ),
    # bad values of the data module, refused before any model loads
    "fit data batch_size 0": Case(
        lambda e: _fit(e, "--data.init_args.batch_size", "0"),
        lambda e: "batch_size (data.init_args.batch_size) must be at least 1, got 0",
    ),
    "fit data num_workers -1": Case(
        lambda e: _fit(e, "--data.init_args.num_workers", "-1"),
        lambda e: "num_workers (data.init_args.num_workers) must be at least 0, got -1",
    ),
    "fit resampled without epoch_length": Case(
        lambda e: _fit(e, "--data.init_args.resampled", "true"),
        lambda e: "resampled (data.init_args.resampled): true needs epoch_length (data.init_args.epoch_length)",
    ),
    "empty training shard folder": Case(
        lambda e: _fit(e, "--data.init_args.train", str(e.root / "empty")),
        lambda e: f"{e.root / 'empty'} has neither manifest.json nor .tar shards",
    ),
    "shards of schema_version 99": Case(
        lambda e: _fit(e, "--data.init_args.train", str(e.root / "v99")),
        lambda e: f"{e.root / 'v99' / 'manifest.json'}, field 'schema_version': 99, but this rewarddance reads",
    ),
    "manifest.json that is not JSON": Case(
        lambda e: _fit(e, "--data.init_args.val", str(e.root / "bad-manifest")),
        lambda e: f"{e.root / 'bad-manifest' / 'manifest.json'}, line 1: not valid JSON",
    ),
    "manifest.json listing no shards": Case(
        lambda e: _fit(e, "--data.init_args.train", str(e.root / "no-shards-listed")),
        lambda e: f"no shards in {str(e.root / 'no-shards-listed')!r}",
    ),
    # bad values met while the model is configured
    "backbone size on a folder": Case(
        lambda e: _fit(e, "--model.init_args.backbone_kwargs", "{size: huge}"),
        lambda e: "size='huge' only applies to family or tiny names",
    ),
    "unknown backbone dtype": Case(
        lambda e: _fit(e, "--model.init_args.backbone_kwargs", "{dtype: float33}"), lambda e: "dtype 'float33'"
    ),
    "Trainer options that contradict each other": Case(
        lambda e: _fit(e, "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint"),
        lambda e: "configured with `enable_checkpointing=False` but found `ModelCheckpoint`",
    ),
    # RL: prompt sources and rewards
    "RL unknown shapes split": Case(
        lambda e: _rl(e, "--data.init_args.train", "shapes:holdout"),
        lambda e: "train (data.init_args.train): unknown shapes split 'holdout'",
    ),
    "RL unknown validation split": Case(
        lambda e: _rl(e, "--data.init_args.val", "shapes:nope"),
        lambda e: "val (data.init_args.val): unknown shapes split 'nope'",
    ),
    "RL prompt source that does not exist": Case(
        lambda e: _rl(e, "--data.init_args.train", "nosuch-prompts"),
        lambda e: "train (data.init_args.train) 'nosuch-prompts': shard 'nosuch-prompts' does not exist",
    ),
    "RL prompt batch_size 0": Case(
        lambda e: _rl(e, "--data.init_args.batch_size", "0"),
        lambda e: "batch_size (data.init_args.batch_size) must be at least 1, got 0",
    ),
    "RL unknown tag": Case(
        lambda e: _rl(e, "--data.init_args.tags", "[nosuch_tag]"),
        lambda e: "tags (data.init_args.tags): ['nosuch_tag'] are not tags of 'shapes:train'",
    ),
    "RL tags that leave no prompt": Case(
        lambda e: _rl(e, "--data.init_args.train", str(e.root / "colors.jsonl"), "--data.init_args.tags", "[counting]"),
        lambda e: f"no training prompts in {str(e.root / 'colors.jsonl')!r} with tags ['counting']",
    ),
    "RL prompt file line without its prompt": Case(
        lambda e: _rl(e, "--data.init_args.train", str(e.root / "no-prompt.jsonl")),
        lambda e: "no-prompt.jsonl, line 2, field 'prompt'",
    ),
    "RL unknown reward": Case(
        lambda e: _rl(e, "--model.init_args.reward", "nosuch-reward"), lambda e: "Unknown reward 'nosuch-reward'"
    ),
    "RL reward with an unknown argument": Case(
        lambda e: _rl(e, "--model.init_args.reward", "{kind: shapes-color, sigmaa: 1}"),
        lambda e: "reward 'shapes-color': got an unexpected keyword argument 'sigmaa'; it takes ['sigma', 'coverage']",
    ),
    "RL reward best_of_n 1": Case(
        lambda e: _rl(e, "--model.init_args.reward", "{kind: reward_model, path: x, best_of_n: 1}"),
        lambda e: "best_of_n must be in [2, 64]",
    ),
    "RL refl with a reward that is not differentiable": Case(
        lambda e: _rl(e, "--model.init_args.algorithm", "refl", "--model.init_args.reward", "shapes-oracle"),
        lambda e: "model.init_args.algorithm: refl backpropagates the reward",
    ),
    "RL refl anchor loss with a reward that chooses no references": Case(
        lambda e: _rl(e, "--model.init_args.algorithm", "refl", "--model.init_args.refl", "{anchor_weight: 1.0}"),
        lambda e: "model.init_args.refl.anchor_weight trains on the best-of-N references",
    ),
    "RL with the Trainer's gradient clipping (the task clips: max_grad_norm)": Case(
        lambda e: _rl(e, "--trainer.gradient_clip_val", "0.5"),
        lambda e: "trainer.gradient_clip_val: 0.5: the RL task clips gradients itself",
    ),
    # export
    "corrupt (random bytes) checkpoint": Case(
        lambda e: _export(e, "garbage.ckpt"), lambda e: "garbage.ckpt' is corrupt"
    ),
    "truncated checkpoint": Case(lambda e: _export(e, "truncated.ckpt"), lambda e: "truncated.ckpt' is corrupt"),
    "empty checkpoint": Case(lambda e: _export(e, "empty.ckpt"), lambda e: "the file is empty"),
    "unsafe checkpoint": Case(lambda e: _export(e, "unsafe.ckpt"), lambda e: "unsafe.ckpt"),
    "missing checkpoint": Case(lambda e: _export(e, "nope.ckpt"), lambda e: "nope.ckpt"),
    "checkpoint folder without meta.pt": Case(lambda e: _export(e, "ckpt-folder"), lambda e: "ckpt-folder"),
    "checkpoint without task record": Case(
        lambda e: _export(e, "good.ckpt"), lambda e: "--run_config", absent=lambda e: [e.root / "export-good.ckpt"]
    ),
    # score
    "missing --model folder": Case(
        lambda e: ["score", "--model", str(e.root / "no-model"), "--prompt", "p", "--image", str(e.image)],
        lambda e: "no-model",
    ),
    "model folder with garbage rewarddance_reward.json": Case(
        lambda e: ["score", "--model", str(e.root / "bad-reward-json"), "--prompt", "p", "--image", str(e.image)],
        lambda e: "rewarddance_reward.json, line 1",
    ),
    "model folder with garbage config.json": Case(
        lambda e: ["score", "--model", str(e.root / "bad-config-json"), "--prompt", "p", "--image", str(e.image)],
        lambda e: "config.json",
    ),
    "bad image file": Case(
        lambda e: _score(e, "--prompt", "p", "--image", str(e.root / "not-an-image.png")), lambda e: "not-an-image.png"
    ),
    "missing image": Case(lambda e: _score(e, "--prompt", "p", "--image", str(e.root / "no.png")), lambda e: "no.png"),
    "image folder without frames": Case(
        lambda e: _score(e, "--prompt", "p", "--image", str(e.root / "empty")), lambda e: "without image frames"
    ),
    "score without --prompt": Case(lambda e: _score(e, "--image", str(e.image)), lambda e: "--prompt"),
    "score --batch_size 0": Case(
        lambda e: _score(e, "--input", str(e.shards), "--out", str(e.root / "s0.jsonl"), "--batch_size", "0"),
        lambda e: "--batch_size",
        absent=lambda e: [e.root / "s0.jsonl"],
    ),
    "score --input without --out": Case(lambda e: _score(e, "--input", str(e.shards)), lambda e: "--out"),
    "score --out is a folder": Case(
        lambda e: _score(e, "--input", str(e.shards), "--out", str(e.root / "empty")), lambda e: "is a folder"
    ),
    "shard with a bad sample": Case(
        lambda e: _score(e, "--input", str(e.root / "bad-sample"), "--out", str(e.root / "s1.jsonl")),
        lambda e: "sample 'bad-1', field 'label'",
        absent=lambda e: [e.root / "s1.jsonl"],
    ),
    "truncated shard": Case(
        lambda e: _score(e, "--input", str(e.root / "cut"), "--out", str(e.root / "s2.jsonl")),
        lambda e: str(e.root / "cut"),
        absent=lambda e: [e.root / "s2.jsonl"],
    ),
    "bad JSONL input line": Case(
        lambda e: _score(e, "--input", str(e.root / "bad-line"), "--out", str(e.root / "s3.jsonl")),
        lambda e: "metadata.jsonl, line 2: not valid JSON",
        absent=lambda e: [e.root / "s3.jsonl"],
    ),
    "JSONL row without its prompt": Case(
        lambda e: _score(e, "--input", str(e.root / "no-prompt"), "--out", str(e.root / "sub" / "s4.jsonl")),
        lambda e: "line 2, field 'prompt'",
        absent=lambda e: [e.root / "sub"],  # not even the parent folder it created
    ),
    "unknown convention": Case(
        lambda e: _score(e, "--input", str(e.shards), "--out", str(e.root / "s5.jsonl"), "--convention", "best"),
        lambda e: "convention",
        code=2,
    ),
    # generate / evaluate: refused before any model loads, no output folder
    "generate --n 0": Case(
        lambda e: ["generate", "--generator", "tiny-sd3", "--prompt", "p", "--n", "0", "--out", str(e.root / "g0")],
        lambda e: "--n must be at least 1",
        absent=lambda e: [e.root / "g0"],
    ),
    "generate best_of_n without --reward": Case(
        lambda e: [
            "generate",
            "--generator",
            "tiny-sd3",
            "--prompt",
            "p",
            "--mode",
            "best_of_n",
            "--out",
            str(e.root / "g1"),
        ],
        lambda e: "--reward",
        absent=lambda e: [e.root / "g1"],
    ),
    "generate with --prompt and --prompts": Case(
        lambda e: [
            "generate",
            "--generator",
            "tiny-sd3",
            "--prompt",
            "p",
            "--prompts",
            "shapes:test-id",
            "--out",
            str(e.root / "g2"),
        ],
        lambda e: "exactly one of --prompt",
        absent=lambda e: [e.root / "g2"],
    ),
    "unknown generator": Case(
        lambda e: ["generate", "--generator", "nosuch-gen", "--prompt", "p", "--out", str(e.root / "g3")],
        lambda e: "Unknown generator 'nosuch-gen'",
        absent=lambda e: [e.root / "g3"],
    ),
    "generator folder without its weights": Case(
        lambda e: [
            "generate",
            "--generator",
            str(e.root / "bare-generator"),
            "--prompt",
            "p",
            "--out",
            str(e.root / "g5"),
        ],
        lambda e: "cannot load the generator in folder",
        absent=lambda e: [e.root / "g5"],
    ),
    "prompt file with a bad line": Case(
        lambda e: [
            "generate",
            "--generator",
            "tiny-sd3",
            "--prompts",
            str(e.root / "prompts.jsonl"),
            "--out",
            str(e.root / "g4"),
        ],
        lambda e: "prompts.jsonl, line 2",
        absent=lambda e: [e.root / "g4"],
    ),
    "generate with an unknown reward": Case(
        lambda e: [
            "generate",
            "--generator",
            "tiny-sd3",
            "--prompt",
            "p",
            "--mode",
            "best_of_n",
            "--reward",
            "nosuch-reward",
            "--steps",
            "2",
            "--size",
            "32",
            "--out",
            str(e.root / "g6"),
        ],
        lambda e: "Unknown reward 'nosuch-reward'",
        absent=lambda e: [e.root / "g6"],
    ),
    "evaluate --samples_per_prompt 0": Case(
        lambda e: ["evaluate", "--generator", "tiny-sd3", "--samples_per_prompt", "0"], lambda e: "--samples_per_prompt"
    ),
    # data
    "unknown data import format": Case(
        lambda e: [
            "data",
            "import",
            "--format",
            "nosuch-format",
            "--input",
            str(e.pickapic),
            "--out",
            str(e.root / "i0"),
        ],
        lambda e: "nosuch-format",
        code=2,
    ),
    "missing import input": Case(
        lambda e: [
            "data",
            "import",
            "--format",
            "pickapic",
            "--input",
            str(e.root / "no-input"),
            "--out",
            str(e.root / "i1"),
        ],
        lambda e: "no-input",
        absent=lambda e: [e.root / "i1"],
    ),
    "import of a broken row": Case(
        lambda e: ["data", "import", "--format", "pickapic", "--input", str(e.pickapic), "--out", str(e.root / "i2")],
        lambda e: "row 4 (ranking_id=1004), field 'jpg_1'",
        absent=lambda e: [e.root / "i2"],
    ),
    "data shapes --samples 0": Case(
        lambda e: ["data", "shapes", "--out", str(e.root / "d0"), "--samples", "0"],
        lambda e: "--samples",
        absent=lambda e: [e.root / "d0"],
    ),
    "data shapes unknown split": Case(
        lambda e: ["data", "shapes", "--out", str(e.root / "d1"), "--split", "holdout"], lambda e: "holdout", code=2
    ),
    "data shapes --out is a file": Case(
        lambda e: ["data", "shapes", "--out", str(e.root / "a-file"), "--samples", "2"], lambda e: "a-file"
    ),
    "data inspect of a missing folder": Case(
        lambda e: ["data", "inspect", str(e.root / "no-shards")], lambda e: "no-shards"
    ),
    "data inspect of a folder without shards": Case(
        lambda e: ["data", "inspect", str(e.root / "empty")], lambda e: "neither manifest.json"
    ),
    "plan with an unknown backbone": Case(
        lambda e: ["plan", "--backbone", "nosuch-vlm"], lambda e: "backbone 'nosuch-vlm'"
    ),
    "unknown command": Case(lambda e: ["trian"], lambda e: "trian", code=2),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_reported_without_a_traceback(name: str, env: Any, capsys: pytest.CaptureFixture[str]) -> None:
    case = CASES[name]
    with pytest.raises(SystemExit) as exit_info:
        main(case.args(env))
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert exit_info.value.code == case.code, output[-2000:]
    assert case.culprit(env) in output, output[-2000:]
    assert "Traceback" not in output
    for path in case.absent(env):
        assert not path.exists(), f"{path} left behind"
    if case.code == 1:  # rewarddance's own report: one message and the --debug hint, at the end
        assert captured.err.rstrip().endswith("REWARDDANCE_DEBUG=1 for the traceback)")


def test_corrupt_checkpoint_is_not_called_unsafe(env: Any, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("garbage.ckpt", "truncated.ckpt", "empty.ckpt"):
        with pytest.raises(SystemExit):
            main(_export(env, name))
        err = capsys.readouterr().err
        assert "corrupt or truncated" in err and "previous checkpoint" in err
        assert "weights_only" not in err and "arbitrary code" not in err  # no advice to turn the safety off
    with pytest.raises(SystemExit):
        main(_export(env, "unsafe.ckpt"))
    err = capsys.readouterr().err
    assert "arbitrary code" in err and "GLOBAL print" in err and "corrupt" not in err


def test_unknown_backbone_lists_the_registered_names(env: Any, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(_fit(env, "--model.init_args.backbone", "nosuch-vlm"))
    err = capsys.readouterr().err
    assert "huggingface.co" not in err
    for name in ("qwen2.5-vl", "tiny-internvl", "shapes-vlm-tiny", "hub id", "folder"):
        assert name in err


def test_a_prompt_over_the_token_limit_is_reported(env: Any, capsys: pytest.CaptureFixture[str]) -> None:
    reward = main(_score(env, "--prompt", "a red square " * 8000, "--image", str(env.image))).result
    err = capsys.readouterr().err
    assert 0.0 < reward < 1.0
    assert f"the prompt of --image {str(env.image)!r} does not fit the model's limit of 4096 tokens" in err
    main(_score(env, "--prompt", "a red square", "--image", str(env.image)))
    assert "does not fit" not in capsys.readouterr().err


def test_debug_shows_the_traceback(env: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    args = _score(env, "--prompt", "p", "--image", str(env.root / "no.png"))
    with pytest.raises(FileNotFoundError, match=r"no\.png"):
        main(["--debug", *args])  # --debug anywhere; the parser never sees it
    with pytest.raises(FileNotFoundError, match=r"no\.png"):
        main([*args, "--debug"])
    monkeypatch.setenv("REWARDDANCE_DEBUG", "1")
    with pytest.raises(FileNotFoundError, match=r"no\.png"):
        main(args)
    monkeypatch.setenv("REWARDDANCE_DEBUG", "0")
    with pytest.raises(SystemExit):
        main(args)


def test_a_bug_keeps_its_traceback(env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    score_module = sys.modules["rewarddance.commands.score"]  # the package re-exports the function as `score`

    def broken(path: Any) -> Any:
        raise ZeroDivisionError("a bug, not a user error")

    monkeypatch.setattr(score_module, "load_visual", broken)
    with pytest.raises(ZeroDivisionError):
        main(_score(env, "--prompt", "p", "--image", str(env.image)))


def test_resuming_on_other_data_settings_is_refused_in_two_lines(env: Any, capsys: pytest.CaptureFixture[str]) -> None:
    # A checkpoint saved after batch 1 of a 4-batch epoch, resumed with another batch size: the data position
    # cannot be continued exactly (rewarddance.data.stream.ResumeError), which is the user's to fix.
    folder = env.root / "resume-ckpt"
    main(
        _fit(
            env,
            "--data.init_args.batch_size",
            "1",
            "--trainer.enable_checkpointing",
            "true",
            "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            f"--trainer.callbacks.dirpath={folder}",
            "--trainer.callbacks.every_n_train_steps=1",
            "--trainer.callbacks.save_last=true",
        )
    )
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(
            _fit(
                env,
                "--data.init_args.batch_size",
                "2",
                "--trainer.max_steps",
                "2",
                "--ckpt_path",
                str(folder / "last.ckpt"),
            )
        )
    err = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert "train: resuming at batch 1 of epoch 0, but the data position was saved under other settings" in err
    assert "batch_size was 1, is 2" in err and "Traceback" not in err
    assert err.rstrip().endswith("REWARDDANCE_DEBUG=1 for the traceback)")


def test_console_script_and_python_m_exit_0_or_1_with_two_lines(env: Any) -> None:
    # Real processes (~15 s each here); --debug and REWARDDANCE_DEBUG are tested in-process above.
    # The console script (installed by pip) runs sys.exit(entry point): it must get 0, not the CLI object.
    script = Path(sys.executable).with_name("rewarddance")
    if not script.exists():
        pytest.skip(f"no console script next to {sys.executable}: the package is not pip-installed here")
    ok = subprocess.run([str(script), "data", "inspect", str(env.shards)], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "inspected 4 samples" in ok.stdout and "RewardDanceCLI object" not in ok.stdout + ok.stderr
    args = [sys.executable, "-m", "rewarddance", "data", "inspect", str(env.root / "no-shards")]
    plain = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    assert plain.returncode == 1
    lines = [line for line in plain.stderr.splitlines() if not line.startswith("[transformers]")]
    assert lines == [
        f"rewarddance: error: shard {str(env.root / 'no-shards')!r} does not exist",
        "(add --debug or set REWARDDANCE_DEBUG=1 for the traceback)",
    ]


def test_cases_are_distinct() -> None:
    assert len(CASES) >= 30
    assert len({json.dumps(c.args(SimpleNamespace(**_dummy_env()))) for c in CASES.values()}) == len(CASES)


def _dummy_env() -> dict[str, Any]:
    root = Path("/nonexistent")
    return {"root": root, "model": root / "m", "image": root / "i.png", "shards": root / "s", "pickapic": root / "p"}


class _MissingFile(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> Any:
        raise FileNotFoundError("shard 'x.tar' does not exist")


def test_an_error_from_a_dataloader_worker_is_reported_without_the_worker_traceback() -> None:
    with pytest.raises(FileNotFoundError) as info:
        next(iter(torch.utils.data.DataLoader(_MissingFile(), num_workers=1)))
    assert "Original Traceback" in str(info.value)  # torch puts the worker's traceback into the message
    assert describe(info.value).splitlines()[0] == "rewarddance: error: FileNotFoundError: shard 'x.tar' does not exist"
