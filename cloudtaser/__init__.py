"""cloudtaser: Kubernetes secrets that exist only in a workload's process memory.

The package is assembled from the design's top-level folders (see pyproject.toml):
``cloudtaser.engine`` (pure compile), ``cloudtaser.injector``, ``cloudtaser.bpf``; this root
holds the CLI and the pieces every room shares (errors). The per-pod wrapper is a Go program
(``wrapper/``), not part of this package.
"""

__version__ = "0.1.0"
