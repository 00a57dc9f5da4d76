"""env lines and non-dumpability, proved with real programs (sh, Python, cat) on this host.

An env line's value must reach getenv() (and what the shell and Python build from environ)
while /proc/PID/environ, which shows the process's initial environment area, never holds it.
A process the library is loaded into is non-dumpable, so that an in-pod process of the same
uid without CAP_SYS_PTRACE is refused by the kernel: checked with a real attacker, and the
same attacker against the same program without the library as the control.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.interposer import (
    KINDS,
    PROGRAMS,
    TIMEOUT,
    Served,
    env_name,
    secret_path,
    secret_value,
)


@pytest.mark.parametrize("kind", KINDS)
def test_shell_and_python_read_the_value_proc_environ_never_shows_it(
    served: Served, kind: str
) -> None:
    name, value = env_name(), secret_value(48)
    served.env(name, value, kind)
    assert served.run(["sh", "-c", f'printf %s "${name}"']).stdout == value
    assert served.run(["bash", "-c", f'printf %s "${name}"']).stdout == value  # main's envp
    script = f"import os; print(os.environ['{name}'], os.getenv('{name}'), sep='\\n')"
    assert served.run([sys.executable, "-c", script]).stdout == value + b"\n" + value + b"\n"
    # cat reading its own environ, and the shell's read from outside by cat: no value
    own = served.run(["cat", "/proc/self/environ"])
    assert own.returncode == 0 and b"LD_PRELOAD=" in own.stdout and value not in own.stdout
    shell = served.run(["sh", "-c", 'cat /proc/$$/environ; printf "\\n%s" "$CLOUDTASER_FDS"'])
    assert shell.returncode == 0 and value not in shell.stdout
    assert shell.stdout.endswith(b"\n")  # CLOUDTASER_FDS is now empty: its only line was env
    # control: a program the shell execs gets NAME=value through envp, in its initial area
    assert value in served.run(["sh", "-c", "exec cat /proc/self/environ"]).stdout


def test_an_env_line_replaces_a_variable_of_the_same_name(served: Served) -> None:
    name, value = env_name(), secret_value()
    served.env(name, value)
    env = served.environ()
    env[name] = "plain value from the pod spec"
    result = served.run(["sh", "-c", f'printf %s "${name}"'], env=env)
    assert result.stdout == value


def test_empty_and_large_values(served: Served) -> None:
    empty, large = env_name(), env_name()
    served.env(empty, b"")
    value = secret_value(100_000)  # under MAX_ARG_STRLEN, so children can still exec
    served.env(large, value)
    script = (
        f"import os; v = os.environ['{large}']; "
        f"print(repr(os.environ['{empty}']), len(v), v == open(0).read())"
    )
    result = served.run([sys.executable, "-c", script], stdin=value)
    assert result.stdout == f"'' {len(value)} True\n".encode()


def test_a_value_with_a_nul_byte_stops_the_app(served: Served) -> None:
    served.env(env_name(), b"before\0after-the-nul")
    result = served.run(["sh", "-c", "echo main ran"])
    assert (result.returncode, result.stdout) == (78, b"")
    assert result.stderr == (
        b"cloudtaser interposer: CLOUDTASER_FDS line 1: the env value holds a NUL byte\n"
    )


@pytest.mark.kernel
def test_one_fd_delivered_as_a_file_and_an_env_variable(served: Served) -> None:
    name, value, path = env_name(), secret_value(), secret_path()
    fd = served.file(path, value, "memfd_secret")
    served.lines.append(f"env {fd} {name}")
    script = f'printf "%s|" "${name}"; cat "$1"; printf "|%s" "$CLOUDTASER_FDS"'
    result = served.run(["sh", "-c", script, "sh", path])
    assert result.stdout == value + b"|" + value + f"|file {fd} {path}".encode()


EARLY_LIBRARY = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
extern char **environ;
static const char *direct(const char *name) /* environ itself: no getenv, no interposed call */
{
    size_t n = strlen(name);
    for (char **e = environ; *e != NULL; e++)
        if (strncmp(*e, name, n) == 0 && (*e)[n] == '=')
            return *e + n + 1;
    return NULL;
}
__attribute__((constructor)) static void early(void)
{
    const char *name = direct("EARLY_NAME");
    int seen = direct(name) != NULL;
    printf("environ=%d getenv=%s\n", seen, getenv(name) != NULL ? "set" : "unset");
    fflush(stdout);
}
"""


@pytest.mark.parametrize("ours_first", [True, False])
def test_a_constructor_that_runs_before_ours(
    served: Served, tmp_path: Path, ours_first: bool
) -> None:
    """glibc runs LD_PRELOAD constructors last entry first: with ours first (as the wrapper
    prepends it), the other library's constructor runs before ours. Its getenv() initialises
    us and sees the value; reading environ directly before that cannot (the documented
    limitation). Ours last: our constructor has run, both see it."""
    source = tmp_path / "early.c"
    source.write_text(EARLY_LIBRARY)
    early = tmp_path / "early.so"
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-o", str(early), str(source)],
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    )
    name, value = env_name(), secret_value()
    served.env(name, value)
    env = served.environ()
    order = [str(served.library), str(early)]
    env["LD_PRELOAD"] = ":".join(order if ours_first else reversed(order))
    env["EARLY_NAME"] = name
    result = served.run(["sh", "-c", f'printf %s "${name}"'], env=env)
    environ_seen = 0 if ours_first else 1
    assert result.stdout == f"environ={environ_seen} getenv=set\n".encode() + value


ATTACKER = r"""
import ctypes, json, os, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
victim = subprocess.Popen(sys.argv[1:], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
pid = int(victim.stdout.readline().split()[1])
addr = int(victim.stdout.readline().split()[1], 16)
marker, found = os.environ["MARKER"].encode(), {}
def attempt(key, fn):
    try:
        found[key] = fn()
    except OSError as e:
        found[key] = os.strerror(e.errno)
def environ():
    with open(f"/proc/{pid}/environ", "rb") as f:
        return "marker" if marker in f.read() else "no marker"
def mem():
    with open(f"/proc/{pid}/mem", "rb") as f:
        return os.pread(f.fileno(), 9, addr).decode()
def vm_readv():
    buf = ctypes.create_string_buffer(9)
    local, remote = IoVec(ctypes.addressof(buf), 9), IoVec(addr, 9)
    if libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0) != 9:
        raise OSError(ctypes.get_errno(), "")
    return buf.raw.decode()
def seize():
    if libc.ptrace(0x4206, pid, None, None) != 0:  # PTRACE_SEIZE
        raise OSError(ctypes.get_errno(), "")
    return "attached"
for key, fn in (("environ", environ), ("mem", mem), ("vm_readv", vm_readv), ("ptrace", seize)):
    attempt(key, fn)
victim.stdin.close()
victim.wait()
print(json.dumps(found))
"""


@pytest.fixture
def world_readable(library: Path) -> Iterator[Path]:
    """The library and the victim where uid 65534 can load and run them."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the attacker and its victim as another uid")
    place = Path(tempfile.mkdtemp(prefix="ct-interposer-"))
    try:
        place.chmod(0o755)
        shutil.copy2(library, place / library.name)
        subprocess.run(
            ["gcc", "-O2", "-o", str(place / "victim"), str(PROGRAMS / "deliver.c")],
            check=True,
            capture_output=True,
            timeout=TIMEOUT,
        )
        yield place
    finally:
        shutil.rmtree(place)


@pytest.mark.parametrize("preload", [True, False], ids=["with the library", "control"])
def test_a_same_uid_process_without_cap_sys_ptrace_is_refused(
    world_readable: Path, preload: bool
) -> None:
    """The kubectl-exec attacker: same uid as the app, no capabilities (root dropping to uid
    65534 clears them), and the app's parent, so that Yama's ptrace_scope=1 would not be what
    refuses it. It tries /proc/PID/environ, /proc/PID/mem, process_vm_readv and PTRACE_SEIZE
    on an app with no secrets at all: the library is loaded into every app."""
    marker = secret_value(16).decode()
    env = {"PATH": "/usr/bin:/bin", "MARKER": marker}
    if preload:
        env["LD_PRELOAD"] = str(world_readable / "libcloudtaser-glibc.so")
    result = subprocess.run(
        ["/usr/bin/python3", "-c", ATTACKER, str(world_readable / "victim"), "hold"],
        env=env,
        user=65534,
        group=65534,
        extra_groups=[],
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    if preload:
        assert found == {
            "environ": "Permission denied",
            "mem": "Permission denied",
            "vm_readv": "Operation not permitted",
            "ptrace": "Operation not permitted",
        }
    else:
        assert found == {
            "environ": "marker",
            "mem": "cloudtase",
            "vm_readv": "cloudtase",
            "ptrace": "attached",
        }
