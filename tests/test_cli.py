"""The command line: every command is listed (and help prints nothing else), and project commands run in-process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rewarddance.cli import main
from rewarddance.commands import COMMANDS

ROOT = Path(__file__).resolve().parents[1]


def _leaf_commands(tree, prefix=()):
    for name, target in tree.items():
        if name == "__doc__":
            continue
        if isinstance(target, dict):
            yield from _leaf_commands(target, (*prefix, name))
        else:
            yield (*prefix, name)


def test_help_lists_lightning_and_project_commands_and_nothing_else():
    # A fresh interpreter: both transformers messages about image processors are emitted once per process, at
    # import (tests/test_noise.py silences the rest in-process).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "rewarddance", "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:")
    assert result.stderr == ""
    for name in ("fit", "validate", "test", "predict", *COMMANDS):
        assert name in result.stdout


@pytest.mark.parametrize("path", list(_leaf_commands(COMMANDS)), ids=" ".join)
def test_every_project_command_has_help(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*path, "--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_unknown_argument_is_rejected(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "inspect", "somewhere", "--no-such-flag"])
    assert exit_info.value.code != 0


def test_data_import_command_writes_shards(tmp_path, capsys):
    from tests.data.importer_fixtures import make_pickapic

    fixture = make_pickapic(tmp_path / "raw")
    report = main(
        ["data", "import", "--format", "pickapic", "--input", str(fixture.input), "--out", str(tmp_path / "out"),
         "--on_error", "skip"]
    ).result  # fmt: skip
    assert report.written > 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tar"))
    summary = main(["data", "inspect", str(tmp_path / "out")]).result
    assert summary.total == report.written
