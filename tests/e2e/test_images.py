"""The container images: built without a daemon, reproducible, signed and attested (issue 7).

Real parts only: scripts/build-images (mmdebstrap + buildah, no container engine), Debian's
docker-registry on 127.0.0.1, cosign and syft built from the Go module proxy
(scripts/build-stack cosign syft). The key pair is generated here with a random
COSIGN_PASSWORD; nothing goes to the public Sigstore services (--tlog-upload=false, and
verification with --insecure-ignore-tlog: there is no transparency log to check here).

Proves, in both directions: the same commit gives the same digests (a fresh build into a
separate directory and scratch store against the cached build); the images run what the chart
runs, as the users the chart expects; `cosign verify` and `cosign verify-attestation` (SPDX,
CycloneDX and SLSA v1 provenance) succeed for what was signed and FAIL once the tag points at a
modified manifest or layer, or with another key; the provenance names this commit (and whether
the tree was dirty), the build command and the inputs by digest; the wheel's SBOM and
provenance attestations fail for a modified wheel.
Needs no cloudtaser stack. Needs root (mmdebstrap --mode=root, chroot).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.harness.registry import running_registry

pytestmark = [pytest.mark.e2e, pytest.mark.images]

REPO = Path(__file__).resolve().parents[2]
IMAGES = ("operator", "bpf-agent", "wrapper-bundle")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
# What each image must be (the chart's commands and securityContexts rely on it).
EXPECTED_CONFIG = {
    "operator": {"User": "65532:65532", "Entrypoint": ["cloudtaser"]},
    "bpf-agent": {"User": "0:0", "Entrypoint": ["python", "-m", "cloudtaser.bpf.agent"]},
    "wrapper-bundle": {"User": "65532:65532", "Entrypoint": ["/bundle/wrapper", "install"]},
}


@dataclass(frozen=True)
class Artefact:
    name: str
    digest: str
    path: Path  # the OCI layout's parent directory (images) or the wheel file


def build_images(*args: str, timeout: int = 1800) -> dict[str, Artefact]:
    """Run scripts/build-images; its stdout lines are NAME DIGEST PATH."""
    started = time.monotonic()
    proc = subprocess.run(
        [str(REPO / "scripts" / "build-images"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
    )
    assert proc.returncode == 0, (
        f"scripts/build-images {' '.join(args)} failed:\n{proc.stderr[-4000:]}"
    )
    print(f"scripts/build-images {' '.join(args)}: {time.monotonic() - started:.0f} s")
    found = {}
    for line in proc.stdout.splitlines():
        name, digest, path = line.split(" ", 2)
        found[name] = Artefact(name, digest, Path(path))
    assert set(found) == {"wheel", *IMAGES}, proc.stdout
    return found


def tool(name: str) -> str:
    """A binary of scripts/build-stack (built once, cached)."""
    script = str(REPO / "scripts" / "build-stack")
    proc = subprocess.run([script, name], capture_output=True, text=True, timeout=1800, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bindir = subprocess.run(
        [script, "--print-dir"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return str(Path(bindir) / name)


@pytest.fixture(scope="module")
def built() -> dict[str, Artefact]:
    if os.geteuid() != 0:
        pytest.skip("building images needs root (mmdebstrap --mode=root, chroot)")
    return build_images("--sbom")


# --- reproducibility -------------------------------------------------------------------------


def input_key(art: Artefact) -> str:
    """The input hash in an artefact's path (cache: kind/KEY, --out: kind-KEY)."""
    match = re.search(r"[-/]([0-9a-f]{16})(/[^/]+\.whl)?$", str(art.path))
    assert match, art.path
    return match.group(1)


def test_same_commit_gives_the_same_digests(
    built: dict[str, Artefact], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A second, fresh build (its own directory, scratch store and root filesystems; nothing
    read from the cache) against the cached one, built earlier from the same inputs."""
    fresh = build_images("--out", str(tmp_path_factory.mktemp("rebuild")))
    # same inputs (the key of each artefact hashes them), else the comparison means nothing
    assert {n: input_key(a) for n, a in fresh.items()} == {
        n: input_key(a) for n, a in built.items()
    }, "the sources changed between the two builds"
    for name in ("wheel", *IMAGES):
        print(f"{name:15} cached {built[name].digest}\n{'':15} fresh  {fresh[name].digest}")
    assert {n: a.digest for n, a in fresh.items()} == {n: a.digest for n, a in built.items()}
    assert (
        built["wheel"].digest
        == "sha256:" + hashlib.sha256(built["wheel"].path.read_bytes()).hexdigest()
    )


# --- what the images hold ----------------------------------------------------------------------


def oci_blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


def oci_image(art: Artefact) -> tuple[dict[str, Any], dict[str, Any]]:
    """(manifest, config) of an image's OCI layout."""
    layout = art.path / "oci"
    manifest = json.loads(oci_blob(layout, art.digest))
    return manifest, json.loads(oci_blob(layout, manifest["config"]["digest"]))


def unpack(art: Artefact, into: Path) -> Path:
    manifest, _ = oci_image(art)
    for layer in manifest["layers"]:
        with tarfile.open(fileobj=io.BytesIO(oci_blob(art.path / "oci", layer["digest"]))) as tar:
            tar.extractall(into, filter="fully_trusted")  # our own layers; keeps owners and modes
    return into


def run_in(root: Path, user: str, *argv: str) -> subprocess.CompletedProcess[str]:
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    return subprocess.run(
        [chroot, f"--userspec={user}", str(root), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={
            "PATH": "/opt/cloudtaser/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
        },
    )


@pytest.mark.parametrize("name", IMAGES)
def test_image_config_is_what_the_chart_expects(built: dict[str, Artefact], name: str) -> None:
    manifest, config = oci_image(built[name])
    for key, value in EXPECTED_CONFIG[name].items():
        assert config["config"][key] == value, (name, key)
    assert "history" not in config  # --omit-history
    labels = config["config"]["Labels"]
    assert (
        labels["org.opencontainers.image.revision"]
        == subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=REPO
        ).stdout.strip()
    )
    epoch = int(
        subprocess.run(
            ["git", "log", "-1", "--format=%ct"],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
        ).stdout
    )
    assert config["created"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    # every file of the image's own (last) layer carries the commit's time
    last = oci_blob(built[name].path / "oci", manifest["layers"][-1]["digest"])
    with tarfile.open(fileobj=io.BytesIO(last)) as tar:
        assert {m.mtime for m in tar.getmembers()} == {epoch}


@pytest.mark.parametrize("name", IMAGES)
def test_images_carry_nothing_of_the_build_host(built: dict[str, Artefact], name: str) -> None:
    """mmdebstrap copies the host's /etc/hostname and /etc/resolv.conf into the root file
    system it makes: left there, the image differs from build host to build host and carries
    its name and resolvers (the container runtime mounts its own at run time)."""
    manifest, _ = oci_image(built[name])
    names = set()
    for layer in manifest["layers"]:
        blob = oci_blob(built[name].path / "oci", layer["digest"])
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            names |= {m.name.lstrip("./") for m in tar.getmembers()}
    assert names, name
    assert not names & {"etc/hostname", "etc/resolv.conf"}, name


def test_images_run_what_the_chart_runs(built: dict[str, Artefact], tmp_path: Path) -> None:
    operator = unpack(built["operator"], tmp_path / "operator")
    proc = run_in(operator, "65532:65532", "cloudtaser", "operator", "--help")
    assert proc.returncode == 0 and "--webhook-service" in proc.stdout, proc.stderr
    assert not (operator / "opt/cloudtaser/bin/pip").exists()  # no installer left in the image

    agent = unpack(built["bpf-agent"], tmp_path / "bpf-agent")
    proc = run_in(agent, "0:0", "python", "-m", "cloudtaser.bpf.agent", "--help")
    assert proc.returncode == 0 and "CLOUDTASER_BPF_OBJECT" in proc.stdout, proc.stderr
    assert (agent / "usr/lib/cloudtaser/bpf/protect.bpf.o").read_bytes()[:4] == b"\x7fELF"
    proc = run_in(agent, "0:0", "python", "-c", "import ctypes; ctypes.CDLL('libbpf.so.1')")
    assert proc.returncode == 0, proc.stderr

    bundle = unpack(built["wrapper-bundle"], tmp_path / "bundle")
    (bundle / "cloudtaser").mkdir(mode=0o777)  # the pod's emptyDir
    os.chmod(bundle / "cloudtaser", 0o777)
    proc = run_in(bundle, "65532:65532", "/bundle/wrapper", "install", "/cloudtaser")
    assert proc.returncode == 0, proc.stderr
    assert os.access(bundle / "cloudtaser" / "wrapper", os.X_OK)
    # the static wrapper and its interposers, nothing else: no shell, no libc
    assert sorted(p.name for p in bundle.iterdir()) == ["bundle", "cloudtaser"]


# --- registry, keys, signatures ------------------------------------------------------------


@dataclass
class Signed:
    host: str
    refs: dict[str, str]  # name -> host/cloudtaser/name:tag
    digests: dict[str, str]
    key: Path
    pub: Path
    env: dict[str, str]
    cosign: str
    built: dict[str, Artefact]
    command: list[str]  # the scripts/build-images invocation that wrote the attested provenance
    provenance: dict[str, dict[str, Any]]  # name -> the predicate file as attested


@pytest.fixture(scope="module")
def registry_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's docker-registry on loopback, plain HTTP, no auth (auth: test_registry.py)."""
    with running_registry(tmp_path_factory.mktemp("registry")) as host:
        yield host


def cosign_run(signed: Signed, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [signed.cosign, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=signed.env,
    )
    shown = " ".join(a if len(a) < 80 else "..." for a in args)
    print(f"$ cosign {shown}\n-> exit {proc.returncode}\n{proc.stdout[:600]}{proc.stderr[-600:]}")
    if ok:
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode != 0, (
            f"cosign {args[0]} succeeded on what it must refuse:\n{proc.stdout}"
        )
    return proc


@pytest.fixture(scope="module")
def signed(
    built: dict[str, Artefact], registry_host: str, tmp_path_factory: pytest.TempPathFactory
) -> Signed:
    """The three images pushed (digests kept), signed and attested (SPDX + CycloneDX) with a
    key pair made for this run; the wheel signed and attested as a blob."""
    command = ["--sbom", "--push", f"{registry_host}/cloudtaser", "--tag", "test"]
    arts = build_images(*command)
    assert {n: a.digest for n, a in arts.items()} == {n: a.digest for n, a in built.items()}
    tmp = tmp_path_factory.mktemp("cosign")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp),
        "TUF_ROOT": str(tmp / "tuf"),
        "COSIGN_PASSWORD": secrets.token_urlsafe(16),
        "COSIGN_YES": "true",
    }
    s = Signed(
        registry_host,
        {n: f"{registry_host}/cloudtaser/{n}:test" for n in IMAGES},
        {n: built[n].digest for n in IMAGES},
        tmp / "cosign.key",
        tmp / "cosign.pub",
        env,
        tool("cosign"),
        built,
        ["scripts/build-images", *command],
        {n: json.loads((arts[n].path / "provenance.json").read_text()) for n in IMAGES},
    )
    subprocess.run(
        [s.cosign, "generate-key-pair", "--output-key-prefix", str(tmp / "cosign")],
        capture_output=True,
        check=True,
        env=env,
        timeout=60,
    )
    assert b"ENCRYPTED" in s.key.read_bytes()  # the private key is sealed with the password
    for name in IMAGES:
        by_digest = f"{registry_host}/cloudtaser/{name}@{s.digests[name]}"
        cosign_run(
            s,
            "sign",
            "--key",
            str(s.key),
            "--tlog-upload=false",
            "--allow-http-registry",
            by_digest,
        )
        for kind, predicate in (
            ("spdxjson", "sbom.spdx.json"),
            ("cyclonedx", "sbom.cdx.json"),
            ("slsaprovenance1", "provenance.json"),
        ):
            cosign_run(
                s,
                "attest",
                "--key",
                str(s.key),
                "--tlog-upload=false",
                "--allow-http-registry",
                "--type",
                kind,
                "--predicate",
                str(arts[name].path / predicate),
                by_digest,
            )
    return s


VERIFY = ("--insecure-ignore-tlog", "--allow-http-registry")
ATTESTATIONS = (
    ("spdxjson", "https://spdx.dev/Document"),
    ("cyclonedx", "https://cyclonedx.org/bom"),
    ("slsaprovenance1", "https://slsa.dev/provenance/v1"),
)


def git_head() -> tuple[str, bool]:
    """(HEAD, whether the work tree differs from it: tracked changes or untracked files)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True, cwd=REPO
        ).stdout

    return git("rev-parse", "HEAD").strip(), bool(
        git("status", "--porcelain", "--untracked-files=all").strip()
    )


def check_provenance(s: Signed, name: str, predicate: dict[str, Any]) -> None:
    """The verified SLSA predicate: exactly what build-images wrote (cosign dropped nothing), this
    commit (dirty only if the tree is), the build command, the inputs by digest."""
    assert predicate == s.provenance[name]
    build = predicate["buildDefinition"]
    head, dirty = git_head()
    source = build["resolvedDependencies"][0]
    assert (
        source["digest"] == {"gitCommit": head} == build["externalParameters"]["source"]["digest"]
    )
    assert source["annotations"]["dirty"] is dirty
    assert build["externalParameters"]["command"] == s.command
    assert build["externalParameters"]["artefact"] == name
    assert predicate["runDetails"]["builder"]["id"]
    inputs = {(d["annotations"]["role"], d.get("name")): d for d in build["resolvedDependencies"]}
    assert (
        inputs[("containerfile", f"{name}.Containerfile")]["digest"]["sha256"]
        == hashlib.sha256(
            (REPO / "scripts" / "images" / f"{name}.Containerfile").read_bytes()
        ).hexdigest()
    )
    if name == "wrapper-bundle":
        assert ("wrapper-bundle", "amd64/wrapper") in inputs
        assert "go" in predicate["runDetails"]["builder"]["version"]
        return
    wheel = s.built["wheel"]
    assert inputs[("wheel", wheel.path.name)]["digest"]["sha256"] == wheel.digest.removeprefix(
        "sha256:"
    )
    lock = (REPO / "scripts" / "images" / "debian-packages.lock").read_bytes()
    assert (
        inputs[("debian-lock", "debian-packages.lock")]["digest"]["sha256"]
        == hashlib.sha256(lock).hexdigest()
    )
    assert any(
        d.get("uri", "").startswith("pkg:deb/debian/python3.11@")
        for d in build["resolvedDependencies"]
    )
    assert any(role == "python-dependency" and n.startswith("pydantic-") for role, n in inputs)
    if name == "bpf-agent":
        assert any(role == "bpf-object" for role, _ in inputs)


def verify(
    s: Signed, name: str, ok: bool = True, ref: str | None = None, pub: Path | None = None
) -> None:
    ref = ref or s.refs[name]
    key = str(pub or s.pub)
    out = cosign_run(s, "verify", "--key", key, *VERIFY, ref, ok=ok)
    if ok:
        claims = json.loads(out.stdout)
        assert {c["critical"]["image"]["docker-manifest-digest"] for c in claims} == {
            s.digests[name]
        }
    for kind, predicate_type in ATTESTATIONS:
        out = cosign_run(s, "verify-attestation", "--key", key, "--type", kind, *VERIFY, ref, ok=ok)
        if ok:
            envelope = json.loads(out.stdout.splitlines()[0])
            statement = json.loads(base64.b64decode(envelope["payload"]))
            assert statement["predicateType"] == predicate_type
            assert statement["subject"][0]["digest"]["sha256"] == s.digests[name].removeprefix(
                "sha256:"
            )
            if kind == "slsaprovenance1":
                check_provenance(s, name, statement["predicate"])
                continue
            text = json.dumps(statement["predicate"])
            assert ("python3.11" if name != "wrapper-bundle" else "golang.org/x/sys") in text


@pytest.mark.parametrize("name", IMAGES)
def test_signature_sbom_and_provenance_attestations_verify(signed: Signed, name: str) -> None:
    verify(signed, name)


def test_another_key_is_refused(signed: Signed, tmp_path: Path) -> None:
    subprocess.run(
        [signed.cosign, "generate-key-pair", "--output-key-prefix", str(tmp_path / "other")],
        capture_output=True,
        check=True,
        env=signed.env,
        timeout=60,
    )
    verify(signed, "operator", ok=False, pub=tmp_path / "other.pub")


def registry_get(host: str, repo: str, path: str) -> bytes:
    answer = requests.get(
        f"http://{host}/v2/{repo}/{path}", headers={"Accept": OCI_MANIFEST}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    return answer.content


def registry_put_blob(host: str, repo: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    started = requests.post(f"http://{host}/v2/{repo}/blobs/uploads/", timeout=30)
    assert started.status_code == 202, started.text
    location = started.headers["Location"]
    if location.startswith("/"):
        location = f"http://{host}{location}"
    done = requests.put(
        location,
        params={"digest": digest},
        data=data,
        timeout=60,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert done.status_code == 201, done.text
    return digest


def registry_put_manifest(host: str, repo: str, ref: str, body: bytes) -> str:
    answer = requests.put(
        f"http://{host}/v2/{repo}/manifests/{ref}",
        data=body,
        timeout=30,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert answer.status_code == 201, answer.text
    return str(answer.headers["Docker-Content-Digest"])


def tampered(s: Signed, name: str, change: str) -> tuple[str, bytes]:
    """Push a modified image under the signed tag; returns (new digest, original manifest)."""
    repo = f"cloudtaser/{name}"
    original = registry_get(s.host, repo, f"manifests/{s.digests[name]}")
    manifest = json.loads(original)
    config = json.loads(registry_get(s.host, repo, f"blobs/{manifest['config']['digest']}"))
    if change == "manifest":  # one changed setting: the app's environment
        config["config"]["Env"].append("LD_PRELOAD=/tmp/evil.so")
    else:  # one extra file in the image's own layer
        layer = manifest["layers"][-1]
        raw = gzip.decompress(registry_get(s.host, repo, f"blobs/{layer['digest']}"))
        buffer = io.BytesIO()
        with (
            tarfile.open(fileobj=io.BytesIO(raw)) as src,
            tarfile.open(fileobj=buffer, mode="w") as dst,
        ):
            for member in src.getmembers():
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
            evil = b"#!/bin/sh\nexec /bin/sh\n"
            info = tarfile.TarInfo("usr/local/bin/evil")
            info.size, info.mode = len(evil), 0o755
            dst.addfile(info, io.BytesIO(evil))
        blob = gzip.compress(buffer.getvalue(), mtime=0)
        layer["digest"] = registry_put_blob(s.host, repo, blob)
        layer["size"] = len(blob)
        config["rootfs"]["diff_ids"][-1] = "sha256:" + hashlib.sha256(buffer.getvalue()).hexdigest()
    config_blob = json.dumps(config).encode()
    manifest["config"]["digest"] = registry_put_blob(s.host, repo, config_blob)
    manifest["config"]["size"] = len(config_blob)
    digest = registry_put_manifest(s.host, repo, "test", json.dumps(manifest).encode())
    assert digest != s.digests[name]
    # and the attacker hangs the genuine signature and attestations on the new digest too
    # (cosign finds them by the tag sha256-<digest>.sig / .att): they must not fit it
    for suffix in ("sig", "att"):
        genuine = registry_get(
            s.host, repo, f"manifests/sha256-{s.digests[name].removeprefix('sha256:')}.{suffix}"
        )
        registry_put_manifest(
            s.host, repo, f"sha256-{digest.removeprefix('sha256:')}.{suffix}", genuine
        )
    return digest, original


@pytest.mark.parametrize(
    ("name", "change"), [("operator", "manifest"), ("wrapper-bundle", "layer")]
)
def test_tampered_image_under_the_same_tag_is_refused(
    signed: Signed, name: str, change: str
) -> None:
    new_digest, original = tampered(signed, name, change)
    try:
        print(
            f"{signed.refs[name]} now points at {new_digest} (modified {change}), signed was {signed.digests[name]}"
        )
        verify(signed, name, ok=False)
        # the signed digest itself still verifies: the signature binds the digest, not the tag
        verify(signed, name, ref=f"{signed.host}/cloudtaser/{name}@{signed.digests[name]}")
    finally:
        assert (
            registry_put_manifest(signed.host, f"cloudtaser/{name}", "test", original)
            == signed.digests[name]
        )
    verify(signed, name)


def test_python_distribution_sbom_and_provenance_attestations(
    signed: Signed, tmp_path: Path
) -> None:
    """The wheel (cosign sign-blob), its SBOMs and provenance (attest-blob), checked against a
    modified wheel."""
    wheel = signed.built["wheel"].path
    sig = tmp_path / "wheel.sig"
    cosign_run(
        signed,
        "sign-blob",
        "--key",
        str(signed.key),
        "--tlog-upload=false",
        "--output-signature",
        str(sig),
        str(wheel),
    )
    cosign_run(
        signed,
        "verify-blob",
        "--key",
        str(signed.pub),
        "--insecure-ignore-tlog",
        "--signature",
        str(sig),
        str(wheel),
    )
    bad = tmp_path / wheel.name
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 1
    bad.write_bytes(data)
    cosign_run(
        signed,
        "verify-blob",
        "--key",
        str(signed.pub),
        "--insecure-ignore-tlog",
        "--signature",
        str(sig),
        str(bad),
        ok=False,
    )
    for kind, file in (
        ("spdxjson", "sbom.spdx.json"),
        ("cyclonedx", "sbom.cdx.json"),
        ("slsaprovenance1", "provenance.json"),
    ):
        predicate = wheel.parent / file
        if kind == "slsaprovenance1":
            build = json.loads(predicate.read_text())["buildDefinition"]
            assert build["externalParameters"]["artefact"] == "wheel"
            assert build["resolvedDependencies"][0]["digest"] == {"gitCommit": git_head()[0]}
            assert build["externalParameters"]["command"] == signed.command
        else:
            assert "cloudtaser" in predicate.read_text() and "pydantic" in predicate.read_text()
        att = tmp_path / f"{kind}.att"
        cosign_run(
            signed,
            "attest-blob",
            "--key",
            str(signed.key),
            "--tlog-upload=false",
            "--type",
            kind,
            "--predicate",
            str(predicate),
            "--output-signature",
            str(att),
            str(wheel),
        )
        out = cosign_run(
            signed,
            "verify-blob-attestation",
            "--key",
            str(signed.pub),
            "--insecure-ignore-tlog",
            "--type",
            kind,
            "--signature",
            str(att),
            str(wheel),
        )
        assert "Verified OK" in out.stdout + out.stderr
        cosign_run(
            signed,
            "verify-blob-attestation",
            "--key",
            str(signed.pub),
            "--insecure-ignore-tlog",
            "--type",
            kind,
            "--signature",
            str(att),
            str(bad),
            ok=False,
        )
