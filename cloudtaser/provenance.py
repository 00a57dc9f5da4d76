"""SLSA v1 build provenance for what scripts/build-images builds (issue 13, item 6).

scripts/build-images calls ``python -m cloudtaser.provenance`` once per artefact (the three
images and the wheel) and writes ``provenance.json`` next to its SBOMs; cosign wraps it in an
in-toto statement whose subject is the artefact's digest (``cosign attest --type
slsaprovenance1``, ``cosign attest-blob`` for the wheel). Nothing here is hand-written JSON:
the commit comes from git, every input file is hashed where it was read from.

The predicate (https://slsa.dev/provenance/v1; buildType: this module):

- ``buildDefinition.externalParameters``: ``command`` (the argv of scripts/build-images,
  relative to the repository), ``artefact`` (operator, bpf-agent, wrapper-bundle, wheel),
  ``source`` (repository URL and ``gitCommit``).
- ``buildDefinition.internalParameters``: the script's pins (suite, mirrors, epochs, pip) and
  ``reusedFromCache``: true when this run found the artefact in the cache under the key that
  hashes all its inputs instead of building it (the build is reproducible, so the bytes are
  the same a fresh build gives; the test proves it).
- ``buildDefinition.resolvedDependencies``: first the source (``gitCommit``; annotation
  ``dirty``: true when the work tree differed from the commit, with the changed paths — the
  commit alone then does not describe the input, the hashed files below do), then each input
  file by sha256 (the Debian lock, the base root filesystem mmdebstrap made, the wheel, the
  dependency wheels, constraints.txt, the BPF object, the wrapper binary and its interposers,
  the Containerfiles) and each locked Debian package as a ``pkg:deb`` purl with the apt
  sources it came from.
- ``runDetails.builder``: ``id`` from $CLOUDTASER_BUILDER_ID (CI: the workflow at its ref;
  otherwise ``file://HOST/REPO/scripts/build-images``, a local build), ``version``: the tools.
- ``runDetails.metadata``: ``invocationID`` from $CLOUDTASER_INVOCATION_ID (CI: the run's
  URL), ``startedOn`` (the script's start) and ``finishedOn``.

Only fields of in-toto-golang's slsa v1 types appear (cosign re-encodes the predicate through
them and would silently drop others), so the attested predicate equals this file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://github.com/cloudtaser/cloudtaser/blob/main/cloudtaser/provenance.py"
MAX_CHANGED_PATHS = 100


@dataclass(frozen=True)
class Source:
    uri: str  # the repository, e.g. git+https://github.com/cloudtaser/cloudtaser
    commit: str
    dirty: bool
    changed: tuple[str, ...] = ()  # work-tree paths that differ from the commit (git status)


def git_source(repo: Path, uri: str) -> Source:
    """HEAD and whether the work tree (tracked or untracked, not ignored) differs from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, timeout=60
        ).stdout

    commit = git("rev-parse", "HEAD").strip()
    # entries "XY PATH", NUL-terminated; a rename or copy is followed by its original path
    entries = iter(git("status", "--porcelain=v1", "-z", "--untracked-files=all").split("\0"))
    changed = set()
    for entry in entries:
        if len(entry) > 3:
            changed.add(entry[3:])
            if "R" in entry[:2] or "C" in entry[:2]:
                changed.add(next(entries, ""))
    changed.discard("")
    return Source(uri, commit, bool(changed), tuple(sorted(changed)))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_dependency(role: str, path: Path, name: str | None = None) -> dict[str, Any]:
    return {
        "name": name or path.name,
        "digest": {"sha256": sha256_file(path)},
        "annotations": {"role": role},
    }


def dir_dependencies(role: str, root: Path) -> list[dict[str, Any]]:
    """Every regular file under ROOT, as ROOTNAME/relative-path, sorted."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    return [
        file_dependency(role, p, f"{root.name}/{p.relative_to(root).as_posix()}") for p in files
    ]


def debian_dependencies(
    lock: Path, base: str, distro: str, arch: str, sources: Sequence[str]
) -> list[dict[str, Any]]:
    """The apt SOURCES ("deb URL SUITE COMPONENT" lines) and the lock's packages of BASE (lines
    "BASE PACKAGE VERSION") as pkg:deb purls: what mmdebstrap fetched, pinned to those versions."""
    found: list[dict[str, Any]] = [
        {"uri": line.split()[1], "name": line, "annotations": {"role": f"apt-source:{base}"}}
        for line in sources
    ]
    for line in lock.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and not line.startswith("#") and parts[0] == base:
            package, version = parts[1], parts[2]
            found.append(
                {
                    "uri": f"pkg:deb/debian/{package}@{quote(version, safe='')}"
                    f"?arch={arch}&distro={distro}",
                    "name": f"{package}={version}",
                    "annotations": {"role": f"debian-package:{base}"},
                }
            )
    if len(found) == len(sources):
        raise ValueError(f"{lock}: no packages for base {base!r}")
    return found


@dataclass
class Build:
    artefact: str
    command: list[str]
    source: Source
    builder_id: str
    started: datetime
    finished: datetime
    reused: bool = False
    invocation_id: str = ""
    parameters: dict[str, str] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=dict)
    dependencies: list[dict[str, Any]] = field(default_factory=list)


def timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def predicate(build: Build) -> dict[str, Any]:
    source_annotations: dict[str, Any] = {"role": "source", "dirty": build.source.dirty}
    if build.source.dirty:
        source_annotations["changed"] = list(build.source.changed[:MAX_CHANGED_PATHS])
        if len(build.source.changed) > MAX_CHANGED_PATHS:
            source_annotations["changedTruncated"] = len(build.source.changed)
    source = {
        "uri": f"{build.source.uri}@{build.source.commit}",
        "digest": {"gitCommit": build.source.commit},
    }
    metadata: dict[str, Any] = {
        "startedOn": timestamp(build.started),
        "finishedOn": timestamp(build.finished),
    }
    if build.invocation_id:
        metadata = {"invocationID": build.invocation_id, **metadata}
    return {
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": {
                "command": build.command,
                "artefact": build.artefact,
                "source": source,
            },
            "internalParameters": {
                **dict(sorted(build.parameters.items())),
                "reusedFromCache": build.reused,
            },
            "resolvedDependencies": [
                {**source, "annotations": source_annotations},
                *build.dependencies,
            ],
        },
        "runDetails": {
            "builder": {"id": build.builder_id, "version": dict(sorted(build.tools.items()))},
            "metadata": metadata,
        },
    }


def pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def default_builder_id(repo: Path) -> str:
    return f"file://{socket.gethostname()}{repo.resolve()}/scripts/build-images"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cloudtaser.provenance", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--artefact", required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--repo", type=Path, default=Path.cwd())
    parser.add_argument("--source-uri", required=True, help="the repository, without the commit")
    parser.add_argument("--builder-id", default=os.environ.get("CLOUDTASER_BUILDER_ID", ""))
    parser.add_argument("--invocation-id", default=os.environ.get("CLOUDTASER_INVOCATION_ID", ""))
    parser.add_argument(
        "--started", type=int, required=True, help="the build's start, epoch seconds"
    )
    parser.add_argument(
        "--reused", action="store_true", help="found in the cache, not built by this run"
    )
    parser.add_argument("--param", type=pair, action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--tool", type=pair, action="append", default=[], metavar="NAME=VERSION")
    parser.add_argument("--file", type=pair, action="append", default=[], metavar="ROLE=PATH")
    parser.add_argument("--dir", type=pair, action="append", default=[], metavar="ROLE=DIR")
    parser.add_argument(
        "--debian",
        nargs=5,
        action="append",
        default=[],
        metavar=("LOCK", "BASE", "DISTRO", "ARCH", "SOURCES"),
        help="the locked packages of BASE; SOURCES: apt source lines, '|'-separated",
    )
    parser.add_argument("command", nargs="+", help="after --: the build command, as invoked")
    args = parser.parse_args(argv)

    dependencies: list[dict[str, Any]] = []
    for role, path in args.file:
        dependencies.append(file_dependency(role, Path(path)))
    for role, path in args.dir:
        dependencies.extend(dir_dependencies(role, Path(path)))
    for lock, base, distro, arch, sources in args.debian:
        dependencies.extend(debian_dependencies(Path(lock), base, distro, arch, sources.split("|")))
    build = Build(
        artefact=args.artefact,
        command=list(args.command),
        source=git_source(args.repo, args.source_uri),
        builder_id=args.builder_id or default_builder_id(args.repo),
        started=datetime.fromtimestamp(args.started, UTC),
        finished=datetime.now(UTC),
        reused=args.reused,
        invocation_id=args.invocation_id,
        parameters=dict(args.param),
        tools=dict(args.tool),
        dependencies=dependencies,
    )
    tmp = args.output.with_name(args.output.name + ".tmp")
    tmp.write_text(json.dumps(predicate(build), indent=2) + "\n")
    tmp.replace(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
