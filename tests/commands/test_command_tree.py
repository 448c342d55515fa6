"""Commands contributed by plug-ins through the ``rewarddance.commands`` entry points."""

from __future__ import annotations

import importlib.metadata

import pytest

import rewarddance.commands as commands
from rewarddance.errors import UsageError


def _points(*pairs: tuple[str, str]) -> importlib.metadata.EntryPoints:
    return importlib.metadata.EntryPoints(
        importlib.metadata.EntryPoint(name, value, commands.COMMAND_GROUP) for name, value in pairs
    )


def test_the_shapes_commands_come_from_entry_points_and_go_first_in_their_group():
    data = commands.COMMANDS["data"]
    assert next(iter(data)) == "__doc__" and list(data)[-2:] == ["import", "inspect"]
    assert data["shapes"].__module__ == data["generated"].__module__ == "rewarddance.shapes.commands"


def test_a_contributed_command_in_a_missing_group_or_on_a_taken_name_is_refused(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: _points(("nosuch.cmd", "json:dumps")))
    with pytest.raises(UsageError, match="no command group 'nosuch'"):
        commands.command_tree()
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: _points(("data.inspect", "json:dumps")))
    with pytest.raises(UsageError, match=r"\['inspect'\] in data: already taken"):
        commands.command_tree()
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: _points(("plot", "json:nosuch")))
    with pytest.raises(UsageError, match=r"'plot' .* failed to load"):
        commands.command_tree()
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: _points(("plot", "json:dumps")))
    assert list(commands.command_tree())[:2] == ["plot", "data"]  # first at the top level too
