"""The project's own command-line commands, as plain typed functions.

Each leaf is a function whose signature and Google-style docstring become its ``--help``; a
dict groups commands under a name (``data inspect``). ``rewarddance.cli`` adds them next to
Lightning's fit / validate / test / predict.

Plug-ins contribute commands through the ``rewarddance.commands`` entry-point group: an entry
``"data.shapes" = "package.module:function"`` adds ``python -m rewarddance data shapes`` (the
name is the command's path, dots between the levels). The synthetic shapes world's ``data
shapes`` and ``data generated`` come this way, from this project's own ``pyproject.toml``.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from typing import Any, Union

from rewarddance.commands import data
from rewarddance.commands.export import export
from rewarddance.commands.generate import evaluate, generate
from rewarddance.commands.plan import plan
from rewarddance.commands.score import score
from rewarddance.commands.serve import serve
from rewarddance.data.importers import import_dataset
from rewarddance.errors import UsageError

CommandTree = dict[str, Union[Callable[..., Any], "CommandTree", str]]

COMMAND_GROUP = "rewarddance.commands"
"""Entry-point group of commands contributed by plug-ins (see the module docstring)."""


def _generic_commands() -> CommandTree:
    return {
        "data": {
            "__doc__": "Build, import and inspect rewarddance shards.",
            "import": import_dataset,
            "inspect": data.inspect,
        },
        "score": score,
        "serve": serve,
        "export": export,
        "generate": generate,
        "evaluate": evaluate,
        "plan": plan,
    }


def command_tree() -> CommandTree:
    """The generic commands plus those of the ``rewarddance.commands`` entry points.

    Contributed commands go first in their group, in the order of their entry points (setuptools writes them
    sorted by name), so the commands that build data are listed before ``data import`` and ``data inspect``.

    Raises:
        UsageError: when a contributed command fails to load, names a missing group or takes a used name.
    """
    tree = _generic_commands()
    contributed: dict[tuple[str, ...], CommandTree] = {}  # group path -> its contributed commands
    for entry in importlib.metadata.entry_points(group=COMMAND_GROUP):
        *groups, name = entry.name.split(".")
        try:
            contributed.setdefault(tuple(groups), {})[name] = entry.load()
        except Exception as error:
            raise UsageError(f"rewarddance command {entry.name!r} ({entry.value}) failed to load: {error}") from error
    for groups, commands in contributed.items():
        parent: Any = tree
        for group in groups:
            parent = parent.get(group)
            if not isinstance(parent, dict):
                raise UsageError(f"rewarddance commands {sorted(commands)}: there is no command group {group!r}")
        taken = sorted(set(commands) & set(parent))
        if taken:
            raise UsageError(f"rewarddance commands {taken} in {' '.join(groups) or 'the top level'}: already taken")
        doc = {"__doc__": parent.pop("__doc__")} if "__doc__" in parent else {}
        own = dict(parent)
        parent.clear()
        parent.update({**doc, **commands, **own})
    return tree


COMMANDS: CommandTree = command_tree()
"""Every command: the generic ones and the plug-ins' (read once, when this module is imported)."""
