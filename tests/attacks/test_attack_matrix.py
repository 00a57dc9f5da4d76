"""Attack matrix (issue 8 item 1): every vector against an app the real wrapper started.

Enforce mode: every attacker is killed (or, for kill -SEGV, the dump abandoned) with 0 bytes
of the secret, and the agent reports each attempt naming the vector. Audit mode: every
attempt is reported (and the attacker gets what it reads). The table is printed at the end
of the session (tests/attacks/conftest.py), also by ``python -m tests.attacks``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cloudtaser import stacking
from cloudtaser.engine.plans import ProtectionFlag
from tests.attacks.matrix import (
    ALL_PROTECTIONS, RESULTS, VECTORS, App, Row, attempt, grep_files, obtained, start_app,
)
from tests.e2e.conftest import compiled_config
from tests.kernel.conftest import AgentRun, attack
from tests.kernel.test_bpf_protect import READ_FILE

pytestmark = [pytest.mark.kernel, pytest.mark.e2e]
CORE_PATTERN = Path("/proc/sys/kernel/core_pattern")


@pytest.fixture
def cores_here(tmp_path: Path) -> Any:
    """kernel.core_pattern -> tmp_path/core.PID for the test; restored afterwards."""
    old = CORE_PATTERN.read_text()
    CORE_PATTERN.write_text(f"{tmp_path}/core.%p")
    yield tmp_path
    CORE_PATTERN.write_text(old)


@pytest.fixture(scope="module", autouse=True)
def interposer() -> None:
    subprocess.run(["make", "-s", "-C", str(stacking.REPO / "wrapper" / "interposer")],
                   check=True, capture_output=True, timeout=120)


def unregistered_sibling(run: AgentRun, secret: str) -> Row:
    """A process of the same pod that the wrapper did not start: not protected (it never
    registered), and it holds no secret (the wrapper delivers to its own app only)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        since = len(run.violations)
        r = attack(READ_FILE, f"/proc/{proc.pid}/environ")
        got = obtained(secret, r.stdout)
        reported = [v for v in run.violations[since:] if v.target_tgid == proc.pid]
        ok = r.returncode == 0 and got == 0 and not reported
        row = Row("unregistered process of the same pod: environ", "-", f"exit {r.returncode}",
                  got, "-" if not reported else reported[0].kind, ok,
                  "not protected; holds no secret")
    finally:
        proc.kill()
        proc.wait()
    RESULTS.append(row)
    return row


def files_row(secret: str, since: float) -> Row:
    """Files written since the app started (by the wrapper, the interposer, the app, the
    agent) must not hold the secret; older files with it are listed in the note."""
    roots = [stacking.default_state_dir(), Path("/tmp"), Path("/run"), Path("/dev/shm")]
    scan = grep_files([r for r in roots if r.exists()], secret, since=since)
    note = f"{scan.scanned} files searched, {scan.skipped} skipped; new hits: {scan.hits[:3]}"
    if scan.older:
        note += f"; written before this run: {scan.older[:3]}"
    row = Row("secret in files: stack state dir, /tmp, /run, /dev/shm", "-", "-",
              len(scan.hits), "-", not scan.hits, note)
    RESULTS.append(row)
    return row


def run_matrix(mode: str, agent_run: AgentRun, stack: stacking.Paths, token: Path,
               demo_secret: dict[str, str], tmp: Path) -> tuple[list[Row], App]:
    flags = ALL_PROTECTIONS | (int(ProtectionFlag.AUDIT_ONLY) if mode == "audit" else 0)
    agent_run.start(flags=flags)
    secret = demo_secret["password"]
    app = start_app(compiled_config(stack, token, mode="enforce"), agent_run.socket_path, secret)
    rows: list[Row] = []
    stderr = ""
    try:
        for vector in VECTORS:
            rows.append(attempt(vector, app, agent_run, tmp, mode))
            if vector is not VECTORS[-1]:
                assert app.alive(), f"{vector.name}: the protected app died"
    finally:
        stderr = app.stop()
    assert "registered with the node agent (tracepoint backend)" in stderr, stderr
    assert secret not in stderr
    return rows, app


def test_enforce_mode(agent_run: AgentRun, stack: stacking.Paths, token: Path,
                      demo_secret: dict[str, str], cores_here: Path) -> None:
    started = time.time()
    rows, _app = run_matrix("enforce", agent_run, stack, token, demo_secret, cores_here)
    rows.append(unregistered_sibling(agent_run, demo_secret["password"]))
    rows.append(files_row(demo_secret["password"], started - 1))
    failed = [r for r in rows if not r.ok]
    assert not failed, failed


def test_audit_mode(agent_run: AgentRun, stack: stacking.Paths, token: Path,
                    demo_secret: dict[str, str], cores_here: Path,
                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="cloudtaser.bpf.agent")
    rows, _app = run_matrix("audit", agent_run, stack, token, demo_secret, cores_here)
    failed = [r for r in rows if not r.ok]
    assert not failed, failed
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("violation:")]
    assert len(logged) >= sum(r.reported != "-" for r in rows)  # every attempt logged
    assert all(demo_secret["password"] not in line for line in logged)
