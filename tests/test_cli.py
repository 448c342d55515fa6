"""The command line: every command is listed, and project commands run in-process."""

import subprocess
import sys

import pytest

from rewarddance.cli import main
from rewarddance.commands import COMMANDS


def _leaf_commands(tree, prefix=()):
    for name, target in tree.items():
        if name == "__doc__":
            continue
        if isinstance(target, dict):
            yield from _leaf_commands(target, (*prefix, name))
        else:
            yield (*prefix, name)


def test_help_lists_lightning_and_project_commands():
    out = subprocess.run(
        [sys.executable, "-m", "rewarddance", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in ("fit", "validate", "test", "predict", *COMMANDS):
        assert name in out


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
