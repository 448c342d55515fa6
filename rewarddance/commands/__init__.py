"""The project's own command-line commands, as plain typed functions.

Each leaf is a function whose signature and Google-style docstring become its ``--help``; a
dict groups commands under a name (``data shapes``). ``rewarddance.cli`` adds them next to
Lightning's fit / validate / test / predict.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Union

from rewarddance.commands import data
from rewarddance.commands.export import export
from rewarddance.commands.generate import evaluate, generate
from rewarddance.commands.plan import plan
from rewarddance.commands.score import score
from rewarddance.commands.serve import serve
from rewarddance.data.importers import import_dataset

CommandTree = dict[str, Union[Callable[..., Any], "CommandTree", str]]

COMMANDS: CommandTree = {
    "data": {
        "__doc__": "Build, import and inspect rewarddance shards.",
        "shapes": data.shapes,
        "generated": data.generated,
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
