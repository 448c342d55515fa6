"""Image-to-video RL through the real CLI: the tiny Wan I2V config trains (GRPO and ReFL) with each prompt's first
frame as its condition, and prompts without a condition image are refused by name."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from rewarddance.cli import main
from rewarddance.data.prompts import load_prompts
from rewarddance.shapes.video import judge_clip
from rewarddance.tasks import GeneratorRLTask

ROOT = Path(__file__).parents[2]
CONFIG = ROOT / "configs" / "rl" / "video_i2v_grpo_tiny.yaml"


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _fit(tmp_path: Path, *extra: str) -> GeneratorRLTask:
    cli = main(
        [
            "fit",
            "--config",
            str(CONFIG),
            "--trainer.max_steps=2",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--model.init_args.grpo.train_steps=1",
            "--model.init_args.refl.t_min=2",
            "--model.init_args.refl.t_max=3",
            "--model.init_args.refl.anchor_weight=0",
            "--model.init_args.export=false",
            "--data.init_args.per_tag=2",
            "--data.init_args.val_per_tag=1",
            *extra,
        ]
    )
    assert isinstance(cli.model, GeneratorRLTask)
    return cli.model


def test_i2v_prompts_carry_a_first_frame_that_satisfies_the_prompt() -> None:
    items = load_prompts("shapes-i2v:train", per_tag=2)
    assert {i["metadata"]["tag"] for i in items} == {"motion", "motion_two"}
    again = load_prompts("shapes-i2v:train", per_tag=2)
    assert [i["metadata"]["condition_image"] for i in items] == [i["metadata"]["condition_image"] for i in again]
    for item in items:
        header, payload = item["metadata"]["condition_image"].split(",", 1)
        assert header == "data:image/png;base64"
        frame = Image.open(io.BytesIO(base64.b64decode(payload)))
        # The frame shows the prompted objects (a still frame: no motion is judged from one frame).
        judged = judge_clip(
            [frame, frame],
            {
                **item["metadata"],
                "include": [{k: v for k, v in r.items() if k != "motion"} for r in item["metadata"]["include"]],
            },
        )
        assert judged.correct, (item["prompt"], judged.reason)


@pytest.mark.parametrize("algorithm", ["grpo", "refl"])
def test_cli_fit_trains_the_i2v_generator(tmp_path: Path, algorithm: str) -> None:
    task = _fit(tmp_path, f"--model.init_args.algorithm={algorithm}")
    assert task.trainer.global_step == 2
    assert task.history["eval"]["step"] == [0.0, 2.0]  # the eval prompts found their condition images too
    lora = {n: p for n, p in task.denoiser.named_parameters() if "lora_B" in n}
    assert lora and any(bool(p.detach().abs().sum() > 0) for p in lora.values())  # LoRA B starts at 0: updated
    assert all(torch.isfinite(torch.tensor(v)) for v in task.history["train"]["reward_mean"])


def test_prompts_without_condition_image_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):  # the CLI prints expected errors (UsageError) in one line and exits
        _fit(tmp_path, "--data.init_args.train=shapes-video:train", "--model.init_args.eval_every=0")
    assert "no 'condition_image'" in capsys.readouterr().err
