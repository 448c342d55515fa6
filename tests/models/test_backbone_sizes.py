"""The InternVL sizes of the paper: one table for the loader and the planner, every size built on the
meta device against its published parameter count, and remote code only when the user opts in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from jsonargparse import ArgumentParser
from PIL import Image
from transformers import AutoModelForImageTextToText, InternVLForConditionalGeneration
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from rewarddance.errors import UsageError
from rewarddance.models import BACKBONES, load_backbone
from rewarddance.models.backbones import checkpoint_for
from rewarddance.models.internvl_sizes import (
    INTERNVL_SIZES,
    PAPER_SIZE_LABELS,
    REMOTE_CODE_ARCHITECTURES,
    known_architectures,
)
from rewarddance.planning import KNOWN_CONFIGS, PAPER_SIZES, describe_backbone, paper_backbones
from rewarddance.tasks.reward.generative import GenerativeRewardTask

PUBLISHED_TOLERANCE = 0.02
"""Meta-device count vs published count: published figures are rounded (15.1 B) or file sizes in GB."""

# -- one table --------------------------------------------------------------------------------


def test_paper_sizes_are_registered_internvl_sizes() -> None:
    assert set(PAPER_SIZE_LABELS) == {"1B", "2B", "4B", "8B", "26B"}
    assert set(PAPER_SIZE_LABELS) <= set(BACKBONES["internvl"].hub_ids)
    assert dict(BACKBONES["internvl"].hub_ids) == {label: c.hub_id for label, c in INTERNVL_SIZES.items()}
    assert all(c.native for c in INTERNVL_SIZES.values())  # every size loads without remote code
    # 26B has no native checkpoint: the documented mapping to the nearest one.
    assert PAPER_SIZES["26B"] == "OpenGVLab/InternVL3-38B-hf"
    assert set(PAPER_SIZES.values()) <= set(KNOWN_CONFIGS)
    assert paper_backbones()["26B as published"] == ("OpenGVLab/InternVL2_5-26B", None)


def _family_sizes() -> list[tuple[str, str]]:
    return [(family, label) for family in sorted(BACKBONES) for label in BACKBONES[family].hub_ids]


@pytest.mark.parametrize(("family", "label"), _family_sizes())
def test_loader_and_planner_accept_the_same_sizes(family: str, label: str) -> None:
    """Offline (tests set HF_HUB_OFFLINE): the loader names the checkpoint it would download, the
    planner plans it (written config) or names the same checkpoint as missing offline."""
    hub_id = checkpoint_for(family, label)
    with pytest.raises(UsageError) as loader_error:
        load_backbone(family, size=label)
    assert repr(hub_id) in str(loader_error.value)
    if hub_id in KNOWN_CONFIGS:
        assert describe_backbone(family, label).name == hub_id
    else:
        with pytest.raises(UsageError, match="No offline config") as planner_error:
            describe_backbone(family, label)
        assert repr(hub_id) in str(planner_error.value)


@pytest.mark.parametrize("family", ["internvl", "qwen2.5-vl"])
def test_loader_and_planner_refuse_the_same_unknown_size(family: str) -> None:
    with pytest.raises(UsageError) as loader_error:
        load_backbone(family, size="3B" if family == "internvl" else "1B")
    with pytest.raises(UsageError) as planner_error:
        describe_backbone(family, "3B" if family == "internvl" else "1B")
    assert str(loader_error.value) == str(planner_error.value)
    assert "choose from" in str(loader_error.value)


# -- every written architecture on the meta device vs its published parameter count ------------


def _written() -> list[str]:
    return sorted(known_architectures())


@pytest.mark.parametrize("hub_id", _written())
def test_architecture_on_meta_device_matches_published_count(hub_id: str) -> None:
    entry = next(c for c in [*INTERNVL_SIZES.values(), *REMOTE_CODE_ARCHITECTURES.values()] if c.hub_id == hub_id)
    config_data = dict(known_architectures()[hub_id])
    config = CONFIG_MAPPING[config_data.pop("model_type")](**config_data)
    with torch.device("meta"):  # shapes only: a 38 B model in well under a second, no memory
        model = AutoModelForImageTextToText.from_config(config)
    assert type(model) is InternVLForConditionalGeneration
    params = list(model.parameters())
    assert all(p.is_meta for p in params)
    count = sum(p.numel() for p in params)
    assert entry.published_params is not None and entry.published_source
    assert count == pytest.approx(entry.published_params, rel=PUBLISHED_TOLERANCE), (
        f"{hub_id}: {count / 1e9:.3f} B on the meta device, published {entry.published_params / 1e9:.3f} B "
        f"({entry.published_source})"
    )
    assert describe_backbone(hub_id).params_total == count  # the planner counts the same model


def test_paper_26b_as_published_is_planned_but_maps_to_a_native_checkpoint_for_loading() -> None:
    arch = describe_backbone("OpenGVLab/InternVL2_5-26B")
    assert arch.params_total == 25_514_186_112  # the hub count of its transformers-format conversion
    assert arch.vision.hidden_size == 3200 and arch.text.vocab_size == 92553
    with pytest.raises(UsageError, match="trust_remote_code") as error:
        load_backbone("OpenGVLab/InternVL2_5-26B")  # refused before any download
    assert "sizes" in str(error.value) and "26B" in str(error.value)


# -- remote code: opt-in only ------------------------------------------------------------------

_REMOTE_CONFIG = """
import os
from pathlib import Path
from transformers import InternVLConfig

Path(os.environ["RD_REMOTE_MARKER"]).write_text("imported")  # proves when (and whether) this code ran


class RdRemoteConfig(InternVLConfig):
    model_type = "{model_type}"
"""

_REMOTE_MODEL = """
from transformers import InternVLForConditionalGeneration

from .configuration_rd_remote import RdRemoteConfig


class RdRemoteForConditionalGeneration(InternVLForConditionalGeneration):
    config_class = RdRemoteConfig
"""


def _remote_code_folder(tmp_path: Path, name: str, model_type: str) -> Path:
    """A tiny InternVL saved with save_pretrained, plus its own code in config.json's auto_map."""
    folder = tmp_path / name
    load_backbone("tiny-internvl").save_pretrained(folder)
    (folder / "configuration_rd_remote.py").write_text(_REMOTE_CONFIG.format(model_type=model_type))
    (folder / "modeling_rd_remote.py").write_text(_REMOTE_MODEL)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {
        "AutoConfig": "configuration_rd_remote.RdRemoteConfig",
        "AutoModelForImageTextToText": "modeling_rd_remote.RdRemoteForConditionalGeneration",
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture
def marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "remote_code_ran"
    monkeypatch.setenv("RD_REMOTE_MARKER", str(path))
    return path


def test_remote_code_is_refused_without_opt_in_and_runs_none_of_it(tmp_path: Path, marker: Path) -> None:
    folder = _remote_code_folder(tmp_path, "rd_unknown_type", "rd_remote_vlm")
    with pytest.raises(UsageError, match="trust_remote_code") as error:
        load_backbone(folder)
    message = str(error.value)
    assert "backbone_kwargs: {trust_remote_code: true}" in message and "rd_remote_vlm" in message
    assert not marker.exists()
    # Opted in, the code runs; an unregistered model_type is then the clear error.
    with pytest.raises(UsageError, match="registered families"):
        load_backbone(folder, trust_remote_code=True)
    assert marker.exists()


def test_trust_remote_code_reaches_from_pretrained_through_the_task(tmp_path: Path, marker: Path) -> None:
    # A native model_type with its own code in auto_map: transformers' class unless the user opts in.
    folder = _remote_code_folder(tmp_path, "rd_native_type", "internvl")
    native = load_backbone(folder)
    assert type(native.model) is InternVLForConditionalGeneration and not marker.exists()

    # As the command line passes it (`--model.backbone_kwargs '{trust_remote_code: true}'`).
    parser = ArgumentParser()
    parser.add_class_arguments(GenerativeRewardTask, "model")
    args = ["--model.backbone", str(folder), "--model.backbone_kwargs", "{trust_remote_code: true}"]
    task = parser.instantiate(parser.parse_args(args)).model
    task.configure_model()
    model = task.model
    assert type(model).__name__ == "RdRemoteForConditionalGeneration"
    assert type(model).__module__.startswith("transformers_modules")
    assert marker.exists()
    # The opted-in model scores like the native one (same weights, same class underneath).
    image = Image.new("RGB", (64, 64), (200, 40, 40))
    inputs = native.encode(["<image> is it red?"], [[image]])
    with torch.no_grad():
        assert torch.allclose(task.backbone.reward(inputs), native.reward(inputs), atol=1e-6)
    # Loading the remote class registered nothing globally: the native class is back without opt-in.
    assert type(load_backbone(folder).model) is InternVLForConditionalGeneration
