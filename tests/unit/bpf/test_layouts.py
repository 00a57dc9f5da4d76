"""The ctypes mirrors match the structs the compiled BPF object describes in its BTF."""

from __future__ import annotations

import ctypes
import json
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from cloudtaser.bpf import layouts
from cloudtaser.engine.plans import ProtectionFlag

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def btf_types(bpf_object_path: Path) -> list[dict[str, Any]]:
    obj = str(bpf_object_path)
    dump = subprocess.run(
        ["bpftool", "-j", "btf", "dump", "file", obj, "format", "raw"],
        check=True,
        capture_output=True,
        text=True,
    )
    types: list[dict[str, Any]] = json.loads(dump.stdout)["types"]
    return types


def _named(
    types: list[dict[str, Any]], kind: str, names: Iterable[str]
) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for t in types:
        if t["kind"] == kind and t.get("name") in names:
            assert t["name"] not in found, f"{kind} {t['name']} is ambiguous in the BTF"
            found[t["name"]] = t
    return found


@pytest.fixture(scope="module")
def btf_structs(btf_types: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return _named(btf_types, "STRUCT", layouts.MIRRORS)


@pytest.fixture(scope="module")
def btf_enums(btf_types: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return _named(btf_types, "ENUM", [*layouts.ENUMS, "protection_flag"])


def _values(enum_type: dict[str, Any], prefix: str) -> dict[str, int]:
    return {v["name"].removeprefix(prefix): v["val"] for v in enum_type["values"]}


@pytest.mark.parametrize("name", sorted(layouts.ENUMS))
def test_enum_mirror_matches_btf(btf_enums: dict[str, dict[str, Any]], name: str) -> None:
    """protect.h's enums and their Python mirrors: same names, same values, none missing."""
    assert name in btf_enums, f"enum {name} missing from the object's BTF (no anchor?)"
    mirror, prefix = layouts.ENUMS[name]
    assert _values(btf_enums[name], prefix) == {m.name: int(m) for m in mirror}


def test_every_enum_of_the_header_has_a_mirror() -> None:
    """A new enum in protect.h without a Python mirror (or one dropped) fails here."""
    declared = set(re.findall(r"^enum (\w+) \{", (REPO / "bpf/protect.h").read_text(), re.M))
    assert declared == {*layouts.ENUMS, "protection_flag"}


def test_protection_flags_match_the_engine(btf_enums: dict[str, dict[str, Any]]) -> None:
    """The policy bits the engine compiles (engine.plans.ProtectionFlag) are the C ones."""
    assert _values(btf_enums["protection_flag"], "PF_") == {m.name: int(m) for m in ProtectionFlag}


@pytest.mark.parametrize("name", sorted(layouts.MIRRORS))
def test_mirror_matches_btf(btf_structs: dict[str, dict[str, Any]], name: str) -> None:
    assert name in btf_structs, f"struct {name} missing from the object's BTF"
    btf = btf_structs[name]
    mirror = layouts.MIRRORS[name]
    assert ctypes.sizeof(mirror) == btf["size"]
    fields = [(f[0], getattr(mirror, f[0]).offset * 8) for f in mirror._fields_]
    assert fields == [(m["name"], m["bits_offset"]) for m in btf["members"]]


def test_build_is_cached_outside_the_repo(tmp_path: Path) -> None:
    if shutil.which("clang") is None or shutil.which("bpftool") is None:
        pytest.skip("clang or bpftool not installed")
    out = subprocess.run(
        [str(REPO / "scripts/build-bpf"), "--print-dir"], check=True, capture_output=True, text=True
    )
    assert not Path(out.stdout.strip()).resolve().is_relative_to(REPO)
