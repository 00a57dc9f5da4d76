"""The Go wrapper in three kinds of app image, each a chroot, against the real stack's OpenBao.

Why chroots: the wrapper must run in any image (issue 13): one with glibc, one with musl only,
and an empty one holding a single static program. Each root filesystem is built here from
this host's files: a Debian-style one (dash, coreutils and the glibc they load), a musl one
(Debian's musl-tools: musl's loader and a program built with musl-gcc; no glibc at all) and an
empty one (the Go SDK's example, a static program). The wrapper is installed into each as the
init container does (`wrapper install /cloudtaser`), the pod's files (CA, client certificate,
TokenRequest token) are put where the injector mounts them, /proc is mounted as a container
runtime does, and the app proves it got its secrets by printing their sha256, never a value.
The arm64 wrapper runs under qemu-aarch64-static against the same OpenBao.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudtaser.engine.plans import CONFIG_ENV, WrapperConfig
from cloudtaser.testbed import stacking
from tests.harness import wrapper
from tests.harness.stack import compiled_config, demo_token, sha

pytestmark = pytest.mark.e2e
REPO = stacking.REPO
TLS_DIR = "/var/run/secrets/cloudtaser/tls"  # where the injector mounts them
TOKEN = "/var/run/secrets/cloudtaser/token"
HASH_LINE = re.compile(r"([0-9a-f]{64})\s+-")


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.skip("chroot and mounts need root")


def _copy(src: Path, root: Path, at: str | Path | None = None) -> None:
    """Copy the file ``src`` (symlinks followed) to ``at`` (default: the same path) in root."""
    target = root / str(at or src).lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src.resolve(), target)


def _ldd(binary: Path) -> list[Path]:
    """The shared libraries (and the loader) ``binary`` loads, as resolved on this host."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    return [Path(m.group(1)) for m in re.finditer(r"(/\S+) \(0x", out)]


def _pod_files(root: Path, stack: stacking.Paths, kubectl: Any) -> WrapperConfig:
    """The pod's mounted files at their in-pod paths; the config pointing at them."""
    client = stack.cert("wrapper-demo")
    _copy(stack.ca, root, f"{TLS_DIR}/ca.crt")
    _copy(client.cert, root, f"{TLS_DIR}/tls.crt")
    _copy(client.key, root, f"{TLS_DIR}/tls.key")
    token = root / TOKEN.lstrip("/")
    token.write_text(demo_token(kubectl))
    config = compiled_config(stack, TOKEN)
    return config.model_copy(
        update={
            "sources": [
                s.model_copy(
                    update={
                        "ca_file": f"{TLS_DIR}/ca.crt",
                        "client_cert_file": f"{TLS_DIR}/tls.crt",
                        "client_key_file": f"{TLS_DIR}/tls.key",
                    }
                )
                for s in config.sources
            ]
        }
    )


def _install(root: Path) -> None:
    """The init container's step: the image's wrapper installs itself into the volume."""
    installed = subprocess.run(
        [str(wrapper.binary()), "install", str(root / "cloudtaser")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr


@contextlib.contextmanager
def _runtime_mounts(root: Path) -> Iterator[None]:
    """/proc and /dev/null, as a container runtime provides them (unmounted afterwards)."""
    (root / "proc").mkdir(exist_ok=True)
    null = root / "dev" / "null"
    null.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
    try:
        try:
            os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
            os.chmod(null, 0o666)
            yield
        except PermissionError:
            null.touch()
            subprocess.run(["mount", "--bind", "/dev/null", str(null)], check=True)
            try:
                yield
            finally:
                subprocess.run(["umount", str(null)], check=False)
    finally:
        subprocess.run(["umount", str(root / "proc")], check=False)


def _run(root: Path, config: WrapperConfig, *app: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/",
        CONFIG_ENV: config.model_dump_json(exclude_none=True),
    }
    with _runtime_mounts(root):
        proc = subprocess.Popen(
            [
                shutil.which("chroot") or "/usr/sbin/chroot",
                str(root),
                "/cloudtaser/wrapper",
                "--deadline",
                "20",
                "--",
                *app,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    result.pid = proc.pid  # type: ignore[attr-defined]
    return result


def _assert_clean(result: subprocess.CompletedProcess[str], secret: dict[str, str]) -> None:
    for value in secret.values():
        if len(value) >= 8:
            assert value not in result.stdout + result.stderr, "a secret value was printed"


def _hashes(stdout: str) -> list[str]:
    return [m.group(1) for m in map(HASH_LINE.fullmatch, stdout.splitlines()) if m]


def test_a_debian_glibc_image(
    stack: stacking.Paths, kubectl: Any, demo_secret: dict[str, str], tmp_path: Path
) -> None:
    """dash and coreutils with the glibc they load, nothing else: env and file deliveries
    through the glibc interposer; the initial environment area holds no value."""
    root = tmp_path / "debian"
    for name in ("sh", "cat", "sha256sum", "tr", "grep"):
        found = shutil.which(name)
        assert found, f"{name} is needed to build the test rootfs"
        _copy(Path(found), root, f"/bin/{name}")
        for lib in _ldd(Path(found)):
            _copy(lib, root)
    for lib in _ldd(wrapper.directory() / "libcloudtaser-glibc.so"):  # glibc's own (libdl.so.2)
        _copy(lib, root)
    (root / "tmp").mkdir(mode=0o1777)
    config = _pod_files(root, stack, kubectl)
    _install(root)
    script = "; ".join(
        [
            'printf %s "$DEMO_PASSWORD" | sha256sum',
            "cat /etc/demo/password | sha256sum",
            'echo "pid $$"',
            'echo "preload ${LD_PRELOAD:-}"',
            "echo \"environ $(tr '\\0' '\\n' < /proc/$$/environ | grep -c '^DEMO_PASSWORD=.')\"",
        ]
    )
    result = _run(root, config, "/bin/sh", "-c", script)
    _assert_clean(result, demo_secret)
    assert result.returncode == 0, result.stderr
    assert _hashes(result.stdout) == [sha(demo_secret["password"])] * 2, result.stdout
    lines = result.stdout.splitlines()
    assert f"pid {result.pid}" in lines, "the app must keep the wrapper's PID"  # type: ignore[attr-defined]
    assert "preload /cloudtaser/libcloudtaser-glibc.so" in lines, result.stdout
    assert "environ 0" in lines, "the initial environment area holds the value"
    assert not (root / "etc/demo/password").exists()  # served, never on disk
    assert "secret(s) fetched" in result.stderr


def test_a_musl_image_without_glibc(
    stack: stacking.Paths, kubectl: Any, demo_secret: dict[str, str], tmp_path: Path
) -> None:
    """musl's loader and one program built with musl-gcc: the musl interposer is chosen from
    the program's ELF interpreter and serves its env and file deliveries."""
    gcc = shutil.which("musl-gcc")
    loader = Path("/lib/ld-musl-x86_64.so.1")
    assert gcc and loader.exists(), "musl-tools (scripts/system-deps) is needed"
    root = tmp_path / "musl"
    app = root / "app"
    root.mkdir()
    subprocess.run(
        [gcc, "-O2", "-o", str(app), str(REPO / "tests/e2e/chroot/musl_app.c")],
        check=True,
        capture_output=True,
    )
    _copy(loader, root)
    (root / "tmp").mkdir(mode=0o1777)
    assert not list(root.rglob("libc.so.6")) and not list(root.rglob("ld-linux*"))
    config = _pod_files(root, stack, kubectl)
    _install(root)
    result = _run(root, config, "/app")
    _assert_clean(result, demo_secret)
    assert result.returncode == 0, result.stderr
    assert _hashes(result.stdout) == [sha(demo_secret["password"])] * 2, result.stdout
    assert "environ clean" in result.stdout.splitlines(), result.stdout
    assert f"pid {result.pid}" in result.stdout.splitlines()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def printsecret(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Go SDK's example, a static program (CGO_ENABLED=0)."""
    out = tmp_path_factory.mktemp("printsecret") / "cloudtaser-printsecret"
    subprocess.run(
        ["go", "build", "-trimpath", "-o", str(out), "./cmd/cloudtaser-printsecret"],
        cwd=REPO / "sdk" / "go",
        env={**os.environ, "CGO_ENABLED": "0"},
        check=True,
        capture_output=True,
        timeout=600,
    )
    return out


def test_an_empty_image_with_one_static_program(
    stack: stacking.Paths,
    kubectl: Any,
    demo_secret: dict[str, str],
    printsecret: Path,
    tmp_path: Path,
) -> None:
    """No libc, no shell: the static app reads its SDK secret from the wrapper's fd; its
    file delivery is not served (nothing can preload into it) and the wrapper says so."""
    root = tmp_path / "empty"
    _copy(printsecret, root, "/app")
    config = _pod_files(root, stack, kubectl)
    _install(root)
    result = _run(root, config, "/app", "demo-password")
    _assert_clean(result, demo_secret)
    assert result.returncode == 0, result.stderr
    password = demo_secret["password"]
    assert result.stdout.strip() == f"len={len(password)} sha256={sha(password)}"
    assert "/app is statically linked: file deliveries are not served to it" in result.stderr


def test_the_arm64_wrapper_under_qemu_user(
    stack: stacking.Paths, token: Path, demo_secret: dict[str, str], printsecret: Path
) -> None:
    """The arm64 build, emulated by qemu-aarch64-static, against the same OpenBao over mTLS; the
    app is this machine's static SDK example (an arm64 app could not be executed from inside
    qemu-user without binfmt_misc). qemu-user has no memfd_secret: a sealed memfd, with the
    warning."""
    qemu = shutil.which("qemu-aarch64-static")
    assert qemu, "qemu-user-static (scripts/system-deps) is needed"
    config = compiled_config(stack, token)
    env = {"PATH": os.environ["PATH"], CONFIG_ENV: config.model_dump_json(exclude_none=True)}
    result = subprocess.run(
        [
            qemu,
            str(wrapper.binary("arm64")),
            "--deadline",
            "30",
            "--",
            str(printsecret),
            "demo-password",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    _assert_clean(result, demo_secret)
    assert result.returncode == 0, result.stderr
    password = demo_secret["password"]
    assert result.stdout.strip() == f"len={len(password)} sha256={sha(password)}"
    assert "is built for EM_X86_64, not for this machine" in result.stderr, result.stderr
    assert "memfd_secret unavailable" in result.stderr, result.stderr
