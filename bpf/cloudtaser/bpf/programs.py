"""A small ctypes binding to the system's libbpf (Debian's libbpf1, ``libbpf.so.1``).

Only what the node agent needs: open a CO-RE object, pin its maps (reusing pinned maps from an
earlier run, so policy survives the agent's restart), load, attach every program and pin the
links (so enforcement continues while the agent is down), map element access, and ring-buffer
polling with a Python callback.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from cloudtaser.bpf import layouts
from cloudtaser.errors import PermanentError

DEFAULT_PIN_DIR = Path("/sys/fs/bpf/cloudtaser")
BPFFS = Path("/sys/fs/bpf")
BPF_FS_MAGIC = 0xCAFE4A11
TRACEFS = Path("/sys/kernel/tracing")
TRACEFS_MAGIC = 0x74726163

TRACEPOINT = "tracepoint"
LSM = "lsm"
LSM_LIST = Path("/sys/kernel/security/lsm")
# Programs of protect.bpf.c that enforce by killing from syscall (raw) and io_uring tracepoints:
# attached only by the tracepoint backend. Programs in "lsm/" sections are the LSM backend's;
# the others (fork, exec, exit, memfd creation, core dumps; the agent_op program, run rather
# than attached) serve either. tests/unit/bpf checks the names and their sections.
TRACEPOINT_ONLY = frozenset(
    {"on_sys_enter", "on_sys_exit", "io_uring_submit", "io_uring_file_get", "io_uring_complete"}
)
# Programs on syscall tracepoints (and io_uring's): attaching any one syscall tracepoint puts
# every task of the node on the slow syscall path, so these are attached only while a protected
# process lives (Loaded.set_hot; the memfd ones on either backend).
HOT_PROGRAMS = TRACEPOINT_ONLY | {"exit_memfd_create", "exit_memfd_secret"}
AGENT_OP = "agent_op"  # the syscall program through which the agent writes its frozen maps
# The maps the agent writes through agent_op (frozen: no bpf() syscall writes them).
AGENT_MAPS = {
    "protected": layouts.AgentMap.PROTECTED,
    "protected_files": layouts.AgentMap.PROTECTED_FILES,
    "accessors": layouts.AgentMap.ACCESSORS,
    "protected_mounts": layouts.AgentMap.PROTECTED_MOUNTS,
}
PINNED_MAPS = (
    "protected",
    "events",
    "ptrace_victims",
    "protected_files",
    "accessors",
    "node",
    "protected_mounts",
)
FROZEN_MAPS = (
    "protected",
    "ptrace_victims",
    "protected_files",
    "accessors",
    "node",
    "protected_mounts",
)

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

# int (*ring_buffer_sample_fn)(void *ctx, void *data, size_t size)
SampleFn = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


Key = ctypes.c_uint32 | ctypes.Structure
K = TypeVar("K", bound=ctypes.Structure)


class BpfError(PermanentError):
    """libbpf or the kernel refused an operation (message names which one and why)."""


def _lib() -> ctypes.CDLL:
    name = "libbpf.so.1"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError:
        found = ctypes.util.find_library("bpf")
        if not found:
            raise BpfError("libbpf.so.1 not found: install the Debian package 'libbpf1'") from None
        lib = ctypes.CDLL(found, use_errno=True)
    vp, cp, ci = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    sigs: dict[str, tuple[type | None, list[type]]] = {
        "bpf_object__open_file": (vp, [cp, vp]),
        "bpf_object__load": (ci, [vp]),
        "bpf_object__close": (None, [vp]),
        "bpf_object__next_program": (vp, [vp, vp]),
        "bpf_object__next_map": (vp, [vp, vp]),
        "bpf_object__find_map_by_name": (vp, [vp, cp]),
        "bpf_program__name": (cp, [vp]),
        "bpf_program__section_name": (cp, [vp]),
        "bpf_program__set_autoload": (ci, [vp, ctypes.c_bool]),
        "bpf_program__autoload": (ctypes.c_bool, [vp]),
        "bpf_program__attach": (vp, [vp]),
        "bpf_map__name": (cp, [vp]),
        "bpf_map__fd": (ci, [vp]),
        "bpf_map__set_pin_path": (ci, [vp, cp]),
        "bpf_map__reuse_fd": (ci, [vp, ci]),
        "bpf_link__pin": (ci, [vp, cp]),
        "bpf_link__destroy": (ci, [vp]),
        "bpf_link__detach": (ci, [vp]),
        "bpf_map_update_elem": (ci, [ci, vp, vp, ctypes.c_uint64]),
        "bpf_map_lookup_elem": (ci, [ci, vp, vp]),
        "bpf_map_delete_elem": (ci, [ci, vp]),
        "bpf_map_get_next_key": (ci, [ci, vp, vp]),
        "bpf_obj_get": (ci, [cp]),
        "ring_buffer__new": (vp, [ci, SampleFn, vp, vp]),
        "ring_buffer__poll": (ci, [vp, ci]),
        "ring_buffer__free": (None, [vp]),
        "libbpf_get_error": (ctypes.c_long, [vp]),
        "libbpf_set_print": (vp, [vp]),
        "bpf_program__fd": (ci, [vp]),
        "bpf_map_freeze": (ci, [ci]),
        "bpf_obj_pin": (ci, [ci, cp]),
        "bpf_prog_test_run_opts": (ci, [ci, vp]),
    }
    for fname, (res, args) in sigs.items():
        fn = getattr(lib, fname)
        fn.restype = res
        fn.argtypes = args
    return lib


_LIB: ctypes.CDLL | None = None


def lib() -> ctypes.CDLL:
    global _LIB
    if _LIB is None:
        _LIB = _lib()
    return _LIB


def _fail(what: str, err: int | None = None) -> BpfError:
    code = abs(err) if err else ctypes.get_errno()
    return BpfError(f"{what}: {os.strerror(code) if code else 'failed'}")


def check_kallsyms(
    symbols: tuple[str, ...] = ("environ_open", "mem_open"), kallsyms: str = "/proc/kallsyms"
) -> None:
    """Refuse to run when kernel symbol addresses are hidden (no CAP_SYSLOG).

    libbpf would resolve the typeless ``__ksym``s to 0 and the f_op comparison would silently
    never match: the agent would run and protect nothing.
    """
    wanted = set(symbols)
    found: dict[str, int] = {}
    try:
        with open(kallsyms, encoding="ascii", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] in wanted:
                    found[parts[2]] = int(parts[0], 16)
                    if len(found) == len(wanted):
                        break
    except OSError as e:
        raise BpfError(f"cannot read {kallsyms}: {e.strerror}") from None
    missing = sorted(wanted - found.keys())
    if missing:
        raise BpfError(f"kernel symbols missing from /proc/kallsyms: {', '.join(missing)}")
    if any(addr == 0 for addr in found.values()):
        raise BpfError(
            "/proc/kallsyms shows zero addresses (the agent lacks CAP_SYSLOG or "
            "kernel.kptr_restrict=2): the procfs checks could never match; refusing to start"
        )


def ensure_bpffs(root: Path = BPFFS) -> None:
    """Mount bpffs at /sys/fs/bpf when it is not mounted yet."""
    _ensure_mounted(root, b"bpf", BPF_FS_MAGIC)


def ensure_tracefs(root: Path = TRACEFS) -> None:
    """Mount tracefs at /sys/kernel/tracing when it is not mounted yet: libbpf finds a syscall
    tracepoint's id there (the agent's DaemonSet mounts it from the host; a bare node may not
    have it mounted at all)."""
    _ensure_mounted(root, b"tracefs", TRACEFS_MAGIC)


def _ensure_mounted(root: Path, fstype: bytes, magic: int) -> None:
    if _fs_magic(root) == magic:
        return
    root.mkdir(parents=True, exist_ok=True)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(fstype, str(root).encode(), fstype, 0, None) != 0:
        raise _fail(f"mount -t {fstype.decode()} {fstype.decode()} {root}")


def _fs_magic(path: Path) -> int | None:
    # statfs f_type is the first field (long) of struct statfs on x86_64 and arm64.
    buf = ctypes.create_string_buffer(256)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.statfs(str(path).encode(), buf) != 0:
        return None
    return ctypes.c_long.from_buffer(buf).value


class TestRunOpts(ctypes.Structure):
    """libbpf's struct bpf_test_run_opts (libbpf 1.1)."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


class AgentOps:
    """The agent_op program (protect.bpf.c): the only writer of the frozen maps from user
    space, for the process that holds the agent role (claim())."""

    def __init__(self, prog_fd: int) -> None:
        self.fd = prog_fd

    def run(self, op: layouts.AgentOp) -> int:
        """Run ``op``; its result (0 or -errno)."""
        opts = TestRunOpts(
            sz=ctypes.sizeof(TestRunOpts),
            ctx_in=ctypes.addressof(op),
            ctx_size_in=ctypes.sizeof(op),
        )
        if lib().bpf_prog_test_run_opts(self.fd, ctypes.byref(opts)) != 0:
            raise _fail("run of the agent_op program")
        return int(op.result)

    def claim(self) -> int:
        """Take the agent role: 0, or -EBUSY while another live process holds it."""
        return self.run(layouts.AgentOp(op=layouts.AgentOpCode.CLAIM))

    def write(self, code: int, map_id: int, key: Key, value: Key | None, flags: int) -> int:
        op = layouts.AgentOp(op=code, map=map_id, flags=flags)
        ctypes.memmove(op.key, ctypes.byref(key), ctypes.sizeof(key))
        if value is not None:
            ctypes.memmove(op.value, ctypes.byref(value), ctypes.sizeof(value))
        return self.run(op)


@dataclass
class Map:
    name: str
    fd: int
    ops: AgentOps | None = None  # set for a frozen map the agent writes through agent_op

    def update(self, key: Key, value: Key, flags: int = BPF_ANY) -> None:
        if self.ops is not None:
            rc = self.ops.write(
                layouts.AgentOpCode.UPDATE, AGENT_MAPS[self.name], key, value, flags
            )
            if rc != 0:
                raise _fail(f"update of map {self.name} (through agent_op)", rc)
            return
        if lib().bpf_map_update_elem(self.fd, ctypes.byref(key), ctypes.byref(value), flags) != 0:
            raise _fail(f"update of map {self.name}")

    def lookup(self, key: Key, value: Key) -> bool:
        """Fill ``value``; False when the key is absent."""
        if lib().bpf_map_lookup_elem(self.fd, ctypes.byref(key), ctypes.byref(value)) == 0:
            return True
        if ctypes.get_errno() == 2:
            return False
        raise _fail(f"lookup in map {self.name}")

    def delete(self, key: Key) -> bool:
        if self.ops is not None:
            rc = self.ops.write(layouts.AgentOpCode.DELETE, AGENT_MAPS[self.name], key, None, 0)
            if rc in (0, -errno.ENOENT):
                return rc == 0
            raise _fail(f"delete from map {self.name} (through agent_op)", rc)
        if lib().bpf_map_delete_elem(self.fd, ctypes.byref(key)) == 0:
            return True
        if ctypes.get_errno() == errno.ENOENT:
            return False
        raise _fail(f"delete from map {self.name}")

    def keys(self, key_type: type[K]) -> Iterator[K]:
        """Every key, as a fresh ``key_type`` (a ctypes struct of the map's key size)."""
        prev: K | None = None
        while True:
            nxt = key_type()
            if (
                lib().bpf_map_get_next_key(
                    self.fd, None if prev is None else ctypes.byref(prev), ctypes.byref(nxt)
                )
                != 0
            ):
                return
            yield nxt
            prev = nxt

    def keys_u32(self) -> Iterator[int]:
        prev = ctypes.c_uint32()
        nxt = ctypes.c_uint32()
        first = True
        while True:
            rc = lib().bpf_map_get_next_key(
                self.fd, None if first else ctypes.byref(prev), ctypes.byref(nxt)
            )
            if rc != 0:
                return
            yield nxt.value
            prev.value = nxt.value
            first = False


@dataclass
class Loaded:
    """A loaded object with attached (and, if pinned, persistent) programs."""

    obj: int
    pin_dir: Path | None
    programs: list[str]
    links: list[int] = field(default_factory=list)
    rings: list[tuple[int, object]] = field(default_factory=list)
    backend: str = TRACEPOINT
    ops: AgentOps | None = None
    # The loaded HOT_PROGRAMS by name: what costs every process on the node, detached while
    # nothing is protected (set_hot).
    hot_programs: dict[str, int] = field(default_factory=dict)
    hot: bool = True

    def set_hot(self, on: bool) -> None:
        """Attach (and pin) or detach (and unpin) the ``hot_programs``. Attaching returns
        once every one is attached, so a caller that protects a process afterwards leaves no
        gap; detach only when no protected process lives (the agent's lock sees to both)."""
        if on == self.hot or not self.hot_programs:
            return
        lb = lib()
        if on:
            for name, prog in self.hot_programs.items():
                link = lb.bpf_program__attach(prog)
                if not link or lb.libbpf_get_error(link):
                    raise _fail(f"attach of program {name}")
                self.links.append(link)
                self.programs.append(name)
                if self.pin_dir is not None:
                    pin = self.pin_dir / "links" / name
                    pin.unlink(missing_ok=True)
                    rc = lb.bpf_link__pin(link, str(pin).encode())
                    if rc != 0:
                        raise _fail(f"pin of link {name}", rc)
            self.hot = True
            return
        for name in self.hot_programs:
            if name not in self.programs:
                continue
            i = self.programs.index(name)
            link = self.links.pop(i)
            self.programs.pop(i)
            if self.pin_dir is not None:
                (self.pin_dir / "links" / name).unlink(missing_ok=True)
            lb.bpf_link__detach(link)
            lb.bpf_link__destroy(link)
        self.hot = False

    def map(self, name: str) -> Map:
        m = lib().bpf_object__find_map_by_name(self.obj, name.encode())
        if not m:
            raise BpfError(f"no map named {name} in the BPF object")
        fd = lib().bpf_map__fd(m)
        if fd < 0:
            raise BpfError(f"map {name} has no fd (not loaded)")
        return Map(name, fd, self.ops if name in AGENT_MAPS else None)

    def ring_buffer(self, name: str, callback: Callable[[bytes], None]) -> RingBuffer:
        return RingBuffer(self.map(name), callback)

    def close(self) -> None:
        """Release our references; pinned maps and links stay (enforcement continues)."""
        for link in self.links:
            lib().bpf_link__destroy(link)
        self.links.clear()
        if self.obj:
            lib().bpf_object__close(self.obj)
            self.obj = 0


class RingBuffer:
    """``ring_buffer__new`` on one ringbuf map; ``poll`` calls ``callback`` with each record."""

    def __init__(self, ringmap: Map, callback: Callable[[bytes], None]) -> None:
        def sample(_ctx: int | None, data: int | None, size: int) -> int:
            try:
                callback(ctypes.string_at(data or 0, size))
            except Exception:  # never unwind through C; the agent logs inside its callback
                return 0
            return 0

        self._cb = SampleFn(sample)  # keep a reference for as long as the C side may call it
        self._rb = lib().ring_buffer__new(ringmap.fd, self._cb, None, None)
        if not self._rb:
            raise _fail(f"ring_buffer__new on {ringmap.name}")

    def poll(self, timeout_ms: int) -> int:
        if not self._rb:
            return 0
        n = int(lib().ring_buffer__poll(self._rb, timeout_ms))
        if n < 0 and n != -4:  # -EINTR is fine
            raise _fail("ring_buffer__poll", n)
        return max(n, 0)

    def free(self) -> None:
        if self._rb:
            lib().ring_buffer__free(self._rb)
            self._rb = None


def _programs(obj: int) -> Iterator[tuple[int, str]]:
    prog = lib().bpf_object__next_program(obj, None)
    while prog:
        yield prog, lib().bpf_program__name(prog).decode()
        prog = lib().bpf_object__next_program(obj, prog)


def _claim_with_pinned_op(pin_dir: Path) -> None:
    """Take the agent role through the agent_op program an earlier agent pinned, before loading
    anything: while a node protects something, its programs stop tracing-program loads by
    anyone but the agent. Refused while the earlier agent lives."""
    pin = pin_dir / "progs" / AGENT_OP
    if not pin.exists():
        return
    fd = lib().bpf_obj_get(str(pin).encode())
    if fd < 0:
        raise _fail(f"open of the pinned {pin}")
    try:
        rc = AgentOps(fd).claim()
    finally:
        os.close(fd)
    if rc == -errno.EBUSY:
        raise BpfError(
            f"another process holds the agent role of {pin_dir} (pid "
            f"{_role_holder(pin_dir)}); one agent per node"
        )
    if rc != 0:
        raise _fail(f"claim of the agent role through {pin}", rc)


def _role_holder(pin_dir: Path) -> int:
    """The tgid in the pinned ``node`` map (0 when unknown)."""
    fd = lib().bpf_obj_get(str(pin_dir / "maps" / "node").encode())
    if fd < 0:
        return 0
    try:
        state = layouts.NodeState()
        zero = ctypes.c_uint32(0)
        if lib().bpf_map_lookup_elem(fd, ctypes.byref(zero), ctypes.byref(state)) != 0:
            return 0
        return int(state.agent_tgid)
    finally:
        os.close(fd)


def load(path: Path, pin_dir: Path | None = DEFAULT_PIN_DIR, backend: str = TRACEPOINT) -> Loaded:
    """Open, load and attach the programs of ``backend`` in the object at ``path``, as the agent.

    The calling process takes the agent role (refused while another live process holds it) and
    the maps are frozen: from now on only BPF programs and agent_op (Loaded.ops) write them.
    With ``pin_dir``: the maps are pinned under ``pin_dir/maps`` (an existing pin of the same
    definition is reused, keeping its entries), agent_op under ``pin_dir/progs`` and each
    program's link under ``pin_dir/links``, replacing the links of an earlier run only after
    the new ones are attached, so there is no unprotected gap (links of programs this backend
    does not use, e.g. after a switch of backend, are unpinned last).
    """
    if backend not in (LSM, TRACEPOINT):
        raise BpfError(f"unknown backend {backend!r} (expected {LSM} or {TRACEPOINT})")
    check_kallsyms()
    if not path.is_file():
        raise BpfError(f"BPF object not found: {path} (build it with scripts/build-bpf)")
    ensure_tracefs()
    lb = lib()
    obj = lb.bpf_object__open_file(str(path).encode(), None)
    if not obj:
        raise _fail(f"open of BPF object {path}")
    loaded = Loaded(obj=obj, pin_dir=pin_dir, programs=[], backend=backend)
    try:
        for prog, name in _programs(obj):
            is_lsm = lb.bpf_program__section_name(prog).decode().startswith("lsm/")
            wanted = (name not in TRACEPOINT_ONLY) if backend == LSM else not is_lsm
            if not wanted:
                lb.bpf_program__set_autoload(prog, False)
        if pin_dir is not None:
            ensure_bpffs()
            for sub in ("maps", "links", "progs"):
                (pin_dir / sub).mkdir(parents=True, exist_ok=True)
            for name in PINNED_MAPS:
                m = lb.bpf_object__find_map_by_name(obj, name.encode())
                if not m:
                    raise BpfError(f"no map named {name} in {path}")
                if lb.bpf_map__set_pin_path(m, str(pin_dir / "maps" / name).encode()) != 0:
                    raise _fail(f"pin path for map {name}")
            _claim_with_pinned_op(pin_dir)
        rc = lb.bpf_object__load(obj)
        if rc != 0:
            hint = f"; remove {pin_dir}/maps after an incompatible upgrade" if pin_dir else ""
            raise _fail(
                f"load of {path} ({backend} backend: verifier or pinned-map mismatch{hint})", rc
            )
        op_prog = 0
        for prog, name in _programs(obj):
            if name == AGENT_OP:
                op_prog = prog
        if op_prog:  # (benchmarks/kernel.py loads a bare no-op object)
            loaded.ops = AgentOps(lb.bpf_program__fd(op_prog))
            rc = loaded.ops.claim()
            if rc != 0:
                raise _fail(
                    f"claim of the agent role (held by pid {_role_holder(pin_dir)})"
                    if pin_dir
                    else "claim of the agent role",
                    rc,
                )
            for name in FROZEN_MAPS:
                rc = lb.bpf_map_freeze(loaded.map(name).fd)
                # A pin reused from an earlier run is frozen already: EBUSY, or EPERM (a frozen
                # map's fd has no write permission left to freeze it with).
                if rc != 0 and ctypes.get_errno() not in (errno.EBUSY, errno.EPERM):
                    raise _fail(f"freeze of map {name}")
        for prog, name in _programs(obj):
            if not lb.bpf_program__autoload(prog) or name == AGENT_OP:
                continue
            link = lb.bpf_program__attach(prog)
            if not link or lb.libbpf_get_error(link):
                raise _fail(f"attach of program {name}")
            loaded.links.append(link)
            loaded.programs.append(name)
            if name in HOT_PROGRAMS:
                loaded.hot_programs[name] = prog
        if pin_dir is not None:
            for link, name in zip(loaded.links, loaded.programs):
                pin = pin_dir / "links" / name
                if pin.exists():
                    pin.unlink()  # the earlier run's link: detached once unpinned
                rc = lb.bpf_link__pin(link, str(pin).encode())
                if rc != 0:
                    raise _fail(f"pin of link {name}", rc)
            op_pin = pin_dir / "progs" / AGENT_OP
            if op_pin.exists():
                op_pin.unlink()
            if loaded.ops and lb.bpf_obj_pin(loaded.ops.fd, str(op_pin).encode()) != 0:
                raise _fail(f"pin of program {AGENT_OP}")
            for pin in (pin_dir / "links").iterdir():
                if pin.name not in loaded.programs:
                    pin.unlink()  # the other backend's program, from an earlier run
            for pin in (pin_dir / "maps").iterdir():
                if pin.name not in PINNED_MAPS:
                    pin.unlink()  # an earlier version's map (e.g. the node-wide "allowed")
    except BaseException:
        loaded.close()
        raise
    return loaded


def bpf_lsm_listed(lsm_list: Path = LSM_LIST) -> tuple[bool, str]:
    """Whether ``bpf`` is among the kernel's active LSMs, with what was read."""
    try:
        active = lsm_list.read_text().strip()
    except OSError as e:
        return False, f"cannot read {lsm_list}: {e.strerror} (securityfs not mounted?)"
    if "bpf" in active.split(","):
        return True, f"active LSMs: {active}"
    return False, f"bpf is not among the active LSMs ({active}); boot with lsm=...,bpf"


@contextlib.contextmanager
def quiet_libbpf() -> Iterator[None]:
    """Silence libbpf's messages (its verifier logs on stderr) for an expected failure."""
    old = lib().libbpf_set_print(None)
    try:
        yield
    finally:
        lib().libbpf_set_print(old)


def load_backend(
    path: Path, pin_dir: Path | None = DEFAULT_PIN_DIR, backend: str = "auto"
) -> tuple[Loaded, str]:
    """Load ``path`` with ``backend``: "lsm", "tracepoint", or "auto" — LSM when ``bpf`` is an
    active LSM and the LSM programs load and attach here, else tracepoint. Returns the loaded
    object (``.backend`` says which) and the reason for that choice."""
    if backend != "auto":
        return load(path, pin_dir, backend=backend), f"{backend} backend requested"
    listed, detail = bpf_lsm_listed()
    if not listed:
        return load(path, pin_dir, backend=TRACEPOINT), detail
    try:
        with quiet_libbpf():  # a refusal is an answer here; --backend lsm shows libbpf's log
            loaded = load(path, pin_dir, backend=LSM)
        return loaded, f"BPF LSM programs load and attach ({detail})"
    except BpfError as e:
        reason = f"BPF LSM programs do not load here ({e}); {detail}"
    return load(path, pin_dir, backend=TRACEPOINT), reason


def unpin(pin_dir: Path = DEFAULT_PIN_DIR) -> None:
    """Remove every pin (links detach, maps are freed once unused): uninstall, not restart."""
    if pin_dir.exists():
        shutil.rmtree(pin_dir)
