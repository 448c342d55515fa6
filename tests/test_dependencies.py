"""Every third-party module the code imports is installed by pyproject.toml.

A fresh virtual environment holds only what pyproject.toml pulls in. Issue 11 found scipy imported
by the package and declared nowhere: every command failed on a fresh machine while the tests passed
on one whose system Python had scipy. So these tests read every import statement (lazy ones inside
functions too), ask importlib.metadata which distribution provides each top-level module, and check
that installing pyproject's requirements brings that distribution in: declared, or required by a
declared one (transitively, with extras and environment markers honoured).

The checker is tested on made-up requirement graphs and on the real pyproject with scipy removed,
so it is known to fail when it should.
"""

from __future__ import annotations

import ast
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# Python 3.10 has no tomllib; there the test is skipped rather than adding a TOML package for it.
tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
DEPENDENCIES: list[str] = PROJECT["dependencies"]
TEST_DEPENDENCIES: list[str] = DEPENDENCIES + PROJECT["optional-dependencies"]["test"]

# What a plain install must run (the package, and the benchmark scripts users run from it), and
# what the test extra must run (the tests and the tutorials they execute).
PACKAGE_CODE = ["rewarddance", "benchmarks"]
TEST_CODE = ["tests", "tutorials"]


def import_statements(source: str) -> Iterator[tuple[str, int]]:
    """(top-level module, line) of every absolute import in ``source``, nested ones included."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], node.lineno


def notebook_code(text: str) -> str:
    """The code cells of a notebook as one Python source, IPython magics and shell lines blanked.

    Blanked, not dropped, so line numbers stay unique per cell; cells are joined in order.
    """
    cells = [c for c in json.loads(text)["cells"] if c["cell_type"] == "code"]
    lines = [line for cell in cells for line in "".join(cell["source"]).splitlines()]
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in lines)


def imported_modules(folders: Iterable[str], root: Path = ROOT) -> dict[str, str]:
    """Top-level module -> where it is first imported (``path:line``), over .py files and notebooks."""
    found: dict[str, str] = {}
    for folder in folders:
        for path in sorted((root / folder).rglob("*")):
            if path.suffix == ".py":
                source = path.read_text(encoding="utf-8")
            elif path.suffix == ".ipynb":
                source = notebook_code(path.read_text(encoding="utf-8"))
            else:
                continue
            for module, line in import_statements(source):
                found.setdefault(module, f"{path.relative_to(root)}:{line}")
    return found


def local_modules(folders: Iterable[str], root: Path = ROOT) -> set[str]:
    """Names the code imports from the repository itself: the scanned folders, their files and subfolders.

    Tests import helpers beside them (``streamkit``, ``data``) through pytest's path insertion.
    """
    names = set()
    for folder in folders:
        names.add(folder)
        for path in (root / folder).rglob("*"):
            if path.suffix == ".py" or (path.is_dir() and path.name != "__pycache__"):
                names.add(path.stem)
    return names


def installed_by(
    requirements: Iterable[str], requires: Callable[[str], list[str] | None] = metadata.requires
) -> set[str]:
    """Canonical names of the distributions that installing ``requirements`` brings in.

    Follows each distribution's own requirements (``requires``: importlib.metadata's, of what is
    installed here), those behind an extra only when that extra is asked for, and drops requirements
    whose environment marker is false on this interpreter.
    """
    names: set[str] = set()
    followed: set[tuple[str, str]] = set()
    todo = [r for r in map(Requirement, requirements) if r.marker is None or r.marker.evaluate({"extra": ""})]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        names.add(name)
        for extra in ("", *sorted(req.extras)):
            if (name, extra) in followed:
                continue
            followed.add((name, extra))
            try:
                dependencies = requires(name) or []
            except metadata.PackageNotFoundError:
                continue  # not installed here: its modules are reported as not installed at all
            for dep in map(Requirement, dependencies):
                if dep.marker is None or dep.marker.evaluate({"extra": extra}):
                    todo.append(dep)
    return names


def undeclared_imports(
    imports: Mapping[str, str],
    installs: set[str],
    providers: Mapping[str, Sequence[str]],
    local: set[str],
) -> list[str]:
    """One line per third-party module that ``installs`` does not provide, naming where it is imported."""
    problems = []
    for module, where in sorted(imports.items()):
        if module in sys.stdlib_module_names or module in local:
            continue
        dists = {canonicalize_name(d) for d in providers.get(module, [])}
        if not dists:
            problems.append(f"{module} (imported at {where}) is not installed here at all")
        elif not dists & installs:
            problems.append(
                f"{module} (imported at {where}) comes from {', '.join(sorted(dists))}, which pyproject.toml does not install"
            )
    return problems


def check(folders: Sequence[str], requirements: Iterable[str]) -> list[str]:
    """The real check: the code in ``folders`` against what ``requirements`` install in this environment."""
    return undeclared_imports(
        imported_modules(folders),
        installed_by(requirements),
        metadata.packages_distributions(),
        local_modules([*PACKAGE_CODE, *TEST_CODE]),
    )


# ----------------------------------------------------------------------------------------------
# The project
# ----------------------------------------------------------------------------------------------


def test_the_package_and_benchmarks_import_only_what_the_dependencies_install():
    assert check(PACKAGE_CODE, DEPENDENCIES) == []


def test_the_tests_and_tutorials_import_only_what_the_test_extra_installs():
    assert check(TEST_CODE, TEST_DEPENDENCIES) == []


def test_the_check_finds_the_scipy_of_issue_11():
    without_scipy = [r for r in DEPENDENCIES if canonicalize_name(Requirement(r).name) != "scipy"]
    assert len(without_scipy) == len(DEPENDENCIES) - 1
    problems = check(PACKAGE_CODE, without_scipy)
    assert len(problems) == 1
    assert problems[0].startswith("scipy (imported at rewarddance/")  # data/shapes/oracle.py in issue 11
    assert problems[0].endswith("comes from scipy, which pyproject.toml does not install")


# ----------------------------------------------------------------------------------------------
# The checker, on made-up environments
# ----------------------------------------------------------------------------------------------

# app requires lib (which requires deep) and, with its "fast" extra, turbo; "legacy" only on Python 2.
GRAPH = {
    "app": ["lib>=1", "turbo; extra == 'fast'", "legacy; python_version < '3'"],
    "lib": ["deep"],
    "deep": [],
    "turbo": [],
    "legacy": [],
    "stray": [],
}
PROVIDERS = {
    "app": ["App"],
    "lib": ["lib"],
    "deep_module": ["deep"],
    "turbo": ["turbo"],
    "legacy": ["legacy"],
    "stray": ["stray"],
}
IMPORTS = {m: f"x.py:{i}" for i, m in enumerate([*PROVIDERS, "ghost", "os", "helper"], start=1)}


def _requires(name: str) -> list[str]:
    if name not in GRAPH:
        raise metadata.PackageNotFoundError(name)
    return GRAPH[name]


def test_installed_by_follows_requirements_extras_and_markers():
    assert installed_by(["app"], _requires) == {"app", "lib", "deep"}
    assert installed_by(["App[fast]"], _requires) == {"app", "lib", "deep", "turbo"}
    # An extra asked for by a requirement further down is honoured too.
    assert installed_by(["wrapper"], lambda n: ["app[fast]"] if n == "wrapper" else _requires(n)) == {
        "wrapper",
        "app",
        "lib",
        "deep",
        "turbo",
    }
    assert installed_by(["app; python_version < '3'"], _requires) == set()


def test_undeclared_imports_names_each_module_and_where():
    problems = undeclared_imports(IMPORTS, installed_by(["app"], _requires), PROVIDERS, local={"helper"})
    assert problems == [
        "ghost (imported at x.py:7) is not installed here at all",
        "legacy (imported at x.py:5) comes from legacy, which pyproject.toml does not install",
        "stray (imported at x.py:6) comes from stray, which pyproject.toml does not install",
        "turbo (imported at x.py:4) comes from turbo, which pyproject.toml does not install",
    ]
    with_everything = installed_by(["app[fast]", "stray", "legacy"], _requires)
    assert undeclared_imports(IMPORTS, with_everything, PROVIDERS, local={"helper"}) == [
        "ghost (imported at x.py:7) is not installed here at all"
    ]


def test_imports_are_read_from_code_notebooks_and_function_bodies(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text(
        "import a.b as c\nfrom d.e import f\nfrom . import sibling\nfrom .g import h\n\ndef lazy():\n    import i\n"
    )
    cells = [
        {"cell_type": "markdown", "source": ["import not_code"]},
        {"cell_type": "code", "source": ["%matplotlib inline\n", "!pip install nothing\n", "import j\n"]},
    ]
    (tmp_path / "pkg" / "tour.ipynb").write_text(json.dumps({"cells": cells}))
    assert imported_modules(["pkg"], root=tmp_path) == {
        "a": "pkg/mod.py:1",
        "d": "pkg/mod.py:2",
        "i": "pkg/mod.py:7",
        "j": "pkg/tour.ipynb:3",
    }
    assert local_modules(["pkg"], root=tmp_path) == {"pkg", "mod"}
