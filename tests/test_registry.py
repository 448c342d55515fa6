"""rewarddance.registry: names to entries, plug-ins loaded once from entry points, errors that name the cause."""

from __future__ import annotations

import importlib.metadata

import pytest

from rewarddance import registry as registry_module
from rewarddance.errors import UsageError
from rewarddance.registry import PLUGIN_GROUP, Registry, load_plugins


class FakeEntryPoint:
    """What ``importlib.metadata.entry_points`` yields, as far as the registry uses it."""

    def __init__(self, name: str, register: object) -> None:
        self.name, self.value, self.group = name, f"fake_plugins.{name}:register", PLUGIN_GROUP
        self._register = register

    def load(self) -> object:
        return self._register


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> list[FakeEntryPoint]:
    """The entry points the registry will see (empty until a test adds some), with no plug-in loaded yet."""
    entries: list[FakeEntryPoint] = []

    def entry_points(*, group: str) -> list[FakeEntryPoint]:
        return [e for e in entries if e.group == group]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    monkeypatch.setattr(registry_module, "_loaded_plugins", None)  # restored after the test
    return entries


def test_unknown_name_is_a_usage_error_listing_the_known_names(plugins: list[FakeEntryPoint]) -> None:
    colors = Registry("color", hint="Register one with COLORS.register(name, value).")
    colors.register("red", 1)
    colors.register("blue", 2)
    assert "green" not in colors
    with pytest.raises(UsageError) as caught:
        colors["green"]
    assert str(caught.value) == (
        "unknown color 'green'; known: blue, red. Register one with COLORS.register(name, value)."
    )
    assert isinstance(caught.value, ValueError)  # callers that catch ValueError keep working
    assert colors.unknown("x") == "unknown color 'x'; known: blue, red. Register one with COLORS.register(name, value)."
    assert Registry("shape").unknown("x") == "unknown shape 'x'; known: none"


def test_register_twice_needs_overwrite(plugins: list[FakeEntryPoint]) -> None:
    colors: Registry[int] = Registry("color")
    assert colors.register("red", 1) == 1
    with pytest.raises(ValueError, match="color 'red' is already registered"):
        colors.register("red", 2)
    assert colors["red"] == 1
    colors.register("red", 3, overwrite=True)
    assert colors["red"] == 3

    @colors.register("blue")
    def blue() -> int:  # the decorator form registers the function and returns it unchanged
        return 4

    assert colors["blue"] is blue and blue() == 4
    assert list(colors) == ["blue", "red"] and len(colors) == 2 and dict(colors) == {"blue": blue, "red": 3}


def test_a_miss_loads_the_plugins_once(plugins: list[FakeEntryPoint]) -> None:
    colors: Registry[int] = Registry("color")
    calls: list[str] = []

    def register_green() -> None:
        calls.append("green")
        colors.register("green", 5)

    plugins.append(FakeEntryPoint("greens", register_green))
    colors.register("red", 1)
    assert colors["red"] == 1 and calls == []  # a hit loads nothing
    assert colors["green"] == 5 and calls == ["green"]  # the first miss loads the plug-in
    with pytest.raises(UsageError, match="known: green, red"):
        colors["purple"]
    assert "purple" not in colors and sorted(colors) == ["green", "red"]
    assert calls == ["green"]  # later misses, lookups and listings do not load it again
    assert load_plugins() == ["greens"]


def test_listing_the_names_loads_the_plugins(plugins: list[FakeEntryPoint]) -> None:
    colors: Registry[int] = Registry("color")
    plugins.append(FakeEntryPoint("greens", lambda: colors.register("green", 5)))
    assert list(colors) == ["green"]


def test_a_failing_plugin_is_a_usage_error_naming_it(plugins: list[FakeEntryPoint]) -> None:
    def broken() -> None:
        raise ImportError("No module named 'missing_dependency'")

    plugins.append(FakeEntryPoint("broken", broken))
    with pytest.raises(UsageError) as caught:
        Registry("color")["red"]
    message = str(caught.value)
    assert "plug-in 'broken'" in message and "fake_plugins.broken:register" in message
    assert "No module named 'missing_dependency'" in message
    assert isinstance(caught.value.__cause__, ImportError)
