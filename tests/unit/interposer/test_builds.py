"""Every build (amd64/arm64 x glibc/musl) delivers env and file lines to a real program.

The program (deliver.c) is compiled for each build with that build's compiler and run as
Target (tests/harness/interposer.py) says: natively, in a glibc-free musl chroot, or under
qemu-user. Checks that depend on the host kernel seeing the program itself are made where they
can fail:
  - /proc/self/environ: under qemu-user the guest's environment is a copy qemu makes in guest
    memory, and /proc/self/environ is qemu's own, which never held the value either way;
  - exec: without binfmt_misc (not mounted here) the host kernel cannot exec the aarch64
    program an emulated process execs, so the exec'd-child check runs on amd64 only.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.harness.interposer import (
    MUSL_LOADERS,
    QEMU,
    TIMEOUT,
    Target,
    env_name,
    facts,
    secret_path,
    secret_value,
)


def _report(target: Target, deliver: str, mode: str) -> tuple[dict[str, str], dict[str, object]]:
    """Runs `deliver MODE NAMES FDS` with two env lines, a file and an sdk line. The sdk line
    shares the second env line's fd, so that fd must stay open while the first is closed. The
    first NAME has a placeholder "NAME=" in the environment (as the wrapper passes it), the
    second none."""
    served = target.served()
    name, shared_name = env_name(), env_name()
    value, shared, content = secret_value(40), secret_value(33), secret_value(20)
    path = secret_path("tls.key")
    env_fd = served.env(name, value)
    shared_fd = served.env(shared_name, shared)
    served.lines.append(f"sdk {shared_fd} db-password")
    file_fd = served.file(path, content)
    try:
        env = served.environ()
        env[name] = ""
        result = served.run(
            [deliver, mode, f"{name},{shared_name}", f"{env_fd},{shared_fd}"], env=env
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr == b""
        file_result = served.run([deliver, "file", path])
    finally:
        served.close()
    info: dict[str, object] = {
        "name": name,
        "shared_name": shared_name,
        "value": value,
        "shared": shared,
        "content": content,
        "env_fd": env_fd,
        "shared_fd": shared_fd,
        "rest": f"sdk {shared_fd} db-password\nfile {file_fd} {path}".encode().hex(),
        "file": facts(file_result.stdout).get("file"),
        "libc": target.libc,
    }
    return facts(result.stdout), info


def _check(out: dict[str, str], info: dict[str, object], prefix: str = "") -> None:
    value, shared = info["value"], info["shared"]
    assert isinstance(value, bytes) and isinstance(shared, bytes)
    assert out[f"{prefix}get {info['name']}"] == value.hex()
    assert out[f"{prefix}get {info['shared_name']}"] == shared.hex()
    assert out[f"{prefix}manifest"] == info["rest"]  # the env lines are consumed
    assert out[f"{prefix}fd {info['env_fd']}"] == "closed"
    assert out[f"{prefix}fd {info['shared_fd']}"] == "open"  # the sdk line still names it
    assert out[f"{prefix}dumpable"] == "0"
    # main's envp: the placeholder's slot now points at the value. musl hands main the initial
    # array, which has no slot for a NAME without placeholder; glibc hands it environ.
    assert out[f"{prefix}envp {info['name']}"] == value.hex()
    without_slot = "unset" if info["libc"] == "musl" and prefix != "exec " else shared.hex()
    assert out[f"{prefix}envp {info['shared_name']}"] == without_slot


def test_env_and_file_lines_are_delivered(target: Target, deliver: str) -> None:
    out, info = _report(target, deliver, "report")
    _check(out, info)
    content = info["content"]
    assert isinstance(content, bytes) and info["file"] == content.hex()
    if not target.emulated:
        assert out[f"environ {info['name']}"] == "0"
        assert out[f"environ {info['shared_name']}"] == "0"


def test_a_forked_child_sees_the_values(target: Target, deliver: str) -> None:
    out, info = _report(target, deliver, "fork")
    _check(out, info, "child ")
    _check(out, info)
    assert "child failed" not in " ".join(out)
    if not target.emulated:
        assert out[f"child environ {info['name']}"] == "0"


def test_an_execed_child_inherits_the_values_in_its_environment(
    target: Target, deliver: str
) -> None:
    if target.emulated:
        pytest.skip(
            "binfmt_misc is not mounted here: the host kernel cannot exec the aarch64 "
            "program that a process under qemu-user execs"
        )
    out, info = _report(target, deliver, "exec")
    _check(out, info, "exec ")
    _check(out, info)
    # The exec'd child got NAME=value through envp, as any variable: in its initial area.
    # (This is also the control that the environ scan finds a value where there is one.)
    assert out[f"exec environ {info['name']}"] == "1"
    assert out[f"environ {info['name']}"] == "0"


def test_a_malformed_manifest_stops_the_app_before_main(target: Target, deliver: str) -> None:
    served = target.served()
    value = secret_value()
    fd = served.env(env_name(), value)
    try:
        result = served.run(
            [deliver, "report", "-", "-"],
            manifest=f"{served.lines[0]}\nsdk {fd} a\nfile {fd} relative/path",
        )
    finally:
        served.close()
    assert result.returncode == 78
    assert result.stdout == b""  # main never ran
    assert result.stderr == (
        b"cloudtaser interposer: CLOUDTASER_FDS line 3: file NAME is not an absolute path\n"
    )


def test_an_unreadable_env_fd_stops_the_app(target: Target, deliver: str) -> None:
    served = target.served()
    name = env_name()
    try:
        result = served.run([deliver, "report", name, "-"], manifest=f"sdk 3 x\nenv 987 {name}")
    finally:
        served.close()
    assert result.returncode == 78 and result.stdout == b""
    assert result.stderr == (
        b"cloudtaser interposer: CLOUDTASER_FDS line 2: cannot read the "
        b"env line's fd: Bad file descriptor\n"
    )


def test_nothing_to_serve_still_makes_the_app_non_dumpable(target: Target, deliver: str) -> None:
    served = target.served()
    env = served.environ()
    del env["CLOUDTASER_FDS"]
    assert facts(served.run([deliver, "report", "-", "-"], env=env).stdout)["dumpable"] == "0"
    del env["LD_PRELOAD"]  # control: the same program without the library
    assert facts(served.run([deliver, "report", "-", "-"], env=env).stdout)["dumpable"] == "1"


def test_the_musl_chroot_holds_no_glibc(target: Target, deliver: str) -> None:
    if not target.chrooted:
        pytest.skip("glibc builds run against glibc")
    files = sorted(str(p.relative_to(target.root)) for p in target.root.rglob("*") if p.is_file())
    want = {f"lib/{MUSL_LOADERS[target.arch]}", "lib/libcloudtaser-musl.so", "bin/deliver"}
    if target.emulated:
        want.add(QEMU)
    assert set(files) - {"bin/manifest_check"} == want
    assert not any("libc.so.6" in f or "ld-linux" in f for f in files)


def test_the_library_links_only_what_its_libc_provides(target: Target) -> None:
    """glibc: only old symbol versions, so that images with an older glibc than the build
    machine load it (libdl.so.2 by name for dlsym before 2.34); musl: libc.so only."""
    if shutil.which("readelf") is None:
        pytest.skip("needs readelf (binutils)")
    dynamic = subprocess.run(
        ["readelf", "-d", "--dyn-syms", "-V", str(target.library)],
        check=True,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    ).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^]]+)\]", dynamic)
    machine = subprocess.run(
        ["readelf", "-h", str(target.library)],
        check=True,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    ).stdout
    assert ("AArch64" if target.arch == "arm64" else "X86-64") in machine
    versions = {
        tuple(int(part) for part in v.split(".")) for v in re.findall(r"GLIBC_([0-9.]+)", dynamic)
    }
    if target.libc == "musl":
        assert needed == ["libc.so"] and not versions
        return
    assert needed == ["libdl.so.2", "libc.so.6"]
    newest = (2, 14) if target.arch == "amd64" else (2, 17)  # aarch64 glibc began at 2.17
    assert versions and max(versions) <= newest, sorted(versions)
