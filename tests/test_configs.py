"""Every shipped YAML parses through the real command line, and names its run command."""

from pathlib import Path

import pytest
import yaml

from rewarddance.cli import main

CONFIGS = Path(__file__).parents[1] / "configs"
YAMLS = sorted(CONFIGS.rglob("*.yaml"))
BORING = "lightning.pytorch.demos.boring_classes.BoringModel"


def _args(path: Path) -> list[str]:
    """Full configs go to --config; fragments to the option their folder is named after."""
    fragment = path.relative_to(CONFIGS).parts[0]
    if fragment == "data":
        return ["fit", "--model", BORING, "--data", str(path)]
    if fragment == "trainer":
        return ["fit", "--model", BORING, "--trainer", str(path)]
    return ["fit", "--config", str(path)]


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_parses_through_the_cli(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*_args(path), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"]


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_opens_with_its_command(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("#") and "python -m rewarddance" in path.read_text().split("\n\n")[0]


def test_data_fragment_points_at_bundled_shards():
    config = yaml.safe_load((CONFIGS / "data" / "shapes.yaml").read_text())["init_args"]
    root = CONFIGS.parent
    for split in [config["train"], config["val"], *config["test"].values()]:
        assert (root / split / "manifest.json").exists(), split


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("shapes_cot.yaml", [], {"rationale_format": "judgment_first", "examples": 0}),
        (
            "shapes_cot.yaml",
            ["--model.init_args.rationale_format", "reasons_first"],
            {"rationale_format": "reasons_first"},
        ),
        ("shapes_icl.yaml", [], {"examples": 2, "example_retrieval": "similar", "example_pool": 256}),
        ("shapes_icl.yaml", ["--model.init_args.example_retrieval", "tag"], {"example_retrieval": "tag"}),
    ],
)
def test_context_configs_set_rationales_and_retrieved_examples(name, options, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "reward" / name), *options, "--print_config"])
    assert exit_info.value.code == 0
    init_args = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
    assert {k: init_args[k] for k in expected} == expected
