"""The Go wrapper (cloudtaser-wrapper) for tests and benchmarks: one place that builds it and
starts it the way a container does.

``scripts/build-wrapper`` builds it (cached; the interposers next to it, so file and env
deliveries work as in a pod); ``run``/``start`` start it with a WrapperConfig in
CLOUDTASER_CONFIG, as the injector sets it, followed by ``--`` and the app's command.
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cloudtaser.engine.plans import CONFIG_ENV, WrapperConfig

REPO = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT = 900  # cold: the Go module download and two builds; cached: well under a second


@functools.cache
def directory(arch: str | None = None) -> Path:
    """The built wrapper's directory (``wrapper`` and the interposers) for ``arch``."""
    command = [str(REPO / "scripts" / "build-wrapper")] + (["--arch", arch] if arch else [])
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"scripts/build-wrapper failed:\n{result.stderr}")
    return Path(result.stdout.strip().splitlines()[-1])


def binary(arch: str | None = None) -> Path:
    return directory(arch) / "wrapper"


def command(*app: str, deadline: float | None = None, arch: str | None = None) -> list[str]:
    """The wrapper's command line for ``app``."""
    options = ["--deadline", str(deadline)] if deadline is not None else []
    return [str(binary(arch)), *options, "--", *app]


def environment(
    config: WrapperConfig,
    env: Mapping[str, str] | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """``base`` (default: this process's environment) with ``env`` and the config added."""
    start = dict(os.environ if base is None else base)
    return {**start, **(env or {}), CONFIG_ENV: config.model_dump_json(exclude_none=True)}


def run(
    config: WrapperConfig,
    *app: str,
    deadline: float = 20,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
    **kwargs: Any,
) -> subprocess.CompletedProcess[str]:
    """Run the wrapper (and the app it becomes) to completion; stdout and stderr captured."""
    return subprocess.run(
        command(*app, deadline=deadline),
        env=environment(config, env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )


def start(
    config: WrapperConfig,
    *app: str,
    deadline: float | None = None,
    env: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> subprocess.Popen[str]:
    """Start the wrapper; stdout and stderr are pipes unless ``kwargs`` say otherwise."""
    options: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    return subprocess.Popen(
        command(*app, deadline=deadline), env=environment(config, env), **{**options, **kwargs}
    )
