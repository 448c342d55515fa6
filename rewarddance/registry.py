"""Named extension points: one :class:`Registry` type for every "look this name up" in the project.

Backbone families, generator families, generator adapters, rewards, dataset importers, prompt sources
and evaluators are each a ``Registry``: a read-only mapping from a name to what the name builds, extended with ``register``.
Configs and command lines refer to entries by name; an unknown name is a :class:`UsageError` that
lists the known ones, so a typo never reaches the hub or a traceback.

Plug-ins extend the registries without generic code importing them: a package declares an entry
point in the ``rewarddance.plugins`` group (a function taking no arguments that registers its
entries), and every registry loads the plug-ins once, the first time it is asked for a name it does
not have or for its list of names. The synthetic shapes world (:mod:`rewarddance.shapes`) is
registered exactly this way, through this project's own ``pyproject.toml``, so it is also the
example to follow for a new world, reward or dataset. Commands are the one exception: a plug-in adds
them through the ``rewarddance.commands`` group, which the command line reads when it builds its
parser (:mod:`rewarddance.commands`).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar, overload

from rewarddance.errors import UsageError

__all__ = ["PLUGIN_GROUP", "Registry", "load_plugins"]

T = TypeVar("T")

PLUGIN_GROUP = "rewarddance.plugins"
"""Entry-point group of plug-ins: ``name = "package.module:register"`` in the plug-in's pyproject."""

_loaded_plugins: list[str] | None = None


def load_plugins() -> list[str]:
    """Run every ``rewarddance.plugins`` entry point once; returns the names of those loaded.

    A plug-in that fails to import is a :class:`UsageError` naming it: silently missing entries would
    otherwise surface later as "unknown name" errors that hide the cause.
    """
    global _loaded_plugins
    if _loaded_plugins is None:
        _loaded_plugins = []  # set first: a plug-in that looks a name up while registering must not recurse
        for entry in sorted(importlib.metadata.entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
            try:
                entry.load()()
            except Exception as error:
                raise UsageError(
                    f"rewarddance plug-in {entry.name!r} ({entry.value}) failed to load: {error}"
                ) from error
            _loaded_plugins.append(entry.name)
    return list(_loaded_plugins)


class Registry(Mapping[str, T], Generic[T]):
    """Names to entries of one kind, e.g. ``REWARDS = Registry("reward", hint="...")``.

    Args:
        kind: What an entry is, for messages ("reward", "backbone family").
        hint: How to add one, appended to the unknown-name message.
    """

    def __init__(self, kind: str, hint: str = "") -> None:
        self.kind = kind
        self.hint = hint
        self._entries: dict[str, T] = {}

    @overload
    def register(self, name: str, entry: None = None, *, overwrite: bool = False) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, entry: T, *, overwrite: bool = False) -> T: ...

    def register(self, name: str, entry: T | None = None, *, overwrite: bool = False) -> Any:
        """Add ``entry`` under ``name`` (or decorate it); a taken name needs ``overwrite=True``."""

        def add(value: T) -> T:
            if name in self._entries and not overwrite:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = value
            return value

        return add(entry) if entry is not None else add

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            raise UsageError(self.unknown(name)) from None

    def __contains__(self, name: object) -> bool:
        if name not in self._entries:
            load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        load_plugins()
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        load_plugins()
        return len(self._entries)

    def unknown(self, name: str) -> str:
        """The message for a name that is not registered: the known names and how to add one."""
        message = f"unknown {self.kind} {name!r}; known: {', '.join(self) or 'none'}"
        return f"{message}. {self.hint}" if self.hint else message

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._entries)})"
