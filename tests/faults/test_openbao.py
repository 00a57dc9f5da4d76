"""Faults between the wrapper and OpenBao, against the real stack: OpenBao stopped (and back),
slow, behind the wrong CA, and a token the API server no longer honours. Each run is the real
wrapper (the Go binary, tests/harness/wrapper.py); the app is ``touch MARKER`` plus a digest of the
delivered value, so "app not started" and "app got the secret" are both observable.

Figures (time to the failure line, restore time) are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from cloudtaser.engine.plans import WrapperConfig
from cloudtaser.testbed import provisioning, stacking
from cloudtaser.testbed.certificates import CertificateAuthority
from tests.harness import wrapper
from tests.harness.faults import LatencyProxy, Outage, latency_proxy
from tests.harness.stack import compiled_config, sha
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e
EX_TEMPFAIL, EX_CONFIG = 75, 78


@dataclass
class Run:
    returncode: int
    stderr: str
    stdout: str
    seconds: float
    started: bool  # the app ran (its marker exists)

    @property
    def last_line(self) -> str:
        return self.stderr.strip().splitlines()[-1]


class Wrapper:
    """The real wrapper as a process; ``finish`` waits (bounded: a hang fails the test)."""

    def __init__(self, config: WrapperConfig, deadline: float, marker: Path) -> None:
        self.marker = marker
        app = f'touch {marker}; printf %s "$DEMO_PASSWORD" | sha256sum'
        wrapper.binary()  # built before the clock starts
        self.t0 = time.monotonic()
        self.proc = wrapper.start(config, "sh", "-c", app, deadline=deadline)

    def finish(self, hang_after: float) -> Run:
        try:
            out, err = self.proc.communicate(timeout=hang_after)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise AssertionError(
                f"the wrapper hung: still running after {hang_after:.0f}s"
            ) from None
        return Run(self.proc.returncode, err, out, time.monotonic() - self.t0, self.marker.exists())


def wrap(config: WrapperConfig, deadline: float, tmp_path: Path) -> Run:
    return Wrapper(config, deadline, tmp_path / f"started-{secrets.token_hex(4)}").finish(
        deadline + 30
    )


def at(config: WrapperConfig, address: str, **changes: Any) -> WrapperConfig:
    source = config.sources[0].model_copy(update={"address": address, **changes})
    return config.model_copy(update={"sources": [source]})


class Secret:
    """The demo secret, with a repr that shows nothing: pytest prints the arguments of every
    frame of a failing test, and this one must never reach the output."""

    def __init__(self, values: dict[str, str]) -> None:
        self._values = values

    def __repr__(self) -> str:
        return "<demo secret, not shown>"

    @property
    def password_sha(self) -> str:
        return sha(self._values["password"])

    def absent_from(self, text: str) -> bool:
        return not any(v in text for v in self._values.values() if len(v) >= 8)


@pytest.fixture
def secret(demo_secret: dict[str, str]) -> Secret:
    return Secret(demo_secret)


def assert_one_line_failure(run: Run, code: int, reason: str, secret: Secret) -> None:
    assert run.returncode == code, run.stderr
    assert not run.started, "the app was started"
    assert run.last_line.startswith("cloudtaser-wrapper: binding cloudtaser-demo/demo: ")
    assert reason in run.last_line, run.stderr
    assert secret.absent_from(run.stdout + run.stderr), "the secret was printed"


def assert_delivered(run: Run, secret: Secret) -> None:
    assert run.returncode == 0, run.stderr
    assert run.started
    assert run.stdout.split()[0] == secret.password_sha
    assert secret.absent_from(run.stderr), "the secret was printed"


# --- OpenBao stopped ----------------------------------------------------------------------------


def test_openbao_stopped_wrapper_gives_up_at_its_deadline_and_succeeds_when_it_is_back(
    stack: stacking.Paths,
    token: Path,
    secret: Secret,
    tmp_path: Path,
    outage: Callable[[str], Outage],
) -> None:
    """Stopped for real (its PID file); one wrapper with a short deadline gives up with one
    line naming the reason, another with a long one retries until OpenBao is back (restarted
    and unsealed by `cloudtaser stack up`) and delivers."""
    config = compiled_config(stack, token)
    down = outage("openbao")
    short = Wrapper(config, 4, tmp_path / "short")
    patient = Wrapper(config, 60, tmp_path / "patient")
    try:
        failed = short.finish(hang_after=30)
        down.restore()
        back = patient.finish(hang_after=90)
    finally:
        for wrapper in (short, patient):
            if wrapper.proc.poll() is None:
                wrapper.proc.kill()
                wrapper.proc.communicate()

    assert_one_line_failure(
        failed, EX_TEMPFAIL, "unreachable (ConnectionError) — gave up after", secret
    )
    assert "login to https://127.0.0.1:18200 (role demo)" in failed.last_line
    retries = [line for line in failed.stderr.splitlines() if "retrying after" in line]
    assert 2 <= len(retries) <= 20, failed.stderr  # bounded, with backoff: not a storm
    # It gives up when the next backoff would end past the deadline, never later.
    assert 1.5 <= failed.seconds < 4 + 1.5, f"gave up after {failed.seconds:.1f}s for a 4s deadline"
    assert_delivered(back, secret)
    assert "retrying after" in back.stderr
    print(
        f"\nopenbao stopped: failure line after {failed.seconds:.2f}s (deadline 4s, "
        f"{len(retries)} retries); outage {down.restored_after:.1f}s (stack up {down.up_seconds:.1f}s); "
        f"patient wrapper delivered after {back.seconds:.1f}s"
    )


# --- OpenBao slow -------------------------------------------------------------------------------


def test_proxy_keeps_tls_verification_end_to_end(
    stack: stacking.Paths,
    token: Path,
    secret: Secret,
    tmp_path: Path,
) -> None:
    """The proxy passes TLS through: the wrapper verifies OpenBao's own certificate, whose
    SANs name 127.0.0.1, localhost and the OpenBao Service's address and name. Reached at an
    address the certificate does not name,
    the same proxy gives a TLS failure: verification was not switched off to make it work."""
    cert = x509.load_pem_x509_certificate(stack.cert("openbao").cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == [
        "127.0.0.1",
        stacking.OPENBAO_SERVICE_IP,
    ]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "openbao.cloudtaser-system.svc"]
    config = compiled_config(stack, token)
    assert config.sources[0].server_name is None and config.sources[0].ca_file == str(stack.ca)
    with latency_proxy("127.0.0.2") as stranger:
        run = wrap(at(config, stranger.address), 10, tmp_path)
    assert_one_line_failure(run, EX_CONFIG, "TLS failure (certificate verify failed)", secret)
    assert stranger.connections == 1


def test_openbao_slow_below_the_deadline_delivers(
    stack: stacking.Paths,
    token: Path,
    secret: Secret,
    tmp_path: Path,
    bao_proxy: LatencyProxy,
) -> None:
    bao_proxy.delay = 0.3  # per chunk, each way: the handshake and two requests add up
    run = wrap(at(compiled_config(stack, token), bao_proxy.address), 20, tmp_path)
    assert_delivered(run, secret)
    assert "retrying" not in run.stderr
    assert run.seconds > 1.5, "the proxy did not slow anything down"
    print(f"\nopenbao slow (0.3 s per chunk), deadline 20 s: delivered in {run.seconds:.2f}s")


def test_openbao_slower_than_the_deadline_fails_at_the_deadline(
    stack: stacking.Paths,
    token: Path,
    secret: Secret,
    tmp_path: Path,
    bao_proxy: LatencyProxy,
) -> None:
    """Each chunk 1.5 s late: no socket timeout (5 s) ever trips, every answer would come —
    too late. The deadline bounds the whole fetch: one line at the deadline, never a hang."""
    bao_proxy.delay = 1.5
    run = wrap(at(compiled_config(stack, token), bao_proxy.address), 3, tmp_path)
    assert_one_line_failure(
        run, EX_TEMPFAIL, "no complete answer within the 3s deadline (too slow)", secret
    )
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert 3 <= run.seconds < 3 + 2, f"gave up after {run.seconds:.1f}s for a 3s deadline"
    print(f"\nopenbao slow (1.5 s per chunk), deadline 3 s: failure line after {run.seconds:.2f}s")


# --- wrong CA -----------------------------------------------------------------------------------


def test_wrong_ca_is_a_named_tls_failure_without_retries(
    stack: stacking.Paths,
    token: Path,
    secret: Secret,
    tmp_path: Path,
    bao_proxy: LatencyProxy,
) -> None:
    """Permanent: one connection, one line, at once — though the deadline would allow 30 s."""
    stranger = CertificateAuthority(tmp_path / "stranger", "some other CA")
    run = wrap(
        at(compiled_config(stack, token), bao_proxy.address, ca_file=str(stranger.pair.cert)),
        30,
        tmp_path,
    )
    assert_one_line_failure(run, EX_CONFIG, "TLS failure (certificate verify failed)", secret)
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert bao_proxy.connections == 1
    assert run.seconds < 10
    print(f"\nwrong CA: failure line after {run.seconds:.2f}s, {bao_proxy.connections} connection")


def rejected(kubectl: Any, jwt: str) -> bool:
    review = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": jwt, "audiences": [provisioning.AUDIENCE]},
    }
    answer = json.loads(kubectl("create", "-o", "json", "-f", "-", stdin=json.dumps(review)))
    return "invalidated" in answer["status"].get("error", "")


# --- token no longer valid ----------------------------------------------------------------------


def test_token_of_a_deleted_pod_is_permission_denied_without_retries(
    stack: stacking.Paths,
    kubectl: Any,
    secret: Secret,
    tmp_path: Path,
    bao_proxy: LatencyProxy,
) -> None:
    """An expired token, the way a pod's token stops being valid in a real cluster: projected
    tokens are bound to their pod, and the API server's TokenReview rejects them once the pod
    is gone (a TokenRequest cannot ask for less than 10 minutes, and deleting the shared demo
    service account would break everyone else's tokens). The token works while the pod exists
    — the control — and is refused once it is deleted: permission denied, one login, no retry."""
    name = f"fault-token-{secrets.token_hex(3)}"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": provisioning.DEMO_NAMESPACE},
        "spec": {
            "serviceAccountName": provisioning.DEMO_ACCOUNT,  # restricted, as the namespace enforces
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "app",
                    "image": "app:1",
                    "command": ["/app"],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }
    created = json.loads(kubectl("create", "-o", "json", "-f", "-", stdin=yaml.safe_dump(pod)))
    try:
        path = tmp_path / "token"
        path.write_text(
            kubectl(
                "create",
                "token",
                provisioning.DEMO_ACCOUNT,
                "-n",
                provisioning.DEMO_NAMESPACE,
                "--audience",
                provisioning.AUDIENCE,
                "--bound-object-kind",
                "Pod",
                "--bound-object-name",
                name,
                "--bound-object-uid",
                created["metadata"]["uid"],
            )
        )
        config = at(compiled_config(stack, path), bao_proxy.address)
        assert_delivered(wrap(config, 30, tmp_path), secret)
    finally:
        kubectl("delete", "pod", name, "-n", provisioning.DEMO_NAMESPACE, "--wait=true")
    # The API server caches a successful token authentication for 10 s (the control run above
    # made one); after that its TokenReview refuses the token: the precondition of this fault.
    wait_for(lambda: rejected(kubectl, path.read_text()), timeout=40, what="TokenReview to refuse")
    before = bao_proxy.connections
    run = wrap(config, 30, tmp_path)
    assert_one_line_failure(run, EX_CONFIG, "login to", secret)
    assert "(role demo): permission denied (the token was refused" in run.last_line, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert bao_proxy.connections - before == 1
    assert run.seconds < 10
    print(f"\ntoken of a deleted pod: failure line after {run.seconds:.2f}s, one connection")
