"""Reading JSONL files with errors that name the file and the line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rewarddance.errors import BadFileError


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of a JSONL file of objects.

    Raises:
        FileNotFoundError: No file at ``path``.
        BadFileError: A line that is not valid JSON, or not a JSON object (naming the file and the line).
    """
    for line_no, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise BadFileError(f"{path}, line {line_no}: not valid JSON ({err.msg}, column {err.colno})") from err
        if not isinstance(row, dict):
            raise BadFileError(f"{path}, line {line_no}: expected a JSON object, got {type(row).__name__}")
        yield line_no, row
