"""Errors a user can fix, and how the command line reports them.

An *expected* error is one the user caused and can fix: a missing or unreadable file, an unknown
name, a bad shard sample, a corrupt checkpoint, a bad argument or config value, a hub that cannot
be reached. ``python -m rewarddance`` (:func:`rewarddance.cli.main`) prints such an error in a
line or two on stderr (what is wrong, where, and what to do) and exits with :data:`EXIT_USER_ERROR`,
without a traceback. Anything else is a bug in rewarddance or a library below it and keeps its
full traceback. ``--debug`` (anywhere on the command line) or ``REWARDDANCE_DEBUG=1`` shows the
traceback of expected errors too.

An error is expected when it is a :class:`RewardDanceError` (the project's own error classes
derive from it, e.g. ``ShardFormatError``, ``DatasetImportError``, ``TemplateError``,
``BadInputError``, ``UnsafeCheckpointError``), or one of :data:`EXPECTED_BUILTINS` (the operating
system's file errors, which name the file, and connection errors).
"""

from __future__ import annotations

import os

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_USER_ERROR",
    "EXPECTED_BUILTINS",
    "BadFileError",
    "CorruptCheckpointError",
    "RewardDanceError",
    "UsageError",
    "debug_requested",
    "describe",
    "hub_hint",
    "is_expected",
]

EXIT_USER_ERROR = 1
"""Exit status of a command stopped by an expected error (jsonargparse's own usage errors exit 2)."""

EXIT_INTERRUPTED = 130
"""Exit status after Ctrl-C, as shells report a process ended by SIGINT (128 + 2)."""

DEBUG_FLAG = "--debug"
DEBUG_ENV = "REWARDDANCE_DEBUG"


class RewardDanceError(Exception):
    """Base class of the errors a user can fix. Its message says what is wrong, where, and what to do.

    Subclasses usually also derive from the builtin that fits (``ValueError``, ``OSError``...), so
    code that catches those keeps working.
    """


class UsageError(RewardDanceError, ValueError):
    """A bad argument or value that rewarddance's own checks find (the parser's checks exit 2 by themselves)."""


class BadFileError(RewardDanceError, ValueError):
    """A file that exists but cannot be used: not valid JSON, not an image, missing required fields..."""


class CorruptCheckpointError(BadFileError):
    """A checkpoint file that cannot be read at all: truncated, empty or not a checkpoint."""


EXPECTED_BUILTINS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    ConnectionError,
)
"""Builtin errors that are the user's to fix; their messages name the file (or the address)."""


def is_expected(error: BaseException) -> bool:
    """Whether ``error`` is a user error to report in a line or two, without a traceback."""
    return isinstance(error, (RewardDanceError, *EXPECTED_BUILTINS))


def describe(error: BaseException) -> str:
    """The line(s) the command line prints for an expected error."""
    message = str(error).strip() or type(error).__name__
    if "\nOriginal Traceback (most recent call last):" in message:
        # torch re-raises a DataLoader worker's error with the worker's traceback as its message; its last
        # line is the original "Type: message".
        message = message.splitlines()[-1].strip()
    if isinstance(error, OSError) and error.filename is not None and str(error.filename) not in message:
        message = f"{message}: {error.filename}"
    return f"rewarddance: error: {message}\n(add {DEBUG_FLAG} or set {DEBUG_ENV}=1 for the traceback)"


def hub_hint() -> str:
    """What to check when a hub id does not load; offline mode (``HF_HUB_OFFLINE``) loads only cached ids."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set, so only hub ids already in the local cache load."
    return "Check the id, the network, and for gated models your token (hf auth login)."


def debug_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """``(debug, argv without --debug)``: debug when ``--debug`` is given or ``REWARDDANCE_DEBUG`` is set (not 0)."""
    env = os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
    return env or DEBUG_FLAG in argv, [a for a in argv if a != DEBUG_FLAG]
