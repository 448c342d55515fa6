"""The quickstart fitted in this process for speed measurements: no validation, test, checkpoint or export.

Used by benchmarks/threads.py and benchmarks/vision_cache.py, whose callbacks switch a setting block by block.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L

from rewarddance.cli import main as rewarddance_main

ROOT = Path(__file__).resolve().parents[1]


def fit_quickstart(callback: type[L.Callback], init_args: dict[str, Any], steps: int, *extra: str) -> Any:
    """Fit ``configs/quickstart.yaml`` for ``steps`` steps with ``callback(**init_args)`` added; returns the CLI.

    The callback class must be importable by its module path (a benchmark's ``__main__`` is).
    """
    spec = {"class_path": f"{callback.__module__}.{callback.__qualname__}", "init_args": init_args}
    return rewarddance_main(
        [
            "fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--trainer.max_steps", str(steps),
            "--trainer.limit_val_batches", "0", "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
            "--trainer.enable_progress_bar", "false", "--model.init_args.export", "false", "--test_after_fit", "false",
            f"--trainer.callbacks+={json.dumps(spec)}", *extra,
        ]
    )  # fmt: skip


def find_callback(cli: Any, callback: type[L.Callback]) -> Any:
    """The fitted instance of ``callback`` (to read what it recorded)."""
    return next(c for c in cli.trainer.callbacks if isinstance(c, callback))
