"""cloudtaser: Kubernetes secrets that exist only in a workload's process memory.

The package is assembled from the design's top-level folders (see pyproject.toml):
``cloudtaser.engine`` (pure compile), ``cloudtaser.injector``, ``cloudtaser.wrapper``,
``cloudtaser.bpf``; this root holds the CLI and the pieces every room shares (errors).
"""

__version__ = "0.1.0"
