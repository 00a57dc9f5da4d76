"""The file-delivery interposer (LD_PRELOAD), proved with real programs.

Each test puts random secrets in real memfd_secret fds (or the sealed/unsealed memfd the
wrapper falls back to), passes them to a child with the CLOUDTASER_FDS manifest and
LD_PRELOAD (the host's glibc build), and checks what a C program, Python, cat, wc, ls and sh
see. Every run also checks that no secret (raw or hex) reached the child's stderr. The other
builds (musl, arm64) are proved in test_builds.py.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.interposer import (
    KINDS,
    TIMEOUT,
    Served,
    fill,
    new_secret_fd,
    secret_path,
    secret_value,
)

PROBE_SOURCE = Path(__file__).with_name("probe.c")


@pytest.fixture(scope="session")
def probe(library: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("probe") / "probe"
    subprocess.run(
        [
            "gcc",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pthread",
            "-o",
            str(out),
            str(PROBE_SOURCE),
        ],
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    )
    return out


def probe_all(served: Served, probe: Path, path: str, other: Path, missing: Path) -> dict[str, str]:
    result = served.run([probe, "all", path, other, missing])
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""  # the interposer never prints
    lines = result.stdout.decode().splitlines()
    return dict(line.split("=", 1) for line in lines)


@pytest.mark.parametrize("kind", KINDS)
def test_c_program_sees_the_secret_through_every_libc_call(
    served: Served, probe: Path, tmp_path: Path, kind: str
) -> None:
    value = secret_value(40)
    path = secret_path()
    served.file(path, value, kind)
    other = tmp_path / "other.conf"
    other.write_bytes(b"not a secret\n")
    out = probe_all(served, probe, path, other, tmp_path / "missing")

    want = value.hex()
    for key in (
        "open",
        "open64",
        "openat",
        "openat64",
        "__open_2",
        "__openat_2",
        "__open64_2",
        "__openat64_2",
        "open_creat",
        "fopen",
        "fopen64",
        "pread",
        "mmap",
        "relative",
        "relative_dots",
        "absolute_dots",
        "openat_dirfd",
    ):
        assert out[key] == want, key
    assert out["lseek_read"] == value[1:].hex()
    assert out["fstat"] == f"{len(value)} 400" and out["seek_end"] == str(len(value))
    # the copy is sealed, and CLOEXEC exactly when asked for (O_CLOEXEC, fopen "e")
    assert out["write"] == out["ftruncate"] == out["mmap_shared_write"] == "EPERM"
    assert (out["cloexec"], out["cloexec_requested"]) == ("0", "1")
    assert (out["fopen_cloexec"], out["fopen64_cloexec"]) == ("0", "1")
    # a regular file, mode 0400, owned by the process, st_size = the secret's length
    regular = f"{len(value)} 100400"
    for key in (
        "stat",
        "lstat",
        "fstatat",
        "fstatat_nofollow",
        "__xstat",
        "__lxstat",
        "__fxstatat",
        "statx",
        "fstatat_dirfd",
    ):
        assert out[key] == f"{regular} 1", key
    assert out["stat64"] == out["lstat64"] == regular
    assert out["access_f"] == out["access_r"] == out["faccessat_r"] == out["euidaccess_r"] == "OK"
    assert out["access_w"] == out["access_x"] == out["faccessat_w"] == out["eaccess_w"] == "EACCES"
    # never writable, never a directory
    for key in ("open_wronly", "open_rdwr", "open_trunc", "creat"):
        assert out[key] == "!EACCES", key
    assert out["fopen_w"] == out["fopen_rplus"] == out["fopen_a"] == "EACCES"
    assert (out["open_excl"], out["open_directory"]) == ("!EEXIST", "!ENOTDIR")
    # documented: a trailing '/' or '.' never matches (the kernel would say ENOTDIR)
    assert out["trailing_slash"] == out["trailing_dot"] == "!ENOENT"
    # everything else is the real file system
    assert out["other_open"] == out["other_fopen"] == b"not a secret\n".hex()
    assert out["other_stat"] == "13 100644 1" and out["other_access_w"] == "OK"
    assert out["missing_open"] == out["missing_stat"] == out["missing_lstat"] == "!ENOENT"
    assert out["missing_fopen"] == out["missing_access"] == "ENOENT"
    assert out["null_open"] == "EFAULT"
    assert not os.path.exists(path)  # nothing was written to disk


def _interpreters() -> list[str]:
    found = [sys.executable]
    system = shutil.which("python3", path="/usr/bin:/bin")
    if system and os.path.realpath(system) != os.path.realpath(sys.executable):
        found.append(system)
    return found


PYTHON_READER = """
import os, pathlib, sys
p = sys.argv[1]
data = open(p, "rb").read()
with open(p) as f:
    text = f.read()
print(data.hex())
print(text == data.decode(), pathlib.Path(p).read_bytes() == data)
print(os.stat(p).st_size, os.path.isfile(p), os.path.exists(p), oct(os.stat(p).st_mode))
print(os.access(p, os.R_OK), os.access(p, os.W_OK))
try:
    open(p, "w")
except PermissionError:
    print("write refused")
"""


@pytest.mark.parametrize("python", _interpreters())
@pytest.mark.parametrize("kind", KINDS)
def test_python_program_reads_the_file(served: Served, python: str, kind: str) -> None:
    value = secret_value(32)
    path = secret_path("db.password")
    served.file(path, value, kind)
    result = served.run([python, "-c", PYTHON_READER, path])
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines() == [
        value.hex(),
        "True True",
        f"{len(value)} True True 0o100400",
        "True False",
        "write refused",
    ]


@pytest.mark.kernel
def test_cat_wc_ls_and_children_of_the_app(served: Served) -> None:
    value = secret_value(50)
    path = secret_path("tls.key")
    served.file(path, value, "memfd_secret")

    assert served.run(["cat", path]).stdout == value
    assert served.run(["wc", "-c", path]).stdout == f"{len(value)} {path}\n".encode()
    # the shell's redirection opens the file, and the child (wc) inherits fds and manifest
    redirected = served.run(["sh", "-c", 'wc -c < "$1"', "sh", path])
    assert redirected.stdout.strip() == str(len(value)).encode()
    assert served.run(["sh", "-c", 'cat "$1" | cat', "sh", path]).stdout == value
    listing = served.run(["ls", "-ln", path]).stdout.decode()
    assert listing.startswith("-r-------- 1 ") and f" {len(value)} " in listing
    assert f" {os.geteuid()} {os.getegid()} " in listing


@pytest.mark.kernel
def test_other_paths_behave_normally(served: Served, tmp_path: Path) -> None:
    served.file(secret_path(), secret_value(), "memfd_secret")
    real = tmp_path / "real.txt"
    real.write_bytes(b"real contents\n")
    assert served.run(["cat", real]).stdout == b"real contents\n"
    assert served.run(["wc", "-c", real]).stdout == f"14 {real}\n".encode()
    missing = served.run(["cat", tmp_path / "missing"])
    assert missing.returncode == 1 and b"No such file or directory" in missing.stderr
    written = served.run(["sh", "-c", 'echo hi > "$1" && cat "$1"', "sh", tmp_path / "new.txt"])
    assert written.stdout == b"hi\n"


@pytest.mark.kernel
def test_writing_the_secret_path_is_refused(served: Served) -> None:
    value = secret_value()
    path = secret_path()
    served.file(path, value, "memfd_secret")
    shell = served.run(["sh", "-c", 'echo overwritten > "$1"', "sh", path])
    assert shell.returncode != 0 and b"Permission denied" in shell.stderr
    tee = served.run(["tee", path], stdin=b"overwritten")
    assert tee.returncode != 0 and b"Permission denied" in tee.stderr
    assert served.run(["cat", path]).stdout == value
    assert not os.path.exists(path)


class Reader:
    """A live process that opens the secret path anew for every line it reads on stdin."""

    def __init__(self, served: Served, probe: Path, path: str) -> None:
        self.served = served
        self.process = subprocess.Popen(
            [os.fspath(probe), "reader", path],
            env=served.environ(),
            pass_fds=served.fds,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def read(self) -> bytes:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(b"\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline().decode().strip()
        assert line.startswith("read="), line
        return bytes.fromhex(line[len("read=") :])

    def close(self) -> None:
        _, stderr = self.process.communicate(timeout=TIMEOUT)
        assert self.process.returncode == 0
        self.served.check_stderr(stderr)
        assert stderr == b""


@pytest.mark.kernel
def test_rewriting_memfd_secret_in_place_is_seen_by_the_next_open(
    served: Served, probe: Path
) -> None:
    first = secret_value(32)
    path = secret_path()
    fd = served.file(path, first, "memfd_secret")
    reader = Reader(served, probe, path)
    try:
        assert reader.read() == first
        second = secret_value(32)  # memfd_secret keeps its size once set
        served.remember(second)
        fill(fd, second)
        assert reader.read() == second
    finally:
        reader.close()


def test_rewriting_a_memfd_with_another_size_is_seen_by_the_next_open(
    served: Served, probe: Path
) -> None:
    values = [secret_value(32), secret_value(100), secret_value(9), b""]
    path = secret_path()
    fd = served.file(path, values[0], "memfd")  # the refresher's unsealed fallback
    reader = Reader(served, probe, path)
    try:
        assert reader.read() == values[0]
        for value in values[1:]:
            served.remember(value)
            fill(fd, value)
            assert reader.read() == value
    finally:
        reader.close()


@pytest.mark.parametrize("kind", KINDS)
def test_binary_secret_arrives_byte_exact(served: Served, probe: Path, kind: str) -> None:
    value = secrets.token_bytes(3000) + b"\0\n\0"
    path = secret_path()
    served.file(path, value, kind, sealed=kind == "memfd")
    result = served.run([probe, "reader", path], stdin=b"\n")
    assert result.stdout.decode().strip() == f"read={value.hex()}"
    assert served.run(["cat", path]).stdout == value


@pytest.mark.parametrize("kind", KINDS)
def test_many_threads_read_consistent_content(served: Served, probe: Path, kind: str) -> None:
    value = secret_value(64)
    path = secret_path()
    served.file(path, value, kind)
    result = served.run([probe, "threads", path, "8", "1000"])
    assert result.returncode == 0 and result.stderr == b""
    assert result.stdout.decode().splitlines() == [f"reference={value.hex()}", "mismatches=0"]


def test_the_pass_through_path_allocates_nothing(
    served: Served, probe: Path, tmp_path: Path
) -> None:
    """open/open64/openat/openat64/__open*_2/stat/lstat/stat64/fstatat/statx/access/faccessat/
    euidaccess of paths that are not secrets, 200 rounds, with malloc & co. counted: none.
    DECOY shares the secret's file name (first byte and length pass the quick filter), so the
    full, normalised compare runs too, absolute and relative (getcwd into a stack buffer)."""
    path = secret_path("password")
    served.file(path, secret_value(), "memfd")
    other = tmp_path / "other.conf"
    other.write_bytes(b"not a secret\n")
    decoy = tmp_path / "elsewhere" / "password"
    decoy.parent.mkdir()
    decoy.write_bytes(b"a decoy\n")
    result = served.run([probe, "noalloc", other, decoy, "200"])
    assert result.returncode == 0, result.stderr
    out = dict(line.split("=", 1) for line in result.stdout.decode().splitlines())
    assert out["failures"] == "0"  # every call reached the real file
    assert out["allocs"] == "0"
    assert int(out["control_allocs"]) > 0  # the counter does see libc's fopen allocate


@pytest.mark.parametrize("kind", KINDS)
def test_empty_secret_is_an_empty_file(served: Served, probe: Path, kind: str) -> None:
    path = secret_path()
    served.file(path, b"", kind)
    assert served.run(["cat", path]).stdout == b""
    assert served.run(["wc", "-c", path]).stdout == f"0 {path}\n".encode()
    assert served.run([probe, "reader", path], stdin=b"\n").stdout == b"read=\n"
    script = "import os, sys; p = sys.argv[1]; print(repr(open(p).read()), os.stat(p).st_size)"
    python = served.run([sys.executable, "-c", script, path])
    assert python.stdout == b"'' 0\n"


@pytest.mark.kernel
def test_several_entries_sdk_lines_and_aliases(served: Served, tmp_path: Path) -> None:
    one, two, sdk_only = secret_value(), secret_value(), secret_value()
    path_one, path_two = secret_path("one"), secret_path("two")
    fd_one = served.file(path_one, one, "memfd_secret")
    fd_two = served.file(path_two, two, "memfd")
    sdk_fd = new_secret_fd(sdk_only, "memfd")
    served.fds.append(sdk_fd)
    served.remember(sdk_only)
    sdk_path = secret_path("sdk")
    alias = path_one.replace("/one", "/./one")  # another NAME, the same normalised path
    manifest = "\n".join(
        [
            f"sdk {sdk_fd} db-password",
            f"sdk {sdk_fd} {sdk_path}",  # an sdk name is never a file
            f"file {fd_one} {path_one}",
            f"file {fd_two} {path_two}",
            f"file {sdk_fd} {alias}",  # the first line for a path wins
            "",
        ]
    )
    assert served.run(["cat", path_one], manifest).stdout == one
    assert served.run(["cat", alias], manifest).stdout == one
    assert served.run(["cat", path_two], manifest).stdout == two
    assert served.run(["cat", sdk_path], manifest).returncode == 1
    # no manifest at all, or an empty one: the library serves nothing
    real = tmp_path / "real"
    real.write_bytes(b"x")
    assert served.run(["cat", real], "").stdout == b"x"
    assert served.run(["cat", real], "\n").stdout == b"x"


def test_a_bad_line_anywhere_stops_the_app(served: Served, tmp_path: Path) -> None:
    """Formerly ignored; now the app must not run short of a secret it was promised."""
    value = secret_value()
    path = secret_path()
    fd = served.file(path, value)
    real = tmp_path / "real"
    real.write_bytes(b"x")
    for bad in ("file x /etc/bad-fd", "file 5", "garbage", f"file {fd} {path}"):
        result = served.run(["cat", real], f"file {fd} {path}\nsdk {fd} a\n{bad}")
        assert (result.returncode, result.stdout) == (78, b""), bad
        assert result.stderr.startswith(b"cloudtaser interposer: CLOUDTASER_FDS line 3: ")
        assert result.stderr.count(b"\n") == 1 and bad.encode() not in result.stderr


def test_more_file_lines_than_the_table_holds_stop_the_app(served: Served, tmp_path: Path) -> None:
    fd = served.file(secret_path(), secret_value())
    real = tmp_path / "real"
    real.write_bytes(b"x")
    lines = [f"file {fd} /etc/ct-many/{i}" for i in range(257)]
    assert served.run(["cat", real], "\n".join(lines[:256])).stdout == b"x"
    result = served.run(["cat", real], "\n".join(lines))
    assert result.returncode == 78 and b" line 257: more file lines than" in result.stderr


@pytest.mark.kernel
def test_a_replaced_or_closed_secret_fd_fails_with_eio(
    served: Served, probe: Path, tmp_path: Path
) -> None:
    value = secret_value()
    path = secret_path()
    fd = served.file(path, value, "memfd_secret")
    decoy = tmp_path / "decoy"
    decoy.write_bytes(b"decoy contents")
    result = served.run([probe, "swap", path, str(fd), decoy])
    assert result.returncode == 0
    assert result.stdout.decode().splitlines() == [
        "swapped_open=!EIO",
        "swapped_stat=!EIO",
        "closed_open=!EIO",
    ]


EARLY_LIBRARY = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
__attribute__((constructor)) static void early(void)
{
    char buf[256];
    int fd = open(getenv("EARLY_PATH"), O_RDONLY);
    ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf) : -1;
    printf("early=");
    for (ssize_t i = 0; i < n; i++)
        printf("%02x", (unsigned char)buf[i]);
    printf("\n");
    fflush(stdout);
    if (fd >= 0)
        close(fd);
}
"""


@pytest.mark.parametrize("ours_first", [True, False])
def test_another_librarys_constructor_is_served_whatever_the_order(
    served: Served, tmp_path: Path, ours_first: bool
) -> None:
    """The table is built lazily when another constructor calls open() before ours ran."""
    source = tmp_path / "early.c"
    source.write_text(EARLY_LIBRARY)
    early = tmp_path / "early.so"
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-o", str(early), str(source)],
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    )
    value = secret_value()
    path = secret_path()
    served.file(path, value, "memfd")
    order = [str(served.library), str(early)]
    env = served.environ()
    env["LD_PRELOAD"] = ":".join(order if ours_first else reversed(order))
    env["EARLY_PATH"] = path
    result = subprocess.run(
        ["cat", path],
        env=env,
        pass_fds=served.fds,
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )
    served.check_stderr(result.stderr)
    assert result.stdout == f"early={value.hex()}\n".encode() + value
