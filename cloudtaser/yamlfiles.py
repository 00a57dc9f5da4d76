"""Reading YAML files into documents, with every failure turned into a located problem.

Directories are expanded to their *.yaml/*.yml files (sorted). YAML syntax errors, duplicate
mapping keys (which PyYAML would otherwise resolve silently, last one wins) and unreadable
files become problems at ``FILE:DOC_INDEX``; nothing here raises on bad input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class Document:
    file: str
    index: int
    body: Any


@dataclass(frozen=True)
class LoadProblem:
    file: str
    index: int | None
    path: str
    message: str

    def line(self) -> str:
        where = "-" if self.index is None else str(self.index)
        return f"{self.file}:{where}: {self.path}: {self.message}"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys in a mapping."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key '{key}'",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def expand(paths: list[str]) -> tuple[list[Path], list[LoadProblem]]:
    """Files named directly, plus the YAML files under named directories."""
    files: list[Path] = []
    problems: list[LoadProblem] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml"))
            if not found:
                problems.append(LoadProblem(name, None, "file", "directory has no YAML files"))
            files.extend(found)
        else:
            files.append(path)
    return files, problems


def _yaml_error(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    if mark is not None:
        return f"YAML syntax error at line {mark.line + 1} column {mark.column + 1}: {problem}"
    return f"YAML syntax error: {problem}"


def load_text(text: str, file: str) -> tuple[list[Document], list[LoadProblem]]:
    docs: list[Document] = []
    index = 0
    try:
        for body in yaml.load_all(text, Loader=_StrictLoader):
            if body is not None:
                docs.append(Document(file, index, body))
            index += 1
    except yaml.YAMLError as e:
        return docs, [LoadProblem(file, index, "(document)", _yaml_error(e))]
    return docs, []


def load_files(paths: list[str]) -> tuple[list[Document], list[LoadProblem]]:
    """All documents of the named files and directories, and the problems met on the way."""
    files, problems = expand(paths)
    docs: list[Document] = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            problems.append(LoadProblem(str(path), None, "file", f"cannot read: {e.strerror}"))
            continue
        except UnicodeDecodeError:
            problems.append(LoadProblem(str(path), None, "file", "not UTF-8 text"))
            continue
        found, failed = load_text(text, str(path))
        docs.extend(found)
        problems.extend(failed)
    return docs, problems
