"""The node-wide io_uring restriction: while a node protects something on the tracepoint
backend, no new io_uring ring anywhere (kernel.io_uring_disabled=2). The agent checks each
request of the rings that exist from io_uring's own tracepoints; this is the further,
node-wide restriction (docs/THREAT-MODEL.md). The value found before is kept in a record file
beside the agent's socket (a host directory), so a restarted agent, or `cloudtaser stack
uninstall` once the agent is gone, can put it back."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from cloudtaser.bpf.programs import TRACEPOINT

log = logging.getLogger("cloudtaser.bpf.agent")  # the agent's records, whichever part logs them

IO_URING_CHOICES = ("auto", "restrict", "allow")  # auto: restrict on the tracepoint backend
IO_URING_SYSCTL = Path("/proc/sys/kernel/io_uring_disabled")


def io_uring_record(socket_dir: Path) -> Path:
    """Where an agent keeps kernel.io_uring_disabled's value from before it raised it."""
    return socket_dir / "io_uring_disabled.before"


def lift_io_uring_restriction(socket_dir: Path) -> str | None:
    """After the agent is gone and its pins removed (nothing is protected any more): put the
    sysctl back as the agent found it. The value written, or None when no agent raised it."""
    record = io_uring_record(socket_dir)
    try:
        before = record.read_text().strip()
    except OSError:
        return None
    IO_URING_SYSCTL.write_text(before + "\n")
    record.unlink()
    return before


class IoUringRestriction:
    """One agent's side of the sysctl. ``mode``: one of IO_URING_CHOICES; ``live_protected``:
    a tgid of a protected process still alive, if any (then the restriction stays)."""

    def __init__(
        self, mode: str, socket_dir: Path, live_protected: Callable[[], int | None]
    ) -> None:
        self.mode = mode
        self.record = io_uring_record(socket_dir)
        self._live_protected = live_protected
        self.raised = False  # this agent set kernel.io_uring_disabled=2

    def applies(self, backend: str) -> bool:
        return self.mode == "restrict" or (self.mode == "auto" and backend == TRACEPOINT)

    def restrict(self, backend: str) -> None:
        """Raise the sysctl to 2, recording what it was unless a record exists (an earlier
        agent's: the value it found is the one to restore). --io-uring allow turns it off."""
        if not self.applies(backend) or self.raised:
            return
        try:
            before = IO_URING_SYSCTL.read_text().strip()
            if before != "2":
                if not self.record.exists():
                    self.record.write_text(before + "\n")
                IO_URING_SYSCTL.write_text("2\n")
                log.info(
                    "io_uring restricted while this node protects processes "
                    "(kernel.io_uring_disabled %s -> 2; --io-uring allow keeps it)",
                    before,
                )
        except OSError as e:
            log.warning(
                "cannot restrict io_uring (%s: %s); its requests are still checked",
                IO_URING_SYSCTL,
                e.strerror,
            )
            return
        self.raised = True

    def relax(self) -> None:
        """Put the sysctl back as an agent found it, unless a protected process still lives."""
        self.raised = False
        try:
            before = self.record.read_text().strip()
        except OSError:
            return  # no agent raised it
        alive = self._live_protected()
        if alive is not None:
            log.info("io_uring stays restricted: pid %d is still protected", alive)
            return
        try:
            IO_URING_SYSCTL.write_text(before + "\n")
            self.record.unlink()
            log.info("io_uring restriction lifted (kernel.io_uring_disabled -> %s)", before)
        except OSError as e:
            log.warning("cannot restore %s to %s: %s", IO_URING_SYSCTL, before, e.strerror)
