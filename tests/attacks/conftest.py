"""The attack matrix reuses the kernel tests' agent fixtures and the e2e tests' stack ones."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloudtaser.testbed import stacking
from cloudtaser.bpf import layouts
from tests.attacks import apps
from tests.attacks.matrix import RESULTS, Target, render
from tests.harness import wrapper
from tests.e2e.conftest import compiled_config, demo_secret, kubectl, stack, token
from tests.kernel.conftest import AgentRun, agent_run, bpf_object

__all__ = ["agent_run", "bpf_object", "demo_secret", "kubectl", "stack", "token"]


@pytest.fixture
def wrapped_app(stack: stacking.Paths) -> Iterator[Callable[[AgentRun, Path, str], Target]]:
    """Start the app under the real wrapper (its own namespaces), which fetches ``secret``
    from the stack's OpenBao and registers with the test's agent."""
    def start(run: AgentRun, token: Path, secret: str) -> Target:
        config = compiled_config(stack, token, mode="enforce")
        source = config.sources[0]
        # The pod's credentials on a tmpfs volume of the app's mount namespace, as the kubelet
        # mounts a projected token and a Secret: the wrapper names them, the agent guards them.
        files = {"token": str(token), "tls.crt": source.client_cert_file,
                 "tls.key": source.client_key_file}
        config = config.model_copy(update={
            "token_path": f"{apps.CREDENTIALS}/token",
            "agent": config.agent.model_copy(update={"socket": str(run.socket_path)}),
            "sources": [source.model_copy(update={
                "client_cert_file": f"{apps.CREDENTIALS}/tls.crt",
                "client_key_file": f"{apps.CREDENTIALS}/tls.key"})]})
        prelude = (f'mkdir -p {apps.CREDENTIALS} && mount -t tmpfs tmpfs {apps.CREDENTIALS} && '
                   + " && ".join(f'cp "{src}" {apps.CREDENTIALS}/{name}' for name, src in files.items())
                   + ' && exec "$@"')
        proc = apps.in_namespaces(
            ["sh", "-c", prelude, "prelude",
             *wrapper.command(sys.executable, "-c", apps.APP, "DEMO_PASSWORD", "demo-password",
                              deadline=20)], wrapper.environment(config))
        target = apps.attach(proc, secret, environ_clean=False, pins=run.pin_dir,
                             socket_path=run.socket_path)
        target.env = wrapper.environment(config)
        target.credentials = tuple(Path(src).read_bytes().strip() for src in files.values()
                                   if not src.endswith(".crt"))
        assert run.agent is not None
        entry = run.agent.entry(target.pid)
        assert entry is not None, "the wrapped app is not registered"
        target.environ_clean = bool(entry.flags & layouts.EntryState.ENVIRON_CLEAN)
        return target

    yield start


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The table vector -> result, after the tests, with or without -s."""
    if RESULTS:
        terminalreporter.write_sep("=", "attack matrix")
        for line in render(RESULTS).splitlines():
            terminalreporter.write_line(line)
