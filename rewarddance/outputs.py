"""All-or-nothing outputs: a command writes under a temporary name and renames when it is complete.

:func:`atomic_output` gives a command a temporary path next to its output (``.<name>.tmp-<pid>``,
same folder, so the rename never crosses file systems). When the block ends normally the
temporary file is renamed onto the output with ``os.replace`` (atomic); a temporary folder is
renamed onto the output when the output does not exist yet or is empty, and otherwise its entries
are moved in one by one (each rename atomic; entries of the old folder the command did not write
again stay, as they did before). When the block raises, or Ctrl-C stops it, the temporary path
and any parent folders it created are removed, so a failed command leaves no half-written file,
no empty JSONL and no empty folder. Only a ``kill -9`` can leave a ``.<name>.tmp-<pid>`` behind;
nothing reads those, delete them at leisure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_output", "relocated"]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _move_into(source: Path, target: Path) -> None:
    """Move ``source``'s entries into the existing folder ``target``, replacing entries of the same name."""
    for entry in source.iterdir():
        destination = target / entry.name
        if destination.is_dir() and not destination.is_symlink():
            if entry.is_dir():
                _move_into(entry, destination)
                continue
            shutil.rmtree(destination)
        os.replace(entry, destination)
    source.rmdir()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s contents to; rename it onto ``path`` when the block succeeds.

    Args:
        path: The output file (or folder, with ``folder=True``).
        folder: The output is a folder: the temporary folder is created before the block.

    Raises:
        FileExistsError: ``path`` exists and is a folder where a file is wanted, or the reverse.
    """
    target = Path(path)
    if target.exists() and target.is_dir() != folder:
        kind = "a folder" if target.is_dir() else "a file"
        raise FileExistsError(f"{target} is {kind}; give a {'folder' if folder else 'file'} path for this output")
    created = [p for p in reversed(target.absolute().parents) if not p.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    _remove(tmp)  # left by an earlier process of the same pid that was killed
    if folder:
        tmp.mkdir()
    try:
        yield tmp
        if folder and target.is_dir() and any(target.iterdir()):
            _move_into(tmp, target)
        else:
            if folder and target.is_dir():
                target.rmdir()  # empty: renaming onto it directly is not portable
            os.replace(tmp, target)
    except BaseException:
        _remove(tmp)
        for parent in reversed(created):  # innermost first; only folders this call made, and only if empty
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise


def relocated(value: Any, tmp: Path, target: str | os.PathLike) -> Any:
    """``value`` with every path string under ``tmp`` rewritten to the same place under ``target``.

    For what a library returns about the files it wrote into an :func:`atomic_output` temporary
    path (summaries with ``out``, ``files``...), once they have been renamed into place.
    """
    if isinstance(value, str):
        prefix = str(tmp)
        if value == prefix or value.startswith(prefix + os.sep):
            return str(Path(target)) + value[len(prefix) :]
        return value
    if isinstance(value, Path):
        return Path(relocated(str(value), tmp, target))
    if isinstance(value, dict):
        return {k: relocated(v, tmp, target) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(relocated(v, tmp, target) for v in value)
    return value
