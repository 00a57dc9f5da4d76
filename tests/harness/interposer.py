"""For the interposer tests (tests/unit/interposer): the four builds, and real programs run
against them. A pytest plugin (tests/conftest.py loads it): ``library``, ``served``, ``target``
and ``deliver``; the C test programs (deliver.c, ...) are in PROGRAMS.

`Served` holds secret fds (real memfd_secret, or the sealed/unsealed memfd the wrapper falls
back to) and the CLOUDTASER_FDS manifest describing them, and runs children with the
interposer preloaded; every run checks that no secret (raw or hex) reached the child's stderr.

`Target` is one build of the library (amd64/arm64 x glibc/musl) with a way to compile a test
program for it and run that program:
  - amd64 glibc: directly on this host;
  - amd64 musl: in a chroot that holds only the musl loader, the program and the library (no
    glibc at all), with /proc mounted in a private mount namespace;
  - arm64 glibc: qemu-aarch64-static -L /usr/aarch64-linux-gnu (Debian's cross libc);
  - arm64 musl: the musl chroot with qemu-aarch64-static as its only other file.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import platform
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROGRAMS = ROOT / "tests" / "unit" / "interposer"  # the C programs the tests build
INTERPOSER_DIR = ROOT / "wrapper" / "interposer"
SYS_MEMFD_SECRET = 447
TIMEOUT = 120
HOST_ARCH = "arm64" if platform.machine() in ("aarch64", "arm64") else "amd64"
QEMU = "qemu-aarch64-static"
ARM64_GLIBC_SYSROOT = Path("/usr/aarch64-linux-gnu")
CLONE_NEWNS = 0x00020000
MS_REC, MS_PRIVATE = 0x4000, 0x40000

_libc = ctypes.CDLL(None, use_errno=True)

KINDS = [pytest.param("memfd_secret", marks=pytest.mark.kernel), "memfd"]


def library_path(arch: str = HOST_ARCH, libc: str = "glibc") -> Path:
    """Where the Makefile puts a build (the layout the Go wrapper relies on)."""
    return INTERPOSER_DIR / "build" / arch / f"libcloudtaser-{libc}.so"


def secret_value(length: int = 24) -> bytes:
    """Random printable bytes without a newline (fgets reads the whole value)."""
    return secrets.token_urlsafe(length * 2).encode()[:length]


def fill(fd: int, value: bytes) -> None:
    """Rewrite the secret fd in place, the way the wrapper and a refresher do (mmap)."""
    if os.fstat(fd).st_size != len(value):
        os.ftruncate(fd, len(value))
    if value:
        with mmap.mmap(
            fd, len(value), flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE
        ) as region:
            region[:] = value


def new_secret_fd(value: bytes, kind: str = "memfd", sealed: bool = False) -> int:
    if kind == "memfd_secret":
        fd = _libc.syscall(SYS_MEMFD_SECRET, 0)
        if fd < 0:
            pytest.skip(f"memfd_secret unavailable: {os.strerror(ctypes.get_errno())}")
    else:
        fd = os.memfd_create("cloudtaser-test", os.MFD_ALLOW_SEALING)
    fill(fd, value)
    if sealed:
        fcntl.fcntl(
            fd,
            fcntl.F_ADD_SEALS,
            fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE,
        )
    return int(fd)


def secret_path(name: str = "password") -> str:
    """A path under a directory that does not exist on disk."""
    path = f"/etc/ct-test-{secrets.token_hex(6)}/{name}"
    assert not os.path.exists(os.path.dirname(path))
    return path


def env_name() -> str:
    return f"CT_TEST_{secrets.token_hex(4).upper()}"


def facts(stdout: bytes) -> dict[str, str]:
    """deliver.c's "KEY... VALUE" lines as {"KEY...": "VALUE"}."""
    out: dict[str, str] = {}
    for line in stdout.decode().splitlines():
        key, _, value = line.rpartition(" ")
        out[key] = value
    return out


def build(target: str) -> None:
    subprocess.run(
        ["make", "-s", "-C", str(INTERPOSER_DIR), target],
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    )


class Served:
    """Secret fds plus the manifest that describes them; runs children with the interposer."""

    def __init__(
        self, library: Path, runner: Callable[..., subprocess.CompletedProcess[bytes]] | None = None
    ) -> None:
        self.library = library
        self.runner = runner
        self.fds: list[int] = []
        self.lines: list[str] = []
        self.values: list[bytes] = []

    def file(self, path: str, value: bytes, kind: str = "memfd", sealed: bool = False) -> int:
        fd = new_secret_fd(value, kind, sealed)
        self.fds.append(fd)
        self.lines.append(f"file {fd} {path}")
        self.remember(value)
        return fd

    def env(self, name: str, value: bytes, kind: str = "memfd") -> int:
        fd = new_secret_fd(value, kind)
        self.fds.append(fd)
        self.lines.append(f"env {fd} {name}")
        self.remember(value)
        return fd

    def remember(self, value: bytes) -> None:
        if len(value) >= 8:
            self.values.append(value)

    def environ(self, manifest: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "CLOUDTASER_FDS")}
        env["LD_PRELOAD"] = str(self.library)
        env["CLOUDTASER_FDS"] = "\n".join(self.lines) if manifest is None else manifest
        return env

    def check_stderr(self, stderr: bytes) -> None:
        for value in self.values:
            assert value not in stderr and value.hex().encode() not in stderr

    def run(
        self,
        argv: Sequence[str | os.PathLike[str]],
        manifest: str | None = None,
        stdin: bytes | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        environ = self.environ(manifest) if env is None else env
        args = [os.fspath(a) for a in argv]
        if self.runner is not None:
            result = self.runner(args, environ, self.fds, stdin)
        else:
            result = subprocess.run(
                args,
                env=environ,
                pass_fds=self.fds,
                input=stdin,
                capture_output=True,
                timeout=TIMEOUT,
                check=False,
            )
        self.check_stderr(result.stderr)
        return result

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)


def _need_toolchain() -> None:
    missing = [tool for tool in ("make", "gcc") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"building the interposer needs {' and '.join(missing)}")


@pytest.fixture(scope="session")
def library() -> Path:
    """The host's glibc build, the one the system's own programs load."""
    _need_toolchain()
    path = library_path()
    build(str(path.relative_to(INTERPOSER_DIR)))
    assert path.is_file()
    return path


@pytest.fixture
def served(library: Path) -> Iterator[Served]:
    s = Served(library)
    yield s
    s.close()


# ---- the four builds ---------------------------------------------------------------------

COMPILERS = {
    ("amd64", "glibc"): ("gcc", "gcc"),
    ("amd64", "musl"): ("musl-gcc", "musl-tools"),
    ("arm64", "glibc"): ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
    ("arm64", "musl"): ("aarch64-linux-musl-gcc", "musl-dev:arm64"),
}
MUSL_LOADERS = {"amd64": "ld-musl-x86_64.so.1", "arm64": "ld-musl-aarch64.so.1"}


def _enter_chroot(root: Path) -> Callable[[], None]:
    """preexec_fn: a private mount namespace with /proc mounted in ROOT, then chroot(ROOT)."""
    proc = os.fsencode(root / "proc")

    def enter() -> None:
        if (
            _libc.unshare(CLONE_NEWNS) != 0
            or _libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0
            or _libc.mount(b"proc", proc, b"proc", 0, None) != 0
        ):
            raise OSError(ctypes.get_errno(), "unshare/mount for the chroot")
        os.chroot(root)
        os.chdir("/")

    return enter


@dataclass
class Target:
    """One build of the library, a compiler for test programs, and a way to run them."""

    arch: str
    libc: str
    compiler: str
    workdir: Path

    @property
    def name(self) -> str:
        return f"{self.arch}-{self.libc}"

    @property
    def library(self) -> Path:
        return library_path(self.arch, self.libc)

    @property
    def emulated(self) -> bool:
        return self.arch != HOST_ARCH

    @property
    def chrooted(self) -> bool:
        return self.libc == "musl"

    @property
    def root(self) -> Path:
        return self.workdir / "root"

    def preload(self) -> str:
        """LD_PRELOAD as the program sees it (inside the chroot for musl)."""
        return "/lib/libcloudtaser-musl.so" if self.chrooted else str(self.library)

    def compile(self, source: Path, name: str, *flags: str) -> str:
        """Builds SOURCE; returns the path to run it by (inside the chroot for musl)."""
        out = self.workdir / name
        subprocess.run(
            [
                self.compiler,
                "-O2",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-I",
                str(INTERPOSER_DIR),
                "-o",
                str(out),
                str(source),
                *flags,
            ],
            check=True,
            capture_output=True,
            timeout=TIMEOUT,
        )
        if not self.chrooted:
            return str(out)
        shutil.copy2(out, self.root / "bin" / name)
        return f"/bin/{name}"

    def run(
        self,
        argv: Sequence[str],
        env: dict[str, str],
        fds: Sequence[int] = (),
        stdin: bytes | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        args = list(argv)
        preexec = None
        if self.emulated:
            prefix = [f"/{QEMU}"] if self.chrooted else [QEMU, "-L", str(ARM64_GLIBC_SYSROOT)]
            args = prefix + args
        if self.chrooted:
            preexec = _enter_chroot(self.root)
        return subprocess.run(
            args,
            env=env,
            pass_fds=list(fds),
            input=stdin,
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
            preexec_fn=preexec,
        )

    def served(self) -> Served:
        return Served(Path(self.preload()), runner=self.run)

    def make_root(self) -> None:
        """The musl chroot: the loader (which is musl's libc), the library, /proc, /bin."""
        if os.geteuid() != 0:
            pytest.skip("the musl chroot needs root (chroot, a mount namespace for /proc)")
        loader = MUSL_LOADERS[self.arch]
        for sub in ("lib", "bin", "proc"):
            (self.root / sub).mkdir(parents=True)
        shutil.copy2(os.path.realpath(f"/lib/{loader}"), self.root / "lib" / loader)
        shutil.copy2(self.library, self.root / "lib" / self.library.name)
        if self.emulated:
            shutil.copy2(shutil.which(QEMU) or QEMU, self.root / QEMU)


def _target(arch: str, libc: str, workdir: Path) -> Target:
    compiler, package = COMPILERS[(arch, libc)]
    if arch == HOST_ARCH and libc == "glibc":
        _need_toolchain()
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} not installed (Debian package {package}; scripts/system-deps)")
    if arch != HOST_ARCH and shutil.which(QEMU) is None:
        pytest.skip(f"{QEMU} not installed (Debian package qemu-user-static)")
    if libc == "musl" and not Path(f"/lib/{MUSL_LOADERS[arch]}").exists():
        pytest.skip(f"no musl loader /lib/{MUSL_LOADERS[arch]} (Debian package musl:{arch})")
    target = Target(arch, libc, compiler, workdir)
    build(str(target.library.relative_to(INTERPOSER_DIR)))
    if target.chrooted:
        target.make_root()
    return target


TARGETS = ["amd64-glibc", "amd64-musl", "arm64-glibc", "arm64-musl"]


@pytest.fixture(scope="session", params=TARGETS)
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Target:
    arch, libc = str(request.param).split("-")
    return _target(arch, libc, tmp_path_factory.mktemp(str(request.param)))


@pytest.fixture(scope="session")
def deliver(target: Target) -> str:
    """deliver.c built for TARGET (dynamic: it loads the library)."""
    return target.compile(PROGRAMS / "deliver.c", "deliver")
