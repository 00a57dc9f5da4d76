"""The wrapper (the Go binary, tests/harness/wrapper.py) against the real stack: a TokenRequest
token, OpenBao over mTLS, secret memory, exec — and every failure a single line with the app never
started and no secret printed."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudtaser.engine.plans import WrapperConfig
from cloudtaser.testbed import provisioning, stacking
from cloudtaser.testbed.certificates import CertificateAuthority
from tests.harness import wrapper
from tests.harness.processes import stop
from tests.harness.stack import compiled_config, sha

pytestmark = pytest.mark.e2e
SESSION_START = time.time()
REPO = stacking.REPO


def run_wrapper(
    config: WrapperConfig, *command: str, deadline: float = 20, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return wrapper.run(config, *command, deadline=deadline, env=env)


def assert_clean(result: subprocess.CompletedProcess[str], secret: dict[str, str]) -> None:
    for value in secret.values():
        if len(value) >= 8:
            assert value not in result.stdout + result.stderr


def test_env_delivery_reaches_the_app(
    stack: stacking.Paths, token: Path, demo_secret: dict[str, str]
) -> None:
    result = run_wrapper(
        compiled_config(stack, token),
        "sh",
        "-c",
        'printf %s "$DEMO_PASSWORD" | sha256sum; printf %s "$DEMO_USER"',
    )
    assert result.returncode == 0, result.stderr
    digest, user = result.stdout.split(None, 2)[0], result.stdout.split("\n", 1)[1]
    assert digest == sha(demo_secret["password"]) and user == demo_secret["username"]
    assert "CLOUDTASER_CONFIG" not in result.stdout
    assert "secret(s) fetched" in result.stderr
    assert_clean(result, demo_secret)


def test_file_delivery_through_the_interposer(
    stack: stacking.Paths, token: Path, demo_secret: dict[str, str]
) -> None:
    """/etc/demo/password does not exist on disk; cat and Python read it all the same."""
    assert not Path("/etc/demo/password").exists()
    program = (
        "import os; p = '/etc/demo/password'; "
        "print(os.stat(p).st_size, __import__('hashlib').sha256(open(p, 'rb').read()).hexdigest())"
    )
    result = run_wrapper(
        compiled_config(stack, token),
        "sh",
        "-c",
        f'cat /etc/demo/password | sha256sum; {sys.executable} -c "{program}"',
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    password = demo_secret["password"]
    assert lines[0].split()[0] == sha(password)
    assert lines[1] == f"{len(password)} {sha(password)}"
    assert_clean(result, demo_secret)


def test_python_sdk_reads_the_secret_memory(
    stack: stacking.Paths, token: Path, demo_secret: dict[str, str]
) -> None:
    program = (
        "import hashlib, os; from cloudtaser.sdk import get_secret, secrets; "
        "print(secrets(), hashlib.sha256(get_secret('demo-password')).hexdigest()); "
        "fd = int(os.environ['CLOUDTASER_FDS'].split()[1]); "
        "print(os.readlink(f'/proc/self/fd/{fd}'))"
    )
    result = run_wrapper(compiled_config(stack, token), sys.executable, "-c", program)
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.splitlines()
    assert first == f"['demo-password'] {sha(demo_secret['password'])}"
    assert second.startswith("/secretmem")  # the fd is a real memfd_secret region
    assert_clean(result, demo_secret)


def test_app_has_no_core_dumps(stack: stacking.Paths, token: Path) -> None:
    result = run_wrapper(compiled_config(stack, token), "sh", "-c", "ulimit -c; ulimit -H -c")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "0"]


def test_enforce_without_agent_refuses_to_start(
    stack: stacking.Paths, token: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "started"
    result = run_wrapper(compiled_config(stack, token, mode="enforce"), "touch", str(marker))
    assert result.returncode == 78
    assert not marker.exists()
    assert "node agent not reachable at /run/cloudtaser/agent.sock" in result.stderr
    assert "not started without the agent" in result.stderr


def _source(config: WrapperConfig, **changes: Any) -> WrapperConfig:
    return config.model_copy(update={"sources": [config.sources[0].model_copy(update=changes)]})


def _secret_path(config: WrapperConfig, path: str) -> WrapperConfig:
    secret = config.sources[0].secrets[0].model_copy(update={"path": path})
    return _source(config, secrets=[secret])


def _missing_key(config: WrapperConfig) -> WrapperConfig:
    secret = config.sources[0].secrets[0]
    keys = [secret.keys[0].model_copy(update={"key": "nope"})]
    return _source(config, secrets=[secret.model_copy(update={"keys": keys})])


@pytest.fixture(scope="module")
def stranger_ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    ca = CertificateAuthority(tmp_path_factory.mktemp("stranger"), "some other CA")
    ca.issue("client", "intruder", client=True)
    return ca


FAILURES = {
    "openbao-down": (
        lambda c, s, ca, t: _source(c, address="https://127.0.0.1:1"),
        75,
        "unreachable (ConnectionError) — gave up after",
    ),
    "wrong-ca": (
        lambda c, s, ca, t: _source(c, ca_file=str(ca.pair.cert)),
        78,
        "TLS failure (certificate verify failed)",
    ),
    "no-client-cert-file": (
        lambda c, s, ca, t: _source(c, client_cert_file="/nonexistent/tls.crt"),
        78,
        "client certificate /nonexistent/tls.crt of binding "
        "cloudtaser-demo/demo is not a readable file",
    ),
    "client-cert-from-other-ca": (
        lambda c, s, ca, t: _source(
            c,
            client_cert_file=str(ca.dir / "client.crt"),
            client_key_file=str(ca.dir / "client.key"),
        ),
        78,
        "TLS failure",
    ),
    "invalid-token": (
        lambda c, s, ca, t: c.model_copy(update={"token_path": str(t)}),
        78,
        "login to https://127.0.0.1:18200 (role demo): permission denied",
    ),
    "permission-denied": (
        lambda c, s, ca, t: _secret_path(c, "other-team/app"),
        78,
        "secret/other-team/app: permission denied",
    ),
    "missing-key": (
        lambda c, s, ca, t: _missing_key(c),
        78,
        "secret/cloudtaser-demo/app: key 'nope' is missing from the secret",
    ),
    # all or nothing: the first secret is readable, the second is not
    "second-secret-denied": (
        lambda c, s, ca, t: _source(
            c,
            secrets=[
                c.sources[0].secrets[0],
                c.sources[0].secrets[0].model_copy(update={"path": "other-team/app"}),
            ],
        ),
        78,
        "secret/other-team/app: permission denied",
    ),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_failure_is_one_line_and_the_app_never_starts(
    case: str,
    stack: stacking.Paths,
    token: Path,
    demo_secret: dict[str, str],
    stranger_ca: CertificateAuthority,
    tmp_path: Path,
) -> None:
    bad_token = tmp_path / "bad-token"
    bad_token.write_text("eyJhbGciOiJSUzI1NiJ9.e30.c2lnbmF0dXJl")  # well-formed, not signed by us
    change, code, message = FAILURES[case]
    config = change(compiled_config(stack, token), stack, stranger_ca, bad_token)
    marker = tmp_path / "started"
    result = run_wrapper(config, "touch", str(marker), deadline=3)
    assert result.returncode == code, result.stderr
    assert not marker.exists()
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("cloudtaser-wrapper: ") and message in last, result.stderr
    if code == 78:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert_clean(result, demo_secret)


def _device(path: Path) -> int | None:
    try:
        return path.lstat().st_dev
    except OSError:  # gone meanwhile
        return None


def test_the_secret_is_nowhere_on_disk(stack: stacking.Paths, demo_secret: dict[str, str]) -> None:
    """After the runs above: no file in the state dir, the repo or files written to /tmp
    during this session holds the demo password."""
    needle = demo_secret["password"].encode()
    roots = [stack.state, REPO, Path("/tmp")]
    skipped = {REPO / ".venv", REPO / ".git"}
    for root in roots:
        disk = root.stat().st_dev  # the node's mounts under the state dir (pods' tmpfs volumes,
        # network namespaces) are not disk: os.walk does not cross into them
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [
                d
                for d in dirnames
                if Path(dirpath, d) not in skipped and _device(Path(dirpath, d)) == disk
            ]
            for name in filenames:
                path = Path(dirpath, name)
                try:
                    info = path.lstat()
                    if not path.is_file() or info.st_dev != disk or info.st_size > 8 * 1024 * 1024:
                        continue
                    if root == Path("/tmp") and info.st_mtime < SESSION_START - 60:
                        continue
                    assert needle not in path.read_bytes(), f"secret found in {path}"
                except (PermissionError, FileNotFoundError):
                    continue


def test_refresher_rotates_sdk_value_in_place(
    stack: stacking.Paths, token: Path, tmp_path: Path
) -> None:
    """A value rewritten in OpenBao reaches the running app through the same fd, without a
    restart; the refresher dies with the app."""
    import secrets as random_values

    root = provisioning.bao_client(stack, provisioning.bao_root_token(stack.state))
    path = "cloudtaser-demo/rotating"
    first, second = random_values.token_urlsafe(16), random_values.token_urlsafe(16)
    root.secrets.kv.v2.create_or_update_secret(path, mount_point="secret", secret={"v": first})
    config = compiled_config(stack, token)
    secret = (
        config.sources[0]
        .secrets[0]
        .model_copy(
            update={
                "path": path,
                "keys": [
                    config.sources[0]
                    .secrets[0]
                    .keys[0]
                    .model_copy(update={"key": "v", "env": None, "file": None, "sdk": "rotating"})
                ],
            }
        )
    )
    config = _source(config, secrets=[secret]).model_copy(update={"refresh_seconds": 10})
    ready = tmp_path / "ready"
    program = (
        "import hashlib, pathlib, sys, time\n"
        "from cloudtaser.sdk import get_secret\n"
        "seen = [hashlib.sha256(get_secret('rotating')).hexdigest()]\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "deadline = time.monotonic() + 40\n"
        "while time.monotonic() < deadline and len(set(seen)) < 2:\n"
        "    time.sleep(0.5); seen.append(hashlib.sha256(get_secret('rotating')).hexdigest())\n"
        "print(seen[0]); print(seen[-1])\n"
    )
    app = wrapper.start(config, sys.executable, "-c", program)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline and app.poll() is None:
            time.sleep(0.1)
        assert ready.exists(), "the app never started"
        refreshers = _children(app.pid, "cloudtaser-refresher")
        root.secrets.kv.v2.create_or_update_secret(path, mount_point="secret", secret={"v": second})
        out, err = app.communicate(timeout=60)
    finally:
        if app.poll() is None:
            app.kill()
            app.communicate()
    assert app.returncode == 0, err
    assert out.split() == [sha(first), sha(second)]
    assert "1 secret(s) updated in place" in err
    assert first not in out + err and second not in out + err
    assert len(refreshers) == 1, "no refresher ran as the app's child"
    time.sleep(0.5)
    alive = [
        pid
        for pid in refreshers
        if Path(f"/proc/{pid}").exists()
        and Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"cloudtaser-refresher")
    ]
    assert alive == [], "the refresher outlived the app"


def _children(parent: int, name: str) -> list[int]:
    """PIDs of ``parent``'s children whose argv[0] is ``name``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if (
                proc.name.isdigit()
                and f"PPid:\t{parent}\n" in (proc / "status").read_text()
                and (proc / "cmdline").read_bytes().split(b"\0")[0] == name.encode()
            ):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_go_sdk_reads_the_secret_memory(
    stack: stacking.Paths, token: Path, tmp_path: Path, demo_secret: dict[str, str]
) -> None:
    exe = tmp_path / "cloudtaser-printsecret"
    subprocess.run(
        ["go", "build", "-o", str(exe), "./cmd/cloudtaser-printsecret"],
        cwd=REPO / "sdk" / "go",
        check=True,
        capture_output=True,
        timeout=600,
    )
    result = run_wrapper(compiled_config(stack, token), str(exe), "demo-password")
    assert result.returncode == 0, result.stderr
    password = demo_secret["password"]
    assert result.stdout.strip() == f"len={len(password)} sha256={sha(password)}"
    assert_clean(result, demo_secret)


def test_go_test_runs_against_the_wrappers_own_fds(
    stack: stacking.Paths, token: Path, tmp_path: Path, demo_secret: dict[str, str]
) -> None:
    """`go test` of sdk/go with the real wrapper as the launcher: the test binary is the app,
    its CLOUDTASER_FDS and memfd_secret fd are the wrapper's (TestUnderTheWrapper)."""
    binary = tmp_path / "cloudtaser.test"
    subprocess.run(
        ["go", "test", "-c", "-o", str(binary), "."],
        cwd=REPO / "sdk" / "go",
        check=True,
        capture_output=True,
        timeout=600,
    )
    password = demo_secret["password"]
    result = run_wrapper(
        compiled_config(stack, token),
        str(binary),
        "-test.run",
        "^TestUnderTheWrapper$",
        "-test.v",
        env={"CLOUDTASER_SDK_EXPECT": f"demo-password {sha(password)} {len(password)}"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--- PASS: TestUnderTheWrapper" in result.stdout, result.stdout
    assert "SKIP" not in result.stdout
    assert_clean(result, demo_secret)


def _resigned(stack: stacking.Paths, token: str, expires_in: int) -> str:
    """``token`` (a real TokenRequest token) with its expiry moved to ``expires_in`` seconds
    from now, signed again with the API server's own service-account key: a token the API
    server itself could have issued."""
    import base64
    import json

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    def decode(part: str) -> Any:
        return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))

    def encode(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header, payload, _ = token.split(".")
    assert decode(header)["alg"] == "RS256"
    claims = decode(payload)
    now = int(time.time())
    claims["exp"] = now + expires_in
    claims["iat"] = claims["nbf"] = min(now, claims["exp"]) - 3600
    signed = f"{header}.{encode(json.dumps(claims, separators=(',', ':')).encode())}"
    key = serialization.load_pem_private_key((stack.pki / "sa.key").read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return f"{signed}.{encode(key.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256()))}"


def test_an_expired_token_is_refused_and_the_line_says_so(
    stack: stacking.Paths,
    token: Path,
    demo_secret: dict[str, str],
    tmp_path: Path,
) -> None:
    """Expired ten minutes ago (past any clock-skew leeway), signed by the API server's key.
    Control: the same token re-signed to expire in ten minutes is accepted, so the expiry is
    the only thing that differs."""
    real = token.read_text().strip()
    fresh, expired = tmp_path / "fresh", tmp_path / "expired"
    fresh.write_text(_resigned(stack, real, 600))
    expired.write_text(_resigned(stack, real, -600))
    config = compiled_config(stack, token)
    accepted = run_wrapper(config.model_copy(update={"token_path": str(fresh)}), "true", deadline=5)
    assert accepted.returncode == 0, accepted.stderr
    marker = tmp_path / "started"
    refused = run_wrapper(
        config.model_copy(update={"token_path": str(expired)}), "touch", str(marker), deadline=3
    )
    assert refused.returncode == 78 and not marker.exists()
    assert refused.stderr == (
        "cloudtaser-wrapper: binding cloudtaser-demo/demo: login to "
        "https://127.0.0.1:18200 (role demo): permission denied (the "
        "service-account token has expired)\n"
    )
    assert_clean(refused, demo_secret)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def openbao_without_its_api_server(stack: stacking.Paths, tmp_path: Path) -> Iterator[str]:
    """A throwaway dev OpenBao (its own process and port, never the stack's) whose Kubernetes
    auth points at an API server that is down (a closed port): an API server outage as
    OpenBao sees it. Role "reviewed" binds the namespace by name (only the TokenReview needs
    the API); role "selected" by a namespace selector (a namespace lookup first). TLS with the
    dev server's own CA (yields its URL; the CA is ``tmp_path/tls/vault-ca.pem``): the wrapper
    talks to OpenBao only over TLS."""
    import json

    import requests

    port, dead = _free_port(), _free_port()
    url = f"https://127.0.0.1:{port}"
    tls = tmp_path / "tls"
    tls.mkdir()
    with (tmp_path / "bao.log").open("w") as log:
        bao = subprocess.Popen(
            [
                str(stack.binary("bao")),
                "server",
                "-dev",
                f"-dev-listen-address=127.0.0.1:{port}",
                "-dev-root-token-id=throwaway-root",
                "-dev-tls",
                f"-dev-tls-cert-dir={tls}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        headers = {"X-Vault-Token": "throwaway-root"}
        deadline = time.monotonic() + 30
        while True:
            try:
                if (
                    requests.get(
                        f"{url}/v1/sys/health", timeout=1, verify=str(tls / "vault-ca.pem")
                    ).status_code
                    == 200
                ):
                    break
            except (requests.RequestException, OSError):  # not up, or its CA not written yet
                pass
            assert time.monotonic() < deadline and bao.poll() is None, "dev OpenBao did not start"
            time.sleep(0.1)

        def write(path: str, body: dict[str, Any]) -> None:
            requests.post(
                f"{url}/v1/{path}",
                headers=headers,
                json=body,
                timeout=10,
                verify=str(tls / "vault-ca.pem"),
            ).raise_for_status()

        write("sys/auth/kubernetes", {"type": "kubernetes"})
        write(
            "auth/kubernetes/config",
            {
                "kubernetes_host": f"https://127.0.0.1:{dead}",
                "kubernetes_ca_cert": stack.ca.read_text(),
                "token_reviewer_jwt": "unused.reviewer.jwt",
                "disable_local_ca_jwt": True,
            },
        )
        common = {
            "bound_service_account_names": [provisioning.DEMO_ACCOUNT],
            "audience": "openbao",
            "policies": ["default"],
            "ttl": "1m",
        }
        write(
            "auth/kubernetes/role/reviewed",
            {**common, "bound_service_account_namespaces": [provisioning.DEMO_NAMESPACE]},
        )
        write(
            "auth/kubernetes/role/selected",
            {
                **common,
                "bound_service_account_namespace_selector": json.dumps(
                    {"matchLabels": {"kubernetes.io/metadata.name": provisioning.DEMO_NAMESPACE}}
                ),
            },
        )
        yield url
    finally:
        stop(bao, timeout=20)


@pytest.mark.parametrize(
    ("role", "code", "message"),
    [
        # OpenBao answers a failed TokenReview with a bare 403, whatever the cause: not retried,
        # and the line says that an outage looks the same.
        (
            "reviewed",
            78,
            "permission denied (the token was refused; OpenBao answers the same when "
            "it cannot reach the Kubernetes API to review the token)",
        ),
        # The namespace lookup's failure names the connection error: retried until the deadline.
        (
            "selected",
            75,
            "permission denied because OpenBao could not reach the Kubernetes API to "
            "check the role's namespace selector — gave up after",
        ),
    ],
    ids=["tokenreview-403-not-retried", "namespace-selector-retried"],
)
def test_an_api_server_outage_behind_openbao(
    openbao_without_its_api_server: str,
    stack: stacking.Paths,
    token: Path,
    tmp_path: Path,
    role: str,
    code: int,
    message: str,
) -> None:
    ca = tmp_path / "tls" / "vault-ca.pem"  # the fixture's (tmp_path is the test's and its)
    config = _source(
        compiled_config(stack, token),
        address=openbao_without_its_api_server,
        role=role,
        ca_file=str(ca),
    )
    marker = tmp_path / "started"
    result = run_wrapper(config, "touch", str(marker), deadline=3)
    assert result.returncode == code, result.stderr
    assert not marker.exists()
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(
        f"cloudtaser-wrapper: binding cloudtaser-demo/demo: login to "
        f"{openbao_without_its_api_server} (role {role}): {message}"
    ), lines
    if code == 75:
        assert len(lines) >= 2 and all("retrying after" in line for line in lines[:-1]), lines
    else:
        assert len(lines) == 1, lines


@pytest.fixture(scope="module")
def memscan_wrapper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wrapper's test build (-tags memscan): it scans its own memory just before exec."""
    out = tmp_path_factory.mktemp("memscan") / "wrapper"
    subprocess.run(
        ["go", "build", "-tags", "memscan", "-o", str(out), "./cmd/cloudtaser-wrapper"],
        cwd=REPO / "wrapper",
        env={**os.environ, "CGO_ENABLED": "0"},
        check=True,
        capture_output=True,
        timeout=600,
    )
    return out


@pytest.mark.parametrize("sweep", [True, False], ids=["swept", "not-swept"])
def test_no_secret_in_the_wrappers_memory_at_exec(
    stack: stacking.Paths,
    token: Path,
    tmp_path: Path,
    memscan_wrapper: Path,
    sweep: bool,
    demo_secret: dict[str, str],
) -> None:
    """Against the real OpenBao: just before exec no value, client token or service-account
    token (nor a 16-byte piece of one) is in the wrapper's memory outside its secret buffers;
    without the sweep there is (the scan can fail)."""
    import json

    report = tmp_path / "scan.json"
    env = {
        **os.environ,
        "CLOUDTASER_MEMSCAN_REPORT": str(report),
        "CLOUDTASER_INTERPOSER_DIR": str(wrapper.directory()),
        "CLOUDTASER_CONFIG": compiled_config(stack, token).model_dump_json(exclude_none=True),
    }
    if not sweep:
        env["CLOUDTASER_MEMSCAN_NOSWEEP"] = "1"
    result = subprocess.run(
        [str(memscan_wrapper), "--", "true"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    scan = json.loads(report.read_text())
    assert scan["secrets"] >= 4 and scan["scanned_bytes"] > 1 << 20, scan
    # the scan leaves out the argv/environment strings: this test put no secret there
    assert 0 < scan["args_env_bytes"] < 1 << 20, scan
    passed = "\0".join(f"{k}={v}" for k, v in env.items())
    assert token.read_text().strip() not in passed and demo_secret["password"] not in passed
    if sweep:
        assert (scan["whole"], scan["pieces"]) == (0, 0), scan["found"]
    else:
        assert scan["whole"] > 0, scan


def _under_memlock(limit: int) -> dict[str, Any]:
    """RLIMIT_MEMLOCK at ``limit`` bytes for the wrapper (and the app it becomes)."""

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (limit, limit))

    return {"preexec_fn": limited}


def test_typical_secrets_fit_the_runtimes_memlock_limit(
    stack: stacking.Paths, token: Path, demo_secret: dict[str, str]
) -> None:
    """No IPC_LOCK (Pod Security restricted): the wrapper's locked buffers and the memfd_secret
    regions count against RLIMIT_MEMLOCK. With requireSecretMem the smallest limit that works is
    measured (printed) and must sit far below the 8 MiB containers get by default; below it, one
    line names the limit, its value and how to raise it."""
    config = compiled_config(stack, token).model_copy(update={"require_secret_mem": True})
    # IPC_LOCK out of the bounding set: root's effective set loses it at exec, as in a container
    setpriv = ["setpriv", "--bounding-set", "-ipc_lock", "--inh-caps", "-ipc_lock", "--"]
    program = (
        "import hashlib; from cloudtaser.sdk import get_secret; "
        "print(hashlib.sha256(get_secret('demo-password')).hexdigest())"
    )

    def attempt(limit: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            setpriv + wrapper.command(sys.executable, "-c", program, deadline=20),
            env=wrapper.environment(config),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            **_under_memlock(limit),
        )

    ladder = [kib * 1024 for kib in (4, 8, 16, 32, 64, 128, 256, 512, 1024, 8192)]
    results = {limit: attempt(limit) for limit in ladder}
    working = [limit for limit, r in results.items() if r.returncode == 0]
    assert working, results[ladder[-1]].stderr
    smallest = min(working)
    print(f"smallest RLIMIT_MEMLOCK that works: {smallest // 1024} KiB (of 8192 KiB by default)")
    assert smallest <= 1024 * 1024
    assert results[8192 * 1024].stdout.strip() == sha(demo_secret["password"])
    refused = results[ladder[0]]
    assert refused.returncode == 78, refused.stderr
    line = refused.stderr.strip().splitlines()[-1]
    print(f"at 4 KiB: {line}")
    for needed in ("RLIMIT_MEMLOCK 4 KiB", "ipcLock: true", "LimitMEMLOCK=", "requireSecretMem"):
        assert needed in line, line
    for r in results.values():
        assert_clean(r, demo_secret)
