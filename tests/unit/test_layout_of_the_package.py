"""The namespace package's rooms are named alike everywhere pyproject.toml names them, exist once
on disk, and nothing links them (docs/ARCHITECTURE.md, "The tree")."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
TOOL = PYPROJECT["tool"]


def rooms() -> dict[str, str]:
    """Subpackage -> its directory, for the wheel's rooms and the development-only ones."""
    found = dict(TOOL["setuptools"]["package-dir"])
    for room in TOOL["cloudtaser"]["development-rooms"]:
        found[f"cloudtaser.{room}"] = f"{room}/cloudtaser/{room}"
    return found


def test_every_room_is_room_slash_cloudtaser_slash_room_with_its_init() -> None:
    for package, directory in rooms().items():
        if package == "cloudtaser":
            assert directory == "cloudtaser"
            continue
        room = package.removeprefix("cloudtaser.")
        assert directory == f"{room}/cloudtaser/{room}", package
        assert (REPO / directory / "__init__.py").is_file(), f"{directory}: no __init__.py"
        assert (REPO / directory / "py.typed").is_file(), f"{directory}: no py.typed"


def test_cloudtaser_itself_is_a_namespace_package_in_every_room() -> None:
    # an __init__.py in any cloudtaser/ would hide every other room's modules
    inits = [str(p.relative_to(REPO)) for p in REPO.glob("*/cloudtaser/__init__.py")]
    assert not (REPO / "cloudtaser" / "__init__.py").exists()
    assert inits == []


def test_wheel_mypy_pytest_and_setup_name_the_same_rooms() -> None:
    wheel = set(TOOL["setuptools"]["packages"])
    assert wheel == set(TOOL["setuptools"]["package-dir"])
    every = set(rooms())
    assert set(TOOL["mypy"]["packages"]) == every
    roots = {
        p.removeprefix("$MYPY_CONFIG_FILE_DIR").strip("/") or "."
        for p in TOOL["mypy"]["mypy_path"].split(":")
    }
    expected = {"."} | {d.split("/")[0] for p, d in rooms().items() if p != "cloudtaser"}
    assert roots == expected
    assert set(TOOL["pytest"]["ini_options"]["pythonpath"]) == expected


def test_no_symlink_inside_a_room() -> None:
    links = [
        str(p.relative_to(REPO))
        for directory in rooms().values()
        for p in [REPO / directory, *(REPO / directory).rglob("*")]
        if p.is_symlink()
    ]
    assert links == []
