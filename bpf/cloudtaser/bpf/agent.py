"""The node agent (BPF LSM or tracepoint backend): registration socket, kernel maps, violation log.

Registration protocol v2 (contracts/README.md; parser and a Python client in bpf/cloudtaser/bpf/protocol.py,
the wrapper's client is Go): one JSON line ``{"op": "register", "version": 2, "exec_environ":
"clean" | "secret"}``; the caller's PID comes from SO_PEERCRED, never from the message, so a
process can register only itself; the answer is one JSON line ``{"ok": true, "backend": "lsm" |
"tracepoint", "mode": "enforce" | "audit", "protections": [...]}`` or ``{"ok": false, "error":
"..."}``.

The agent holds the agent role of its pinned maps (bpf/cloudtaser/bpf/programs.py: frozen maps, written only
through the agent_op program by the role's holder) and writes (tgid -> start time, flags,
allow-list id) into the pinned ``protected`` map
and each distinct accessor allow-list of its node's pods, under its own id, into ``accessors``;
the BPF side protects forked children (with the parent's flags and list) and removes entries on
exit. With pod policies the flags and list come from each caller's pod (PID -> cgroup -> pod ->
the engine's BpfEntry); without, from the constructor and Agent.allow.
Violations arrive on the ring buffer and are logged (they never carry secret data).

This module is the entry point (``python -m cloudtaser.bpf.agent``: main, arguments) and the
Agent (start/stop, the ``protected`` entries, registration); its other jobs are in serving.py
(the socket, per-pod caps), allowlists.py, violations.py, credentials.py and iouring.py.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import prometheus_client

from cloudtaser import logs
from cloudtaser.bpf import layouts, protocol, scanning
from cloudtaser.bpf.allowlists import (
    BPF_LOADERS_LIST,
    CREDENTIAL_READERS_LIST,
    DEFAULT_LIST,
    AllowLists,
    parse_accessor,
    running_kubelets,
)
from cloudtaser.bpf.cgroups import pod_uid
from cloudtaser.bpf.credentials import CredentialVolumes
from cloudtaser.bpf.iouring import IO_URING_CHOICES, IoUringRestriction
from cloudtaser.bpf.labelling import NodeLabel
from cloudtaser.bpf.leasing import NodeReport
from cloudtaser.bpf.programs import (
    DEFAULT_PIN_DIR,
    LSM,
    TRACEPOINT,
    Loaded,
    Map,
    RingBuffer,
    load_backend,
)
from cloudtaser.bpf.reporting import EventReporter
from cloudtaser.bpf.serving import (
    DEFAULT_SOCKET,
    REQUEST_DEADLINE,
    SocketServer,
    accepted,
    peer_credentials,
    peer_pidfd,
    refused,
    request_line,
)
from cloudtaser.bpf.violations import Metrics, Violation, ViolationLog, deal_with_early_holders
from cloudtaser.bpf.watching import PodPolicies, kubernetes_lister
from cloudtaser.engine.plans import InjectorSettings, ProtectionFlag
from cloudtaser.errors import PermanentError
from cloudtaser.heap import release_freed_memory
from cloudtaser.kubeapi import KubeApi

log = logging.getLogger("cloudtaser.bpf.agent")

BACKEND = TRACEPOINT  # until start() has probed the node
DEFAULT_FLAGS = ProtectionFlag.ALL  # what the engine's default policy compiles to, enforced
KNOWN_FLAGS = ProtectionFlag.known()
# How often the agent looks whether anything is still protected (else it detaches the syscall
# programs: Agent._cool).
COOL_EVERY = 1.0
STATE_BITS = int(sum(layouts.EntryState))  # per-process state beside the policy in an entry


# readlink of /proc/PID/fd/N for a memfd ("/memfd:NAME (deleted)") and memfd_secret.
SECRET_FILE_PREFIXES = ("/memfd:", "/secretmem")


def secret_file_key(st: os.stat_result) -> layouts.FileKey:
    """The ``protected_files`` key of a stat result: the kernel's dev_t, not st_dev's encoding."""
    dev = (os.major(st.st_dev) << 20) | os.minor(st.st_dev)
    return layouts.FileKey(ino=st.st_ino, dev=dev)


def start_time_ticks(pid: int) -> int:
    """Field 22 of /proc/PID/stat: start time in clock ticks since boot."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    rest = stat[stat.rindex(b")") + 2 :].split()
    return int(rest[22 - 3])


def default_object() -> Path:
    """The object scripts/build-bpf produced for the current sources (builds if needed)."""
    script = Path(__file__).resolve().parents[3] / "scripts" / "build-bpf"  # bpf/cloudtaser/bpf/
    try:
        out = subprocess.run([str(script)], check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        raise PermanentError(f"cannot build the BPF object: {detail.strip()[-300:]}") from None
    return Path(out.stdout.strip().splitlines()[-1])


class Agent:
    def __init__(
        self,
        socket_path: str | Path = DEFAULT_SOCKET,
        object_path: Path | None = None,
        flags: int = int(DEFAULT_FLAGS),
        pin_dir: Path = DEFAULT_PIN_DIR,
        on_violation: Callable[[Violation], None] | None = None,
        pod_policies: PodPolicies | None = None,
        backend: str = "auto",
        io_uring: str = "auto",
    ) -> None:
        """With ``pod_policies``, each caller's flags come from its pod's compiled policy
        (PID -> cgroup -> pod UID -> BpfEntry) and a caller in no protected pod is refused;
        without, every caller gets ``flags`` (a node without an API server, tests)."""
        if flags & ~KNOWN_FLAGS:
            raise PermanentError(f"unknown protection flag bits: {flags & ~KNOWN_FLAGS:#x}")
        self.socket_path = Path(socket_path)
        self.object_path = object_path
        self.flags = flags
        self.pin_dir = pin_dir
        self.pod_policies = pod_policies
        self.requested_backend = backend  # auto | lsm | tracepoint
        if io_uring not in IO_URING_CHOICES:
            raise PermanentError(
                f"io_uring must be one of {', '.join(IO_URING_CHOICES)}, not {io_uring!r}"
            )
        self.io_uring = io_uring  # restrict: kernel.io_uring_disabled=2 while protecting
        # The sysctl's value before an agent raised it is kept beside the socket (a host
        # directory): a restarted agent, not only this one, can put it back.
        self._io_uring = IoUringRestriction(io_uring, self.socket_path.parent, self._live_protected)
        self._hot_lock = threading.Lock()  # attach/detach of the syscall programs vs. protect()
        self._credentials = CredentialVolumes(
            lambda: self._map("protected_mounts"), lambda pid: self.entry(pid) is not None
        )
        self.backend = BACKEND  # what start() chose (programs.load_backend)
        self.backend_reason = ""
        self.metrics = Metrics()
        self._violations = ViolationLog(self.metrics, on_violation)
        self._registered: dict[int, str] = {}  # tgid -> pod UID (pod-policy mode)
        self._registered_lock = threading.Lock()
        self._server = SocketServer(self.socket_path, self._register)
        self._lists = AllowLists(lambda: self._map("accessors"), self._list_ids_in_use)
        if pod_policies is not None:
            pod_policies.listeners.append(self.reapply)
        self.loaded: Loaded | None = None
        self._ring: RingBuffer | None = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.load_seconds = 0.0
        self.last_scan_seconds = 0.0  # the fd scan of the latest registration
        self._scans = scanning.Coalescer()  # a burst of registrations shares one scan

    @property
    def on_violation(self) -> Callable[[Violation], None] | None:
        return self._violations.on_violation

    @on_violation.setter
    def on_violation(self, handler: Callable[[Violation], None] | None) -> None:
        self._violations.on_violation = handler

    def _map(self, name: str) -> Map:
        assert self.loaded is not None, "agent not started"
        return self.loaded.map(name)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        path = self.object_path or default_object()
        t0 = time.monotonic()
        self.loaded, self.backend_reason = load_backend(path, self.pin_dir, self.requested_backend)
        self.backend = self.loaded.backend
        self.load_seconds = time.monotonic() - t0
        log.info(
            "loaded %d programs from %s in %.3f s (backend %s: %s; maps pinned in %s)",
            len(self.loaded.programs),
            path,
            self.load_seconds,
            self.backend,
            self.backend_reason,
            self.pin_dir,
        )
        self._lists.adopt()
        self._adopt_registrations()
        kubelets = self.allow_kubelet()
        if kubelets:
            log.info("credential volumes may be read by the kubelet: %s", ", ".join(kubelets))
        self._cool()  # attached by load(); detached again unless something is protected
        if self._live_protected() is not None:  # protection adopted from an earlier agent
            self._io_uring.restrict(self.backend)
        else:
            self._io_uring.relax()  # an earlier agent left it raised with nothing protected
        self._ring = self.loaded.ring_buffer("events", self._violations.record)
        self._stop.clear()
        self._server.start()
        self._poller = threading.Thread(target=self._poll, name="agent-events", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        """Stop serving; pinned maps and links stay, so protection continues (and io_uring
        stays restricted while any protected process lives)."""
        self._io_uring.relax()
        self._stop.set()
        self._server.stop()
        if self._poller is not None:
            self._poller.join(timeout=5)
            self._poller = None
        if self._ring is not None:
            self._ring.poll(0)  # deliver what is already queued
            self._ring.free()
            self._ring = None
        if self.loaded is not None:
            self.loaded.close()
            self.loaded = None

    def __enter__(self) -> Agent:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _poll(self) -> None:
        cooled = time.monotonic()
        while not self._stop.is_set():
            ring = self._ring
            if ring is None:
                return
            ring.poll(200)
            if time.monotonic() - cooled >= COOL_EVERY:
                cooled = time.monotonic()
                self._cool()

    def _cool(self) -> None:
        """Detach the syscall programs once no protected process lives (issue 17: a node with
        nothing to protect pays nothing for them); protect() attaches them again first."""
        loaded = self.loaded
        if loaded is None or not loaded.hot or not loaded.hot_programs:
            return
        with self._hot_lock:
            if loaded.hot and self._live_protected() is None:
                loaded.set_hot(False)
                log.info(
                    "nothing protected: %s detached until the next registration",
                    ", ".join(sorted(loaded.hot_programs)),
                )

    def _live_protected(self) -> int | None:
        """A tgid of the ``protected`` map whose process still lives, if any."""
        if self.loaded is None:
            return None
        protected = self.loaded.map("protected")
        value = layouts.ProtectedEntry()
        for tgid in list(protected.keys_u32()):
            try:
                if protected.lookup(
                    ctypes.c_uint32(tgid), value
                ) and value.start_time == start_time_ticks(tgid):
                    return tgid
            except OSError:
                continue
        return None

    # -- maps -------------------------------------------------------------------------------

    def protect(self, pid: int, flags: int | None = None, accessors: int = DEFAULT_LIST) -> int:
        """Write the entry for process ``pid`` (a tgid), with allow-list ``accessors`` (an id from
        accessor_list); returns its start time."""
        assert self.loaded is not None, "agent not started"
        start = start_time_ticks(pid)
        entry = layouts.ProtectedEntry(
            start_time=start, flags=self.flags if flags is None else flags, accessors=accessors
        )
        with self._hot_lock:  # the syscall programs attached before the entry exists
            if not self.loaded.hot:
                self.loaded.set_hot(True)
                log.info("syscall programs attached again (a process registers)")
            self.loaded.map("protected").update(ctypes.c_uint32(pid), entry)
        if entry.flags & ProtectionFlag.FDS:
            self._remember_secret_files(pid)
        return start

    def _remember_secret_files(self, pid: int) -> None:
        """Put the secret files (memfd, memfd_secret) ``pid`` already holds into the
        ``protected_files`` map; the BPF side adds the ones it creates from now on."""
        assert self.loaded is not None
        files = self.loaded.map("protected_files")
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            names = os.listdir(fd_dir)
        except OSError:
            return
        owner = layouts.FileOwner()
        for name in names:
            try:
                target = os.readlink(fd_dir / name)
                if not target.startswith(SECRET_FILE_PREFIXES):
                    continue
                st = os.stat(fd_dir / name)
            except OSError:
                continue
            key = secret_file_key(st)
            if (
                files.lookup(key, owner)
                and owner.tgid != pid
                and self.entry(owner.tgid) is not None
            ):
                continue  # inherited from a protected process (the refresher's): keep its owner
            files.update(key, layouts.FileOwner(tgid=pid))

    def allow(
        self, path: str | Path, uid: int | None = None, list_id: int = DEFAULT_LIST
    ) -> layouts.AccessorKey:
        """Let the executable at ``path`` (as run by ``uid``, or by anyone) access the processes
        protected with allow-list ``list_id`` (default: the list of processes registered without
        pod policies). By inode, so a copy or a replaced file is not allowed, and a rename of
        the same file still is."""
        assert self.loaded is not None, "agent not started"
        return self._lists.allow(path, uid, list_id)

    def allow_bpf_loader(self, path: str | Path, uid: int | None = None) -> layouts.AccessorKey:
        """Let the executable at ``path`` load tracing BPF programs while this node protects
        something (e.g. another node agent: Tetragon, a profiler). By inode, like allow()."""
        return self.allow(path, uid, BPF_LOADERS_LIST)

    def allow_credential_reader(
        self, path: str | Path, uid: int | None = None
    ) -> layouts.AccessorKey:
        """Let the executable at ``path`` read protected credential volumes (the kubelet, which
        rotates the projected token; found by itself: allow_kubelet)."""
        return self.allow(path, uid, CREDENTIAL_READERS_LIST)

    def allow_kubelet(self) -> list[str]:
        """Every running kubelet's executable may read credential volumes (it writes the
        projected tokens, and reads what it wrote). Looked up in /proc (the agent runs in the
        host's pid namespace); run at start and at every relist, as a kubelet may restart
        from another binary."""
        found = []
        for exe in running_kubelets():
            try:
                self.allow_credential_reader(exe)
                found.append(os.readlink(exe))
            except OSError:
                continue
        return found

    def _protect_credentials(self, pid: int, flags: int, paths: tuple[str, ...]) -> list[str]:
        """credentials.CredentialVolumes.protect: one line per path it could not protect."""
        return self._credentials.protect(pid, flags, paths)

    def free_credentials(self, mountinfo: str = "/proc/1/mountinfo") -> int:
        """Forget the credential volumes no longer mounted whose owner died (at every relist)."""
        if self.loaded is None:
            return 0
        return self._credentials.free(mountinfo)

    def disallow(
        self, path: str | Path, uid: int | None = None, list_id: int = DEFAULT_LIST
    ) -> bool:
        assert self.loaded is not None, "agent not started"
        return self._lists.disallow(path, uid, list_id)

    def accessor_list(self, accessors: Iterable[str]) -> int:
        """The id of the allow-list ``accessors`` (allowlists.AllowLists.list_for)."""
        assert self.loaded is not None, "agent not started"
        return self._lists.list_for(accessors)

    def _adopt_registrations(self) -> None:
        """After a restart, in pod-policy mode: the processes an earlier agent registered are
        still in the pinned map, protected with what their pod's policy said then. Remember
        the pod each runs in (its cgroup), so that reapply() moves them to the policy's
        current flags and allow-list, now and after every relist, like processes registered
        since. A pinned entry whose process exited (start time differs) is left alone."""
        if self.pod_policies is None:
            return
        assert self.loaded is not None
        protected = self.loaded.map("protected")
        value = layouts.ProtectedEntry()
        adopted: dict[int, str] = {}
        for tgid in list(protected.keys_u32()):
            if not protected.lookup(ctypes.c_uint32(tgid), value):
                continue
            try:
                if value.start_time != start_time_ticks(tgid):
                    continue
            except OSError:
                continue
            pod = pod_uid(tgid)
            if pod is not None:
                adopted[tgid] = pod
        with self._registered_lock:
            self._registered.update(adopted)
        if adopted:
            log.info("adopted %d process(es) registered before this agent started", len(adopted))
            if self.pod_policies.listed:
                self.reapply()

    def _list_ids_in_use(self) -> Iterator[int]:
        assert self.loaded is not None
        protected = self.loaded.map("protected")
        value = layouts.ProtectedEntry()
        for tgid in list(protected.keys_u32()):
            if protected.lookup(ctypes.c_uint32(tgid), value):
                yield value.accessors

    def collect_lists(self) -> int:
        """Remove the allow-lists no protected process uses any more (forked children keep
        theirs); the default list stays. Returns how many map entries were removed."""
        assert self.loaded is not None
        return self._lists.collect()

    def reapply(self) -> None:
        """After a relist: rewrite the flags and allow-lists of registered processes whose
        pod's policy changed (audit -> enforce, protections, kill, accessors), then remove the
        lists nobody uses. Processes that exited are forgotten; forked children keep the flags
        and list they inherited until they register themselves."""
        if self.loaded is None or self.pod_policies is None:
            return
        self.allow_kubelet()  # a restarted kubelet may run from another binary
        self.free_credentials()
        with self._registered_lock:
            registered = dict(self._registered)
        for pid, uid in registered.items():
            current = self.entry(pid)
            try:
                alive = current is not None and current.start_time == start_time_ticks(pid)
            except OSError:
                alive = False
            entry = self.pod_policies.known(uid)
            if not alive or entry is None:
                with self._registered_lock:
                    self._registered.pop(pid, None)
                continue
            assert current is not None
            with self._lists.lock:
                list_id = self.accessor_list(entry.policy.allowed_accessors)
                policy = current.flags & ~STATE_BITS
                if policy != entry.policy.flags or current.accessors != list_id:
                    self.protect(pid, entry.policy.flags | (current.flags & STATE_BITS), list_id)
                    log.info(
                        "pid %d: flags %#x -> %#x, allow-list %d -> %d (its pod's policy changed)",
                        pid,
                        policy,
                        entry.policy.flags,
                        current.accessors,
                        list_id,
                    )
        self.collect_lists()

    def entry(self, pid: int) -> layouts.ProtectedEntry | None:
        assert self.loaded is not None, "agent not started"
        value = layouts.ProtectedEntry()
        return value if self.loaded.map("protected").lookup(ctypes.c_uint32(pid), value) else None

    # -- registration -----------------------------------------------------------------------

    def _register(self, conn: socket.socket, caller_pod: str | None = None) -> dict[str, object]:
        """Answer one connection of the socket (serving.SocketServer): protect the caller with
        its pod's policy (or the agent's flags). ``caller_pod``: the pod UID the server already
        read from the caller's cgroup."""
        conn.settimeout(REQUEST_DEADLINE)
        pid, uid, _gid = peer_credentials(conn)
        pidfd = peer_pidfd(conn)
        try:
            line = request_line(conn)
            try:
                request = protocol.parse_request(line)
            except protocol.ProtocolError as e:
                return refused(str(e))
            if pid <= 0:
                return refused("no peer credentials (caller outside the host pid namespace?)")
            assert self.loaded is not None
            flags = self.flags
            list_id = DEFAULT_LIST
            allowed: list[str] | None = None  # the pod's accessors (pod-policy mode)
            pod: str | None = None
            if self.pod_policies is not None:
                pod = caller_pod if caller_pod is not None else pod_uid(pid)
                if pod is None:
                    return refused("the caller runs in no pod cgroup on this node")
                entry = self.pod_policies.entry(pod)
                if entry is None:
                    return refused(
                        f"pod {pod} has no cloudtaser protection on this node (not "
                        "injected, or no binding selects it)"
                    )
                flags = entry.policy.flags
                allowed = entry.policy.allowed_accessors
            if request.exec_environ == "clean":
                # Neither its own environment area nor the next execve's holds a value: reading
                # them is no violation (ps, monitoring agents); a later execve ends that.
                flags |= layouts.EntryState.ENVIRON_CLEAN | layouts.EntryState.EXEC_KEEPS_CLEAN
            with self._lists.lock:  # no collect_lists() between the list and the entry
                if allowed is not None:
                    list_id = self.accessor_list(allowed)
                start = self.protect(pid, flags, list_id)
            if pod is not None:
                with self._registered_lock:
                    self._registered[pid] = pod
            self.metrics.registrations.labels(result="ok").inc()
            self._io_uring.restrict(self.backend)
            if pidfd is not None:
                # The pid was read from the connection; a pidfd taken at the same time proves
                # the start time read afterwards is of the same process (no reuse meanwhile).
                try:
                    signal.pidfd_send_signal(pidfd, 0)
                except ProcessLookupError:
                    self.loaded.map("protected").delete(ctypes.c_uint32(pid))
                    return refused("caller exited during registration")
            for problem in self._protect_credentials(pid, flags, request.credentials):
                log.warning("pid %d: credential %s", pid, problem)
            self._deal_with_early_fds(pid, flags, list_id)
            log.info(
                "registered pid %d (uid %d, start %d, flags %#x, allow-list %d)",
                pid,
                uid,
                start,
                flags,
                list_id,
            )
            return accepted(self.backend, flags)
        finally:
            if pidfd is not None:
                os.close(pidfd)

    # -- violations -------------------------------------------------------------------------

    def _deal_with_early_fds(self, pid: int, flags: int, list_id: int = DEFAULT_LIST) -> None:
        """Fds on ``pid``'s environ/mem that other processes opened before its entry was
        written (the kernel side checks opens, not reads): their holders are killed unless
        the entry is audit-only, and reported either way (violations.deal_with_early_holders).
        Not with the LSM backend: its file_permission hook denies (or audits) every read
        through such an fd."""
        if self.backend == LSM:
            return
        wanted = {"environ": ProtectionFlag.ENVIRON, "mem": ProtectionFlag.MEM}
        t0 = time.monotonic()
        holders = [h for h in self._scans.holders(pid) if flags & wanted[h.vector]]
        self.last_scan_seconds = time.monotonic() - t0
        deal_with_early_holders(
            holders,
            pid,
            flags,
            kill=not flags & ProtectionFlag.AUDIT_ONLY,
            allowed=lambda holder, uid: self._lists.allows(holder, uid, list_id),
            report=self._violations.report,
        )


def parse_flags(text: str) -> int:
    """--flags: ProtectionFlag.parse (``environ,mem,ptrace``, ``all`` or a number)."""
    try:
        return int(ProtectionFlag.parse(text))
    except PermanentError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _refresh_every(policies: PodPolicies, seconds: float) -> None:
    """Relist periodically: pods that left the node, and policy changes, which reapply()
    writes into the entries of processes already registered."""
    while True:
        time.sleep(seconds)
        try:
            policies.refresh()
        except Exception as e:  # the API server being away must not stop the agent
            log.warning("relist failed: %s", type(e).__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cloudtaser-bpf-agent", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--socket", default=DEFAULT_SOCKET)
    # The agent image sets CLOUDTASER_BPF_OBJECT to the object it carries (scripts/images/).
    parser.add_argument(
        "--object",
        type=Path,
        default=os.environ.get("CLOUDTASER_BPF_OBJECT") or None,
        help="protect.bpf.o (default: $CLOUDTASER_BPF_OBJECT, else build it)",
    )
    parser.add_argument("--pin-dir", type=Path, default=DEFAULT_PIN_DIR)
    parser.add_argument(
        "--backend",
        choices=("auto", LSM, TRACEPOINT),
        default="auto",
        help="auto: BPF LSM where its programs load here, else tracepoints",
    )
    parser.add_argument(
        "--flags",
        type=parse_flags,
        default=int(DEFAULT_FLAGS),
        help="flags for every caller when --node is not given",
    )
    parser.add_argument(
        "--io-uring",
        choices=IO_URING_CHOICES,
        default="auto",
        help="restrict: no new io_uring ring on the node while it protects "
        "something (kernel.io_uring_disabled=2); auto: restrict on the "
        "tracepoint backend only; allow: check each request only",
    )
    parser.add_argument(
        "--allow-credential-reader",
        action="append",
        default=[],
        metavar="EXE[:UID]",
        help="an executable besides the kubelet that may read protected pods' "
        "credential volumes (repeatable; by inode)",
    )
    parser.add_argument(
        "--allow-bpf-loader",
        action="append",
        default=[],
        metavar="EXE[:UID]",
        help="an executable that may load tracing BPF programs while this node "
        "protects something (repeatable; by inode)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics on this port (e.g. 9462)",
    )
    parser.add_argument(
        "--settings",
        default=os.environ.get("CLOUDTASER_SETTINGS"),
        help="InjectorSettings JSON, the operator's (env CLOUDTASER_SETTINGS)",
    )
    parser.add_argument(
        "--node",
        default=None,
        help="this node's name: take each caller's flags from its pod's policy, "
        "compiled from the API server (in-cluster or $KUBECONFIG)",
    )
    parser.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        default=os.environ.get("CLOUDTASER_LOG_FORMAT", "text"),
        help="one line per record: text, or a JSON object (env CLOUDTASER_LOG_FORMAT)",
    )
    parser.add_argument("--log-level", choices=logs.LEVELS, default="info")
    args = parser.parse_args(argv)
    logs.configure(args.log_format, args.log_level)
    policies = None
    reporter = None
    api: KubeApi | None = None
    if args.node:
        settings = None
        if args.settings:
            try:
                settings = InjectorSettings.model_validate_json(Path(args.settings).read_text())
            except (OSError, ValueError) as e:
                print(
                    f"cloudtaser-bpf-agent: {args.settings}: {type(e).__name__}: {e}",
                    file=sys.stderr,
                )
                return 1
        try:
            api = KubeApi.from_environment()
        except PermanentError as e:
            print(f"cloudtaser-bpf-agent: {e}", file=sys.stderr)
            return 1
        policies = PodPolicies(kubernetes_lister(args.node, api), settings=settings)
        policies.refresh()
        reporter = EventReporter(policies, args.node, api)
        threading.Thread(
            target=_refresh_every, args=(policies, 30.0), daemon=True, name="agent-relist"
        ).start()
    node_reports: list[NodeReport] = []  # needs the backend: made once the agent is loaded
    node_label: NodeLabel | None = None

    def on_violation(v: Violation) -> None:
        if reporter is not None:
            reporter.report(v)
        for report in node_reports:
            report.record(pod_uid(v.target_tgid))

    agent = Agent(
        args.socket,
        args.object,
        args.flags,
        args.pin_dir,
        on_violation=on_violation if reporter else None,
        pod_policies=policies,
        backend=args.backend,
        io_uring=args.io_uring,
    )
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    try:
        agent.start()
        for spec in args.allow_bpf_loader:
            path, uid = parse_accessor(spec)
            agent.allow_bpf_loader(path, uid)
        for spec in args.allow_credential_reader:
            path, uid = parse_accessor(spec)
            agent.allow_credential_reader(path, uid)
    except (PermanentError, OSError) as e:
        print(f"cloudtaser-bpf-agent: {e}", file=sys.stderr)
        agent.stop()
        if api is not None:  # --node: no agent here now, so an earlier one's label must not
            NodeLabel(args.node, api).remove()  # attract pods
        return 1
    if args.metrics_port is not None:
        prometheus_client.start_http_server(args.metrics_port, registry=agent.metrics.registry)
    if policies is not None and api is not None:  # --node
        # the operator's namespace: where it reads node reports
        namespace = (policies.settings or InjectorSettings()).operator_namespace
        backend = agent.loaded.backend if agent.loaded is not None else BACKEND
        node_reports.append(NodeReport(policies, args.node, namespace, backend, api))
        node_reports[0].start()
        node_label = NodeLabel(args.node, api)  # for requireBackend: the scheduler reads it
        node_label.start(backend)
        policies.listeners.append(release_freed_memory)  # the last listener: after reapply()
    release_freed_memory()
    print(f"ready: {args.socket}", flush=True)
    done.wait()
    if node_label is not None:  # first: no pod should be scheduled here for this agent now
        node_label.close()
    agent.stop()
    for report in node_reports:
        report.close()
    if reporter is not None:
        reporter.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
