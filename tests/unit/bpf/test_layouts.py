"""The ctypes mirrors match the structs the compiled BPF object describes in its BTF."""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cloudtaser.bpf import layouts

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def btf_structs(bpf_object_path: Path) -> dict[str, dict[str, Any]]:
    obj = str(bpf_object_path)
    dump = subprocess.run(
        ["bpftool", "-j", "btf", "dump", "file", obj, "format", "raw"],
        check=True, capture_output=True, text=True,
    )
    structs: dict[str, dict[str, Any]] = {}
    for t in json.loads(dump.stdout)["types"]:
        if t["kind"] == "STRUCT" and t.get("name") in layouts.MIRRORS:
            assert t["name"] not in structs, f"struct {t['name']} is ambiguous in the BTF"
            structs[t["name"]] = t
    return structs


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
