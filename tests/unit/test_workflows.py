"""The CI workflows for the public forge (.github/workflows/): pinned, first-party, least privilege.

Every `uses:` must be a first-party action (`actions/<name>`) at a full 40-hex commit SHA with
its release in a trailing comment (`# vX.Y.Z`): a tag can be moved, a commit cannot. The
workflow-level permissions grant nothing; `id-token: write` (keyless signing) appears only in
the job that signs. And actionlint (built from the Go module proxy by scripts/build-stack)
finds nothing.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.y*ml"))
USES = re.compile(r"^\s*(?:-\s+)?uses:\s*(?P<ref>\S+)(?P<rest>.*)$")
PINNED = re.compile(r"^actions/[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_./-]+)?@[0-9a-f]{40}$")
RELEASE_COMMENT = re.compile(r"^\s+#\s+v\d+\.\d+\.\d+\s*$")


def test_there_are_workflows() -> None:
    assert "ci.yml" in [p.name for p in WORKFLOWS]


def uses_lines(path: Path) -> list[tuple[int, str, str]]:
    found = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        match = USES.match(line)
        if match:
            found.append((number, match["ref"], match["rest"]))
    return found


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_action_is_first_party_and_pinned_by_commit(path: Path) -> None:
    lines = uses_lines(path)
    assert lines, f"{path.name} uses no actions at all?"
    bad = [
        f"{path.name}:{n}: {ref}{rest}"
        for n, ref, rest in lines
        if not PINNED.match(ref) or not RELEASE_COMMENT.match(rest)
    ]
    assert bad == [], "not `actions/<name>@<40-hex sha> # vX.Y.Z`:\n" + "\n".join(bad)
    # the same action at one commit everywhere in the file
    shas: dict[str, set[str]] = {}
    for _, ref, _ in lines:
        name, sha = ref.split("@")
        shas.setdefault(name.split("/")[1], set()).add(sha)
    assert {k: v for k, v in shas.items() if len(v) > 1} == {}


def test_the_rule_catches_what_it_must() -> None:
    def ok(line: str) -> bool:
        m = USES.match(line)
        return bool(m and PINNED.match(m["ref"]) and RELEASE_COMMENT.match(m["rest"]))

    assert ok("      - uses: actions/checkout@08c6903cd8c0fde910a37f88322edcfb5dd907a8 # v5.0.0")
    assert ok(
        "      - uses: actions/cache/restore@0057852bfaa89a56745cba8c7296529d2fc39830 # v4.3.0"
    )
    assert not ok("      - uses: actions/checkout@v5 # v5.0.0")  # a tag
    assert not ok("      - uses: actions/checkout@08c6903 # v5.0.0")  # a short sha
    assert not ok(
        "      - uses: actions/checkout@08c6903cd8c0fde910a37f88322edcfb5dd907a8"
    )  # no release
    assert not ok(
        "      - uses: sigstore/cosign-installer@d7d6bc7722e3daa8354c50bcb52f4837da5e9b6a # v3.8.1"
    )
    assert not ok("      - uses: docker://alpine@sha256:" + "0" * 64 + " # v3.20.0")
    assert not ok("    uses: ./.github/workflows/other.yml # v1.0.0")


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    return doc


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_least_privilege(path: Path) -> None:
    doc = load(path)
    assert doc.get("permissions") in ({}, "read-all", {"contents": "read"}), (
        f"{path.name}: top-level permissions must grant nothing (or read) by default"
    )
    for name, job in doc["jobs"].items():
        perms = job.get("permissions")
        assert isinstance(perms, dict), f"{path.name}: job {name} must state its permissions"
        assert "write-all" not in perms.values()
        signs = any("cosign sign" in str(step.get("run", "")) for step in job.get("steps", []))
        if perms.get("id-token") == "write":
            assert signs, f"{path.name}: job {name} has id-token: write but signs nothing"
        writes = {k for k, v in perms.items() if v == "write"}
        assert writes <= {"id-token", "packages"}, f"{path.name}: job {name} writes {writes}"


def test_checkout_keeps_no_credentials() -> None:
    for path in WORKFLOWS:
        for job in load(path)["jobs"].values():
            for step in job.get("steps", []):
                if str(step.get("uses", "")).startswith("actions/checkout@"):
                    assert step.get("with", {}).get("persist-credentials") is False, path.name


def test_actionlint_finds_nothing() -> None:
    script = REPO / "scripts" / "build-stack"
    built = subprocess.run(
        [str(script), "actionlint"], capture_output=True, text=True, timeout=1800, check=False
    )
    assert built.returncode == 0, f"scripts/build-stack actionlint failed:\n{built.stderr[-3000:]}"
    bindir = subprocess.run(
        [str(script), "--print-dir"], capture_output=True, text=True, check=True
    ).stdout.strip()
    proc = subprocess.run(
        [str(Path(bindir) / "actionlint"), "-no-color", *map(str, WORKFLOWS)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
