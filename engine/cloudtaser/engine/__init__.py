"""The pure engine: cluster objects in, a Plan out.

Nothing here touches the world: no clock, no environment, no network, no Kubernetes or
OpenBao client (import-linter enforces it, see .importlinter). The webhook, the agent, the
operator and the CLI all call the same functions, so they cannot disagree about what a
binding means. Same input -> byte-identical output.

The names below load on first use: the wrapper, which starts before every app, imports
only the WrapperConfig model and should not pay for the compiler (~75 ms).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "ClusterState": "cloudtaser.engine.compiler",
    "IncrementalCompiler": "cloudtaser.engine.compiler",
    "compile_state": "cloudtaser.engine.compiler",
    "Plan": "cloudtaser.engine.plans",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cloudtaser.engine' has no attribute {name!r}")
