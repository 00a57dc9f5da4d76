"""The protected apps the attack matrix attacks, each in its own pid and mount namespaces.

- ``wrapped``: the real wrapper (tests/harness/wrapper command) fetches the demo secret from the
  running stack's OpenBao (mTLS, a TokenRequest token) and delivers it by env, file and SDK.
- ``dynamic`` / ``static``: no OpenBao (the KVM guest has none): a launcher does what the
  wrapper does after its fetch — the value in a memfd_secret fd, registration, exec — for a
  dynamic app (env as a manifest ``env`` line through the real interposer: its environment area
  holds no value, and the interposer makes it non-dumpable; registered ``exec_environ: clean``)
  or a static one (env in ``envp``, dumpable, ``secret``).

Each app keeps the secret in every place a wrapped app has it: its environment (as delivered),
the memfd_secret fd, a sealed memfd copy (what the interposer serves a file delivery from), a
heap copy; and a thread and a child forked after registration.

A pytest plugin (tests/conftest.py loads it): ``wrapped_app`` starts the wrapped one.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloudtaser.bpf import layouts
from cloudtaser.testbed import stacking
from tests.harness import wrapper
from tests.harness.agents import AgentRun
from tests.harness.attack_matrix import Target
from tests.harness.stack import compiled_config

REPO = Path(__file__).resolve().parents[2]
INTERPOSER = REPO / "wrapper" / "interposer" / "build" / "amd64" / "libcloudtaser-glibc.so"
CREDENTIALS = "/run/cloudtaser-credentials"  # the fixture pod's credential volume (its namespace)

# The app: argv[1] names the env var holding the secret, argv[2] the SDK name. Prints one JSON
# line of facts (pids as its namespace sees them), never the secret.
APP = r"""
import ctypes, fcntl, json, mmap, os, sys, threading, time
value = os.environ[sys.argv[1]].encode()
manifest = [l.split(" ", 2) for l in os.environ["CLOUDTASER_FDS"].split("\n") if l]
fd = next(int(n) for kind, n, name in manifest if kind == "sdk" and name == sys.argv[2])
held = mmap.mmap(fd, os.fstat(fd).st_size, mmap.MAP_SHARED, mmap.PROT_READ)
assert held[:] == value, "the SDK fd and the env delivery disagree"
copy = os.memfd_create("cloudtaser:copy", os.MFD_ALLOW_SEALING)
os.write(copy, value)
fcntl.fcntl(copy, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK)
heap = ctypes.create_string_buffer(value)
scratch = ctypes.create_string_buffer(16)  # what a code-injection attempt writes to
with open("/proc/self/maps") as maps:
    mapped = next(l.split()[0] for l in maps if "secretmem" in l or "/memfd:" in l)
child = os.fork()
if child == 0:
    time.sleep(600)
    os._exit(0)
t = threading.Thread(target=time.sleep, args=(600,), daemon=True)
t.start()
print(json.dumps({"pid": os.getpid(), "tid": t.native_id, "child": child,
                  "addr": ctypes.addressof(heap), "len": len(value), "secret_fd": fd,
                  "scratch": ctypes.addressof(scratch),
                  "copy_fd": copy, "map": mapped}), flush=True)
time.sleep(600)
"""

# The fixture's launcher (dynamic/static): argv agent socket, kind, then the app command.
LAUNCHER = r"""
import ctypes, mmap, os, sys
from cloudtaser.bpf.protocol import register
socket_path, kind, interposer, CREDENTIALS, app = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
value = os.environ.pop("CT_VALUE").encode()
fd = ctypes.CDLL(None, use_errno=True).syscall(447, 0)
assert fd >= 0, "memfd_secret"
os.ftruncate(fd, len(value))
with mmap.mmap(fd, len(value), mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as m:
    m[:] = value
os.set_inheritable(fd, True)
# The pod's credential volume (a tmpfs, like a projected token), in this mount namespace: what
# a process reading it could log in with stands here for the secret itself.
os.makedirs(CREDENTIALS, exist_ok=True)
libc = ctypes.CDLL(None, use_errno=True)
assert libc.mount(b"tmpfs", CREDENTIALS.encode(), b"tmpfs", 0, None) == 0, "mount tmpfs"
with open(f"{CREDENTIALS}/token", "wb") as f:
    f.write(value)
env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD",)}
if kind == "dynamic":
    env["CLOUDTASER_FDS"] = f"env {fd} CT_SECRET\nsdk {fd} secret"
    env["LD_PRELOAD"] = interposer
    env["CT_SECRET"] = ""  # the interposer's placeholder slot (contracts/README.md)
else:
    env["CLOUDTASER_FDS"] = f"sdk {fd} secret"
    env["CT_SECRET"] = value.decode()
register(socket_path, exec_environ="clean" if kind == "dynamic" else "secret",
         credentials=(f"{CREDENTIALS}/token",))
os.execvpe(app[0], app, env)
"""


def _host_pids(host: int) -> dict[int, int]:
    """ns pid -> host pid, for the process ``host`` (its threads) and its children."""
    found: dict[int, int] = {}
    for task in Path(f"/proc/{host}/task").iterdir():
        ns = _ns_pid(Path(task, "status"))
        found[ns] = int(task.name)
        for child in Path(task, "children").read_text().split():
            found[_ns_pid(Path(f"/proc/{child}/status"))] = int(child)
    return found


def _ns_pid(status: Path) -> int:
    for line in status.read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    raise AssertionError(f"no NSpid in {status}")


def in_namespaces(command: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """``command`` as PID 1 of new pid and mount namespaces (a container's view of /proc)."""
    return subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", "--", *command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def attach(
    proc: subprocess.Popen[str], secret: str, environ_clean: bool, pins: Path, socket_path: Path
) -> Target:
    """The Target once the app printed its facts (the app's stderr on failure); the agent is
    this process (the tests run it in-process)."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        _out, err = proc.communicate(timeout=30)
        raise AssertionError(f"the app did not start (rc {proc.returncode}): {err[-2000:]}")
    info = json.loads(line)
    unshare_child = int(Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[0])
    pids = _host_pids(unshare_child)
    return Target(
        pid=pids[info["pid"]],
        ns_pid=info["pid"],
        secret=secret,
        addr=info["addr"],
        length=info["len"],
        scratch=info["scratch"],
        secret_fd=info["secret_fd"],
        copy_fd=info["copy_fd"],
        map_range=info["map"],
        tid=pids[info["tid"]],
        ns_tid=info["tid"],
        child=pids[info["child"]],
        ns_child=info["child"],
        environ_clean=environ_clean,
        agent_pins=pins,
        agent_pid=os.getpid(),
        agent_socket=socket_path,
        token=f"{CREDENTIALS}/token",
        stdin=proc,
    )


def start_fixture(kind: str, socket_path: Path, pins: Path) -> Target:
    """A dynamic or static app with a fresh random secret, protected by the agent at
    ``socket_path`` (see the module docstring)."""
    secret = "s3cr3t-" + secrets.token_hex(16)
    env = {**os.environ, "CT_VALUE": secret, "PYTHONPATH": str(REPO)}
    proc = in_namespaces(
        [
            sys.executable,
            "-c",
            LAUNCHER,
            str(socket_path),
            kind,
            str(INTERPOSER),
            CREDENTIALS,
            sys.executable,
            "-c",
            APP,
            "CT_SECRET",
            "secret",
        ],
        env,
    )
    return attach(proc, secret, environ_clean=kind == "dynamic", pins=pins, socket_path=socket_path)


def stop(target: Target) -> str:
    """Kill the app (its namespace's PID 1 first, which takes the rest); its stderr."""
    proc = target.stdin
    assert proc is not None
    for pid in (target.child, target.pid):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    proc.kill()
    _out, err = proc.communicate(timeout=30)
    return err


@pytest.fixture
def wrapped_app(stack: stacking.Paths) -> Iterator[Callable[[AgentRun, Path, str], Target]]:
    """Start the app under the real wrapper (its own namespaces), which fetches ``secret``
    from the stack's OpenBao and registers with the test's agent."""

    def start(run: AgentRun, token: Path, secret: str) -> Target:
        config = compiled_config(stack, token, mode="enforce")
        source = config.sources[0]
        # The pod's credentials on a tmpfs volume of the app's mount namespace, as the kubelet
        # mounts a projected token and a Secret: the wrapper names them, the agent guards them.
        files = {
            "token": str(token),
            "tls.crt": source.client_cert_file,
            "tls.key": source.client_key_file,
        }
        config = config.model_copy(
            update={
                "token_path": f"{CREDENTIALS}/token",
                "agent": config.agent.model_copy(update={"socket": str(run.socket_path)}),
                "sources": [
                    source.model_copy(
                        update={
                            "client_cert_file": f"{CREDENTIALS}/tls.crt",
                            "client_key_file": f"{CREDENTIALS}/tls.key",
                        }
                    )
                ],
            }
        )
        prelude = (
            f"mkdir -p {CREDENTIALS} && mount -t tmpfs tmpfs {CREDENTIALS} && "
            + " && ".join(f'cp "{src}" {CREDENTIALS}/{name}' for name, src in files.items())
            + ' && exec "$@"'
        )
        proc = in_namespaces(
            [
                "sh",
                "-c",
                prelude,
                "prelude",
                *wrapper.command(
                    sys.executable, "-c", APP, "DEMO_PASSWORD", "demo-password", deadline=20
                ),
            ],
            wrapper.environment(config),
        )
        target = attach(
            proc, secret, environ_clean=False, pins=run.pin_dir, socket_path=run.socket_path
        )
        target.env = wrapper.environment(config)
        target.credentials = tuple(
            Path(src).read_bytes().strip() for src in files.values() if not src.endswith(".crt")
        )
        assert run.agent is not None
        entry = run.agent.entry(target.pid)
        assert entry is not None, "the wrapped app is not registered"
        target.environ_clean = bool(entry.flags & layouts.EntryState.ENVIRON_CLEAN)
        return target

    yield start
