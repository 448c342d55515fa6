"""The package's layers, checked from its import graph (docs/architecture.md draws them).

Every ``import`` in ``rewarddance/`` (module level, inside functions, under ``TYPE_CHECKING``) is read with
``ast``; a module may import only its own package or a lower layer. Generic code never imports the shapes
world, which plugs in through entry points (``rewarddance/registry.py``). No private name (``_x``) and no
private module crosses a package boundary. Module sizes stay readable.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "rewarddance"

FOUNDATION = 0
LAYERS: dict[str, int] = {
    # lowest first; root modules not named here (errors, outputs, registry, ...) are the foundation
    "models": 1,
    "metrics": 1,
    "data": 2,
    "rl": 3,
    "judge": 4,
    "inference": 5,
    "planning": 5,
    "distributed": 5,
    "callbacks": 5,
    "serving": 5,
    "tasks": 6,
    "commands": 7,
    "cli": 8,
    "__main__": 9,
}
PLUGIN = "shapes"
"""The synthetic world: it may import any generic layer; no generic module may import it."""

MAX_LINES = 700
MAX_TASK_LINES = 520


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted
    target: str  # imported module, dotted
    names: tuple[str, ...]  # names taken from it (from-imports)
    line: int


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[Import]:
    source = module_name(path)
    package = source if path.name == "__init__.py" else source.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.split(".")[0] == "rewarddance":
                # `from rewarddance.x import y` may name a submodule y: count it as importing x.y
                found.append(Import(source, target, tuple(a.name for a in node.names), node.lineno))
        elif isinstance(node, ast.Import):
            found += [
                Import(source, a.name, (), node.lineno) for a in node.names if a.name.split(".")[0] == "rewarddance"
            ]
    return found


def unit(module: str) -> str:
    """The package a module belongs to (``rewarddance.judge.losses`` -> ``judge``); root modules with a layer
    (``cli``, ``distributed``) are their own unit, the other root modules form the foundation (``""``)."""
    parts = module.split(".")
    if len(parts) == 1:
        return ""
    return parts[1] if parts[1] in LAYERS or parts[1] == PLUGIN or (PACKAGE / parts[1]).is_dir() else ""


def layer(module: str) -> int:
    return LAYERS.get(unit(module), FOUNDATION)


def violations(found: list[Import]) -> list[str]:
    """Every import that breaks a rule, as ``source:line -> target: why``."""
    bad = []
    for imp in found:
        src, dst = unit(imp.source), unit(imp.target)
        where = f"{imp.source}:{imp.line} -> {imp.target}"
        if src == dst:
            continue  # inside one package anything goes
        if dst == PLUGIN:
            bad.append(f"{where}: generic code imports the shapes plug-in")
        elif src != PLUGIN and layer(imp.target) > layer(imp.source):
            bad.append(f"{where}: upward (layer {layer(imp.source)} imports layer {layer(imp.target)})")
        elif src != PLUGIN and layer(imp.target) == layer(imp.source):
            bad.append(f"{where}: sideways between packages of layer {layer(imp.source)}")
        if any(part.startswith("_") for part in imp.target.split(".")[1:]):
            bad.append(f"{where}: private module used outside its package")
        private = [name for name in imp.names if name.startswith("_")]
        if private:
            bad.append(f"{where}: private names {private} imported across packages")
    return bad


def all_imports() -> list[Import]:
    return [imp for path in sorted(PACKAGE.rglob("*.py")) for imp in imports_of(path)]


def test_the_rules_catch_each_kind_of_violation():
    # The checker itself must be able to fail: one synthetic import per rule.
    synthetic = [
        Import("rewarddance.models.backbones", "rewarddance.judge.readout", ("x",), 1),  # upward
        Import("rewarddance.tasks.reward", "rewarddance.shapes.prompts", ("TAGS",), 2),  # plug-in
        Import("rewarddance.models.pixels", "rewarddance.metrics", ("y",), 3),  # sideways
        Import("rewarddance.judge.readout", "rewarddance.models.inputs", ("_hidden",), 4),  # private name
        Import("rewarddance.tasks.reward", "rewarddance.rl._util", ("z",), 5),  # private module
    ]
    found = violations(synthetic)
    assert [v.split(":")[1].split(" ")[0] for v in found] == ["1", "2", "3", "4", "5"], found
    allowed = [
        Import("rewarddance.judge.readout", "rewarddance.models.inputs", ("encode",), 1),  # downward
        Import("rewarddance.shapes.rewards", "rewarddance.rl.rewards", ("Reward",), 2),  # plug-in uses generic
        Import("rewarddance.rl.grpo", "rewarddance.rl._util", ("randn",), 3),  # private module inside its package
        Import("rewarddance.checkpointing", "rewarddance.errors", ("UsageError",), 4),  # within the foundation
    ]
    assert violations(allowed) == []


def test_layers_hold_in_the_import_graph():
    found = all_imports()
    assert len(found) > 100  # the walk saw the package
    bad = violations(found)
    assert not bad, "\n".join(bad)


def test_every_package_is_assigned_a_layer():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    unassigned = packages - set(LAYERS) - {PLUGIN}
    assert not unassigned, f"packages without a layer in tests/test_layering.py: {sorted(unassigned)}"


def test_modules_stay_readable():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = len(path.read_text().splitlines())
        limit = MAX_TASK_LINES if path.parent.name == "tasks" else MAX_LINES
        if lines > limit:
            too_long.append(f"{path.relative_to(PACKAGE.parent)}: {lines} lines (limit {limit})")
    assert not too_long, "split these by topic:\n" + "\n".join(too_long)
