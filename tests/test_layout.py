"""Test code shares code only through tests/harness/.

A test module or conftest imports no other test module or conftest (a fixture rename must not
ripple through the suites that borrowed it): what two suites need lives in tests/harness/ (a
pytest plugin of tests/conftest.py when it defines fixtures). The tests import nothing from
benchmarks/, and the benchmarks nothing from tests/ but tests/harness/ (the scaffolding both
use). Every .py under tests/ and benchmarks/ is parsed, relative imports resolved; besides
import statements, ``pytest_plugins`` entries and ``importlib.import_module``/``__import__``
calls with a literal name count as imports.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HARNESS = "tests.harness"


def _module(relative: Path) -> tuple[str, str]:
    """The dotted name of a file (relative to the repository) and of its package."""
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
        return ".".join(parts), ".".join(parts)
    return ".".join(parts), ".".join(parts[:-1])


def _literal_names(node: ast.expr) -> Iterator[str]:
    """The strings of a literal ``pytest_plugins`` value (a string, list or tuple of them)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value
    elif isinstance(node, (ast.List, ast.Tuple)):
        for element in node.elts:
            yield from _literal_names(element)


def imports(source: str, package: str) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of everything ``source`` imports; ``from a import b`` names a.b
    (b may be a module), a relative import is resolved against ``package``."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            for alias in node.names:
                yield node.lineno, base if alias.name == "*" else f"{base}.{alias.name}".strip(".")
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytest_plugins" for t in node.targets
        ):
            for name in _literal_names(node.value):
                yield node.lineno, name
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__"):
                yield node.lineno, node.args[0].value


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _problem(importer: str, name: str) -> str | None:
    """Why ``importer`` (a dotted module of tests/ or benchmarks/) may not import ``name``."""
    top = name.split(".")[0]
    if top == "conftest" or top.startswith("test_"):
        return "a test module or conftest by its bare name; shared code lives in tests/harness"
    if _within(name, "tests") and not _within(name, HARNESS):
        if name == "tests":
            return "the tests package itself; import from tests.harness"
        return "a test module or conftest; shared code lives in tests/harness"
    if _within(name, "benchmarks") and not _within(importer, "benchmarks"):
        return "benchmarks from the tests; what both need lives in tests/harness"
    return None


def violations(root: Path) -> list[str]:
    """``path:line: imports NAME: why`` for every forbidden import under root/tests and
    root/benchmarks."""
    found = []
    for top in ("tests", "benchmarks"):
        for path in sorted((root / top).rglob("*.py")):
            relative = path.relative_to(root)
            if ".venv" in relative.parts or "__pycache__" in relative.parts:
                continue
            module, package = _module(relative)
            for line, name in imports(path.read_text(), package):
                why = _problem(module, name)
                if why:
                    found.append(f"{relative}:{line}: imports {name}: {why}")
    return found


def test_tests_and_benchmarks_share_code_only_through_the_harness() -> None:
    found = violations(REPO)
    assert found == [], "\n".join(found)


def test_the_check_names_each_forbidden_import_with_its_file_and_line(tmp_path: Path) -> None:
    files = {
        "tests/conftest.py": """
            pytest_plugins = ["tests.harness.stack", "tests.e2e.conftest"]
            """,
        "tests/e2e/conftest.py": "import pytest\n",
        "tests/e2e/test_load.py": """
            from benchmarks import load
            from tests.harness.loading import wrapper_starts
            """,
        "tests/faults/test_openbao.py": """
            from tests.e2e.conftest import sha
            from tests.harness import wrapper
            from .conftest import Outage
            from . import test_other
            """,
        "tests/kernel/test_x.py": """
            import importlib
            from tests import harness
            from conftest import AgentRun
            import tests.unit.bpf.test_pod_policies
            importlib.import_module("tests.e2e.test_operator")
            """,
        "tests/harness/nodes.py": """
            from tests.harness.waiting import wait_for
            from .waiting import wait_for as again
            from tests.e2e.node.conftest import NS
            import benchmarks.figures
            """,
        "benchmarks/load.py": """
            from benchmarks.figures import emit
            from tests.harness.documents import binding_doc
            from tests.conftest import pod_doc
            """,
    }
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    found = [line.split(": ")[0] + ": " + line.split(": ")[1] for line in violations(tmp_path)]
    assert found == [
        "tests/conftest.py:1: imports tests.e2e.conftest",
        "tests/e2e/test_load.py:1: imports benchmarks.load",
        "tests/faults/test_openbao.py:1: imports tests.e2e.conftest.sha",
        "tests/faults/test_openbao.py:3: imports tests.faults.conftest.Outage",
        "tests/faults/test_openbao.py:4: imports tests.faults.test_other",
        "tests/harness/nodes.py:3: imports tests.e2e.node.conftest.NS",
        "tests/harness/nodes.py:4: imports benchmarks.figures",
        "tests/kernel/test_x.py:3: imports conftest.AgentRun",
        "tests/kernel/test_x.py:4: imports tests.unit.bpf.test_pod_policies",
        "tests/kernel/test_x.py:5: imports tests.e2e.test_operator",
        "benchmarks/load.py:3: imports tests.conftest.pod_doc",
    ]
