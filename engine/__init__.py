"""The pure engine: cluster objects in, a Plan out.

Nothing here touches the world: no clock, no environment, no network, no Kubernetes or
OpenBao client (import-linter enforces it, see .importlinter). The webhook, the agent, the
operator and the CLI all call the same functions, so they cannot disagree about what a
binding means. Same input -> byte-identical output.
"""

from cloudtaser.engine.compiler import ClusterState, IncrementalCompiler, compile_state
from cloudtaser.engine.plans import Plan

__all__ = ["ClusterState", "IncrementalCompiler", "Plan", "compile_state"]
