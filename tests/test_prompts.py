"""The plug-in seams of prompts and evaluation: generated prompt sources and evaluators come from registries."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from PIL import Image

from rewarddance.callbacks import evaluation
from rewarddance.callbacks.evaluation import EVALUATORS, GENEVAL, Verdict, geneval_report
from rewarddance.data import prompts
from rewarddance.data.prompts import GeneratedPromptSource, load_prompts, source_forms
from rewarddance.errors import UsageError
from rewarddance.registry import Registry, load_plugins


def _counting(per_tag: int, *, split: str, seed: int, tags: tuple[str, ...]) -> list[dict[str, Any]]:
    return [
        {"tag": tag, "prompt": f"{split} {tag} {seed} {i}", "include": [{"class": tag}]}
        for tag in tags
        for i in range(per_tag)
    ]


@pytest.fixture
def toy_sources(monkeypatch: pytest.MonkeyPatch) -> Registry[GeneratedPromptSource]:
    load_plugins()  # first: a plug-in loaded while the toy registry stands in would register into it
    registry: Registry[GeneratedPromptSource] = Registry("prompt source")
    registry.register("toy", GeneratedPromptSource("toy", "toy", ("a", "b"), ("x", "y"), _counting))
    monkeypatch.setattr(prompts, "PROMPT_SOURCES", registry)
    return registry


def test_a_registered_source_generates_its_prompts(toy_sources):
    items = load_prompts("toy:b", per_tag=2, seed=3, tags=["y"])
    assert [i["prompt"] for i in items] == ["b y 3 0", "b y 3 1"]
    assert all(i["metadata"]["tag"] == "y" for i in items)
    assert len(load_prompts("toy:a", per_tag=1)) == 2  # every tag of the source when none is asked for
    assert prompts.is_generated_source("toy:a") and not prompts.is_generated_source("other:a")


def test_a_source_refuses_unknown_splits_and_tags_naming_the_option(toy_sources):
    with pytest.raises(
        UsageError, match=r"^train: unknown toy split 'c' in 'toy:c'; .* toy:<split> with a split of \['a', 'b'\]"
    ):
        prompts.check_generated_source("toy:c", option="train")
    with pytest.raises(
        UsageError, match=r"^tags \(data.init_args.tags\): \['z'\] are not tags of 'toy:a'; choose from \['x', 'y'\]"
    ):
        prompts.PromptDataModule(train="toy:a", tags=["z"], val=None)  # refused in the constructor: nothing loads
    assert "toy:<split> with a split of ['a', 'b']" in source_forms()


def test_the_shapes_plugin_registers_its_sources_and_evaluator():
    # Through the rewarddance.plugins entry point: the generic modules import nothing of rewarddance.shapes.
    assert {"shapes", "shapes-video", "shapes-i2v"} <= set(prompts.PROMPT_SOURCES)
    assert (
        "shapes:<split> / shapes-i2v:<split> / shapes-video:<split> with a split of ['test-id', 'test-ood', 'train', 'val']"
        in source_forms()
    )
    assert EVALUATORS[GENEVAL].parts == ("colors", "count", "shape", "position", "mean")


class _HalfRight:
    """Right on colour prompts, wrong on the others."""

    parts = ("mean",)
    video_parts = ("mean",)

    def judge(self, image: Any, metadata: Any) -> Verdict:
        right = metadata["tag"] == "colors"
        return Verdict(right, {"mean": 1.0 if right else 0.5, "overall": float(right)})

    def judge_video(self, frames: Any, metadata: Any) -> Verdict:
        return self.judge(frames[0], metadata)


def test_geneval_report_averages_tags_with_any_evaluator():
    images = [Image.new("RGB", (8, 8))] * 3
    metadata = [{"tag": "colors"}, {"tag": "counting"}, {"tag": "counting"}]
    report = geneval_report(images, metadata, _HalfRight())
    assert report["geneval"] == 0.5 and report["correct"] == pytest.approx(1 / 3)  # tags weigh equally
    assert report["parts/mean"] == pytest.approx(2 / 3) and "parts/overall" not in report  # the evaluator's parts
    assert evaluation.has_geneval_metadata({"include": [{"class": "circle"}]})
    assert not evaluation.has_geneval_metadata({"tag": "colors"}) and not evaluation.has_geneval_metadata(None)
    with pytest.raises(ValueError, match="2 images but 3"):
        geneval_report(images[:2], metadata, _HalfRight())
    assert np.isnan(evaluation.geneval_summary([], [])["overall"])
