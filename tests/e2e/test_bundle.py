"""The wrapper bundle (scripts/build-bundle) in an app image without Python.

Why: in Kubernetes the init container copies the bundle into /cloudtaser and the app container
runs ``/cloudtaser/wrapper -- COMMAND`` from an image that may hold no Python at all; only a
run in such a root filesystem shows that the bundle is self-contained. The test builds a
minimal rootfs in tmp_path — /bin/sh (dash), cat, sha256sum, the glibc libraries they and the
bundle need (what any glibc-based image has; the test checks that the bundle needs nothing
else from the image), /tmp, /dev/null, the mTLS files and a TokenRequest token — installs the
bundle with its own ``install`` script, and runs the frozen wrapper under chroot against the
real stack's OpenBao: the env delivery reaches the app, and the file delivery is served by the
bundle's own lib/libcloudtaser_interposer.so. No secret is ever printed, only its sha256.
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

from cloudtaser import provisioning, stacking
from cloudtaser.engine.plans import CONFIG_ENV
from tests.e2e.conftest import compiled_config, sha

pytestmark = pytest.mark.e2e
REPO = stacking.REPO
BUILD_TIMEOUT = 1800  # cold: a build venv from PyPI plus the freeze; cached: under a second
# The libraries a glibc-based image provides (Debian's libc6 and the like); the bundle may
# need these from the image, nothing else.
GLIBC = re.compile(r"^(ld-linux[-\w.]*\.so\.\d+|lib(c|m|dl|pthread|rt|util|resolv|anl)\.so\.\d+)$")
# In-chroot locations, as the injector mounts them in a pod.
TLS_DIR = "/var/run/secrets/cloudtaser/tls"  # where the injector mounts them
TOKEN = "/var/run/secrets/cloudtaser/token"
FILE_DELIVERY = "/etc/demo/password"  # the demo binding's file delivery


@pytest.fixture(scope="module")
def bundle() -> Path:
    result = subprocess.run([str(REPO / "scripts" / "build-bundle")], capture_output=True,
                            text=True, timeout=BUILD_TIMEOUT, check=False)
    assert result.returncode == 0, f"scripts/build-bundle failed:\n{result.stderr}"
    path = Path(result.stdout.strip().splitlines()[-1])
    assert path.is_dir(), result.stdout
    return path


def _elf_files(directory: Path) -> list[Path]:
    found = []
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as f:
                if f.read(4) == b"\x7fELF":
                    found.append(path)
    return found


def _ldd(binary: Path, env: dict[str, str] | None = None) -> dict[str, Path]:
    """The shared libraries ``binary`` loads, by soname, as resolved on this host."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True,
                         env={**os.environ, **(env or {})}).stdout
    libs = {}
    for line in out.splitlines():
        if m := re.match(r"\s*(\S+) => (/\S+)", line):
            libs[m.group(1)] = Path(m.group(2))
        elif m := re.match(r"\s*(/\S+) \(0x", line):  # the dynamic loader
            libs[Path(m.group(1)).name] = Path(m.group(1))
    return libs


def _copy(src: Path, root: Path, at: str | Path | None = None) -> None:
    """Copy the file ``src`` (symlinks followed) to ``at`` (default: the same path) in root."""
    target = root / str(at or src).lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src.resolve(), target)


@contextlib.contextmanager
def _dev_null(root: Path) -> Iterator[None]:
    """/dev/null in the rootfs: a device node, or a bind mount where mknod is not allowed
    (unmounted on the way out, whatever happens)."""
    node = root / "dev" / "null"
    node.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.chmod(node, 0o666)
    except PermissionError:
        node.touch()
        subprocess.run(["mount", "--bind", "/dev/null", str(node)], check=True)
        try:
            yield
        finally:
            subprocess.run(["umount", str(node)], check=False)
        return
    yield


def _make_rootfs(root: Path, bundle: Path) -> None:
    """An 'app image' without Python: dash, cat, sha256sum and the glibc they (and the
    bundle) need; /tmp."""
    tools = {"sh": Path("/bin/sh"), "cat": Path("/bin/cat")}
    sha256sum = shutil.which("sha256sum")
    assert sha256sum, "sha256sum (coreutils) is needed to build the test rootfs"
    tools["sha256sum"] = Path(sha256sum)
    libs: dict[str, Path] = {}
    for name, path in tools.items():
        _copy(path, root, f"/bin/{name}")
        libs.update(_ldd(path))
    # What the bundle loads from outside itself: glibc only (PyInstaller leaves it out). The
    # executable's libraries are resolved before the bootloader points the loader at
    # _internal/, the rest with it; the interposer is loaded into the app.
    internal = {"LD_LIBRARY_PATH": str(bundle / "_internal")}
    carried = {p.name for p in _elf_files(bundle / "_internal")}
    outside: dict[str, Path] = {}
    for elf in _elf_files(bundle):
        loader = internal if elf.is_relative_to(bundle / "_internal") else None
        outside.update({n: p for n, p in _ldd(elf, loader).items()
                        if not (loader and n in carried) and not p.is_relative_to(bundle)})
    foreign = sorted(n for n in outside if not GLIBC.match(n))
    assert not foreign, f"the bundle needs libraries a glibc image may lack: {foreign}"
    libs.update(outside)
    for path in libs.values():
        _copy(path, root)
    (root / "tmp").mkdir(mode=0o1777)
    os.chmod(root / "tmp", 0o1777)


def _pythons(root: Path, skip: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if Path(dirpath, d) != skip]
        found += [os.path.join(dirpath, n) for n in dirnames + filenames
                  if re.fullmatch(r"python[\d.]*", n)]
    return found


def test_bundle_layout(bundle: Path) -> None:
    assert os.access(bundle / "wrapper", os.X_OK)
    assert (bundle / "_internal").is_dir()
    install = (bundle / "install").read_text()
    assert install.startswith("#!/bin/sh\n") and os.access(bundle / "install", os.X_OK)
    info = dict(line.split(": ", 1) for line in (bundle / "BUNDLE-INFO").read_text().splitlines())
    assert info["pyinstaller"] and info["python"].startswith("3.11.")
    # The bundle carries no Python interpreter program, only its library.
    assert not [p for p in bundle.rglob("python*") if p.is_file()]
    # A second run reuses the cache: same directory, no rebuild.
    again = subprocess.run([str(REPO / "scripts" / "build-bundle")], capture_output=True,
                           text=True, timeout=120, check=True)
    assert Path(again.stdout.strip()) == bundle and "cached:" in again.stderr
    printed = subprocess.run([str(REPO / "scripts" / "build-bundle"), "--print-dir"],
                             capture_output=True, text=True, timeout=60, check=True)
    assert Path(printed.stdout.strip()) == bundle


def test_bundle_runs_in_a_rootfs_without_python(
    stack: stacking.Paths, kubectl: Any, bundle: Path, demo_secret: dict[str, str],
    tmp_path: Path,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")
    interposer = bundle / "lib" / "libcloudtaser_interposer.so"
    root = tmp_path / "root"
    _make_rootfs(root, bundle)

    # The pod's mounted files at their in-pod paths: CA, client certificate, token.
    client = stack.cert("wrapper-demo")
    _copy(stack.ca, root, f"{TLS_DIR}/ca.crt")
    _copy(client.cert, root, f"{TLS_DIR}/tls.crt")
    _copy(client.key, root, f"{TLS_DIR}/tls.key")
    token = kubectl("create", "token", provisioning.DEMO_ACCOUNT, "-n",
                    provisioning.DEMO_NAMESPACE, "--audience", "openbao")
    (root / TOKEN.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    (root / TOKEN.lstrip("/")).write_text(token)
    config = compiled_config(stack, TOKEN)
    config = config.model_copy(update={"sources": [s.model_copy(update={
        "ca_file": f"{TLS_DIR}/ca.crt", "client_cert_file": f"{TLS_DIR}/tls.crt",
        "client_key_file": f"{TLS_DIR}/tls.key"}) for s in config.sources]})
    # The file delivery is part of what the bundle must serve: no interposer, no pass.
    assert interposer.is_file(), f"{interposer} missing: scripts/build-bundle must build it"

    # The init container's step, twice (idempotent): install into the in-memory volume.
    for _ in range(2):
        installed = subprocess.run([str(bundle / "install"), str(root / "cloudtaser")],
                                   capture_output=True, text=True, timeout=60, check=False)
        assert installed.returncode == 0, installed.stderr
    installed_dir = root / "cloudtaser"
    copied = sorted(str(p.relative_to(installed_dir)) for p in installed_dir.rglob("*"))
    assert copied == sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*"))
    assert _pythons(root, skip=root / "cloudtaser") == []

    script = "; ".join([
        'printf %s "$DEMO_PASSWORD" | sha256sum',
        f"cat {FILE_DELIVERY} | sha256sum",
        'echo "pid $$"',
        'echo "preload ${LD_PRELOAD:-}"',
        # the frozen runtime's variables must not reach the app (values never printed)
        'case "$(export -p)" in *LD_LIBRARY_PATH*|*_PYI_*|*_MEIPASS*) echo leaked;; '
        '*) echo clean;; esac',
    ])
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/",
           CONFIG_ENV: config.model_dump_json(exclude_none=True)}
    with _dev_null(root):
        proc = subprocess.Popen(
            [shutil.which("chroot") or "/usr/sbin/chroot", str(root),
             "/cloudtaser/wrapper", "--deadline", "20", "--", "/bin/sh", "-c", script],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            stdout, stderr = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for value in demo_secret.values():
        if len(value) >= 8:
            assert value not in stdout + stderr, "a secret value was printed"
    assert proc.returncode == 0, stderr
    lines = stdout.splitlines()
    want = sha(demo_secret["password"])
    hashes = [line.split()[0] for line in lines if re.fullmatch(r"[0-9a-f]{64}\s+-", line)]
    assert hashes == [want, want], stdout
    assert f"pid {proc.pid}" in lines, "the app must keep the wrapper's PID (exec, not fork)"
    assert lines[-1] == "clean", "PyInstaller's environment leaked into the app"
    assert "preload /cloudtaser/lib/libcloudtaser_interposer.so" in lines, stdout
    assert not (root / FILE_DELIVERY.lstrip("/")).exists()  # served, never on disk
    assert "secret(s) fetched" in stderr and "audit mode" in stderr, stderr
