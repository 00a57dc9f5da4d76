"""`cloudtaser operator` carries no kubernetes client, even in this development venv where the
tests install it (kopf would import it if it could: cloudtaser/cli.py says why it cannot), and
the CLI imports nothing of it before that command runs (issue 17: ~10 MiB of the operator's
RSS). In a fresh interpreter: this one may have imported the client for other tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# Runs `cloudtaser operator` up to its first contact with the cluster (the API client's
# configuration, absent here: an error and exit 1), so every module the command imports is
# imported; then reports what is loaded.
PROGRAM = """
import json, sys
from click.testing import CliRunner
from cloudtaser import cli
eager = "kubernetes" in sys.modules
pem = sys.argv[1]
result = CliRunner().invoke(
    cli.main, ["operator", "--tls-cert", pem, "--tls-key", pem, "--ca-file", pem]
)
print(json.dumps({
    "eager": eager,
    "exit": result.exit_code,
    "output": result.output,
    "kopf": "kopf" in sys.modules,
    "running": "cloudtaser.operator.running" in sys.modules,
    "kubernetes": sys.modules.get("kubernetes", "absent") is not None,
}))
"""


def test_the_operator_command_imports_kopf_but_not_the_kubernetes_client(tmp_path: Path) -> None:
    pem = tmp_path / "any.pem"
    pem.write_text("not read before the API client's configuration fails\n")
    answer = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(pem)],
        env={"KUBECONFIG": str(tmp_path / "absent"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    found = json.loads(answer.stdout.splitlines()[-1])
    assert found["exit"] == 1 and "kubeconfig" in found["output"], found
    assert found["kopf"] and found["running"], found
    assert not found["eager"], "the CLI imported the kubernetes client before any command ran"
    assert not found["kubernetes"], "kopf imported the kubernetes client"
