"""cloudtaser.provenance: the SLSA v1 predicate scripts/build-images writes for each artefact.

Against a real git repository made here: the source commit comes from git, a dirty work tree
is recorded as dirty (with the changed paths), never passed off as the commit; input files are
hashed; only fields cosign's slsaprovenance1 type keeps appear (the e2e test attests and
verifies the real ones: tests/e2e/test_images.py).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cloudtaser import provenance

# in-toto-golang's slsa_provenance/v1 types, through which cosign re-encodes the predicate
PREDICATE_KEYS = {"buildDefinition", "runDetails"}
BUILD_DEFINITION_KEYS = {
    "buildType",
    "externalParameters",
    "internalParameters",
    "resolvedDependencies",
}
DESCRIPTOR_KEYS = {
    "uri",
    "digest",
    "name",
    "downloadLocation",
    "mediaType",
    "content",
    "annotations",
}
RUN_DETAILS_KEYS = {"builder", "metadata", "byproducts"}
BUILDER_KEYS = {"id", "version", "builderDependencies"}
METADATA_KEYS = {"invocationID", "startedOn", "finishedOn"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        check=True,
        env={
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@example.com",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.com",
            "HOME": str(repo),
            "PATH": "/usr/bin:/bin",
        },
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "a.txt").write_text("a\n")
    (root / "b.txt").write_text("b\n")
    (root / ".gitignore").write_text("ignored/\n")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "first")
    return root


def run(repo: Path, *extra: str) -> dict[str, Any]:
    out = repo.parent / "provenance.json"
    assert (
        provenance.main(
            [
                "--artefact",
                "operator",
                "--output",
                str(out),
                "--repo",
                str(repo),
                "--source-uri",
                "git+https://github.com/cloudtaser/cloudtaser",
                "--started",
                "1700000000",
                "--builder-id",
                "https://ci.example/build",
                *extra,
                "--",
                "scripts/build-images",
                "--sbom",
                "--tag",
                "t",
            ]
        )
        == 0
    )
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def source_of(pred: dict[str, Any]) -> dict[str, Any]:
    first: dict[str, Any] = pred["buildDefinition"]["resolvedDependencies"][0]
    assert first["annotations"]["role"] == "source"
    return first


def test_clean_tree_records_the_commit_from_git(repo: Path) -> None:
    pred = run(repo)
    head = git(repo, "rev-parse", "HEAD")
    source = source_of(pred)
    assert source["digest"] == {"gitCommit": head}
    assert source["uri"] == f"git+https://github.com/cloudtaser/cloudtaser@{head}"
    assert source["annotations"] == {"role": "source", "dirty": False}
    external = pred["buildDefinition"]["externalParameters"]
    assert external["command"] == ["scripts/build-images", "--sbom", "--tag", "t"]
    assert external["source"] == {"uri": source["uri"], "digest": {"gitCommit": head}}
    assert external["artefact"] == "operator"
    assert pred["runDetails"]["builder"]["id"] == "https://ci.example/build"
    assert pred["runDetails"]["metadata"]["startedOn"] == "2023-11-14T22:13:20Z"
    assert pred["buildDefinition"]["buildType"] == provenance.BUILD_TYPE


def test_dirty_tree_is_recorded_not_hidden(repo: Path) -> None:
    (repo / "a.txt").write_text("changed\n")  # modified
    (repo / "new.txt").write_text("new\n")  # untracked (the wheel takes untracked files too)
    git(repo, "mv", "b.txt", "c.txt")  # renamed: both names count
    (repo / "ignored").mkdir()
    (repo / "ignored" / "x").write_text("x\n")  # ignored: not an input
    source = source_of(run(repo))
    assert source["digest"] == {"gitCommit": git(repo, "rev-parse", "HEAD")}
    assert source["annotations"]["dirty"] is True
    assert source["annotations"]["changed"] == ["a.txt", "b.txt", "c.txt", "new.txt"]


def test_inputs_are_hashed_and_debian_packages_are_purls(repo: Path, tmp_path: Path) -> None:
    wheel = tmp_path / "cloudtaser-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"wheel bytes")
    bundle = tmp_path / "amd64"
    (bundle / "sub").mkdir(parents=True)
    (bundle / "wrapper").write_bytes(b"\x7fELF")
    (bundle / "sub" / "lib.so").write_bytes(b"so")
    lock = tmp_path / "debian-packages.lock"
    lock.write_text(
        "# epoch 1\n# base package version\npython-base bsdutils 1:2.38.1-5+deb12u3\n"
        "python-base bash 5.2.15-2+b13\nother-base zsh 5.9-4\n"
    )
    pred = run(
        repo,
        "--file",
        f"wheel={wheel}",
        "--dir",
        f"wrapper-bundle={bundle}",
        "--debian",
        str(lock),
        "python-base",
        "debian-12",
        "amd64",
        "deb http://deb.debian.org/debian bookworm main|deb http://deb.debian.org/debian-security bookworm-security main",
        "--tool",
        "buildah=1.28.2",
        "--param",
        "debianSuite=bookworm",
        "--reused",
    )
    deps = pred["buildDefinition"]["resolvedDependencies"][1:]
    assert deps[0] == {
        "name": wheel.name,
        "digest": {"sha256": hashlib.sha256(b"wheel bytes").hexdigest()},
        "annotations": {"role": "wheel"},
    }
    assert [(d["name"], d["digest"]["sha256"]) for d in deps[1:3]] == [
        ("amd64/sub/lib.so", hashlib.sha256(b"so").hexdigest()),
        ("amd64/wrapper", hashlib.sha256(b"\x7fELF").hexdigest()),
    ]
    assert [d["uri"] for d in deps[3:]] == [
        "http://deb.debian.org/debian",
        "http://deb.debian.org/debian-security",
        "pkg:deb/debian/bsdutils@1%3A2.38.1-5%2Bdeb12u3?arch=amd64&distro=debian-12",
        "pkg:deb/debian/bash@5.2.15-2%2Bb13?arch=amd64&distro=debian-12",
    ]
    assert pred["runDetails"]["builder"]["version"] == {"buildah": "1.28.2"}
    assert pred["buildDefinition"]["internalParameters"] == {
        "debianSuite": "bookworm",
        "reusedFromCache": True,
    }


def test_a_base_missing_from_the_lock_fails(repo: Path, tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    lock.write_text("python-base bash 5.2\n")
    with pytest.raises(ValueError, match="no packages"):
        run(
            repo, "--debian", str(lock), "other", "debian-12", "amd64", "deb http://x bookworm main"
        )


def test_only_fields_cosign_keeps(repo: Path, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("f")
    pred = run(
        repo, "--file", f"x={tmp_path / 'f'}", "--invocation-id", "https://ci.example/runs/1"
    )
    assert set(pred) == PREDICATE_KEYS
    assert set(pred["buildDefinition"]) <= BUILD_DEFINITION_KEYS
    for descriptor in pred["buildDefinition"]["resolvedDependencies"]:
        assert set(descriptor) <= DESCRIPTOR_KEYS and set(descriptor) & {"uri", "digest", "content"}
    assert set(pred["runDetails"]) <= RUN_DETAILS_KEYS
    assert set(pred["runDetails"]["builder"]) <= BUILDER_KEYS
    assert all(isinstance(v, str) for v in pred["runDetails"]["builder"]["version"].values())
    assert set(pred["runDetails"]["metadata"]) <= METADATA_KEYS
    assert pred["runDetails"]["metadata"]["invocationID"] == "https://ci.example/runs/1"


def test_default_builder_is_this_host_and_checkout(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLOUDTASER_BUILDER_ID", raising=False)
    assert provenance.default_builder_id(repo).startswith("file://")
    assert provenance.default_builder_id(repo).endswith(f"{repo.resolve()}/scripts/build-images")
