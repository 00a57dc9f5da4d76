"""The chart on the local stack's real node (kubelet + containerd + runc): installed once for
this package from the stack's loopback registry, uninstalled afterwards (its hook removes the
webhook configuration, `stack uninstall` the agent's pins).

The images are built by scripts/build-images (cached) and pushed here; a pod of these tests is
created in the demo namespace (its service account has the OpenBao role) with the label
``cloudtaser.io/e2e-node``, and every such pod is deleted when the package ends. Nothing here
starts a process of the product on the host: the operator, the agent and the apps run as
pods.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from cloudtaser.testbed import installing, stacking
from tests.harness.nodes import REGISTRY, Pods, delete_test_pods

# Package-scoped, so defined here: this directory bounds the chart's installation. The helpers
# the tests import (images, Pods, binding_ready) are tests/harness/nodes.py's.


@pytest.fixture(scope="package")
def product(stack: stacking.Paths, kubectl: Any) -> Iterator[None]:
    built = subprocess.run(
        [str(stacking.REPO / "scripts" / "build-images"), "--push", REGISTRY, "local"],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    delete_test_pods(kubectl)  # an earlier run's: protected pods would stop a new agent loading
    installing.install(stack, print)
    try:
        yield
    finally:
        try:
            delete_test_pods(kubectl)
        finally:
            installing.uninstall(stack, print)


@pytest.fixture
def pods(product: None, kubectl: Any) -> Pods:
    return Pods(kubectl)
