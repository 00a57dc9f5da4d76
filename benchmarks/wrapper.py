"""Wrapper benchmark: wrapper start -> app exec latency against the local OpenBao.

Run: .venv/bin/python benchmarks/wrapper.py [--runs 50]
Needs the local stack (it runs `cloudtaser stack up`, which is a no-op when it is running).

Each run starts the real wrapper (python -m cloudtaser.wrapper) with the demo binding's
compiled config and a TokenRequest token: TLS + login + KV read + memfd_secret + exec. The app
is `date +%s.%N`, so the figure is the wall time from spawning the wrapper to the app's first
instruction (plus date's own start, ~1 ms). Also prints the frozen bundle's size when
scripts/build-bundle has built it. Target (issue 4): p50 <= 200 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.figures import add_json_flag, emit  # noqa: E402
from cloudtaser import provisioning, stacking  # noqa: E402
from tests.e2e.conftest import compiled_config  # noqa: E402


def bundle_size() -> str:
    script = REPO / "scripts" / "build-bundle"
    if not script.exists():
        return "no scripts/build-bundle"
    proc = subprocess.run([str(script), "--print-dir"], capture_output=True, text=True,
                          check=False)
    directory = Path(proc.stdout.strip()) if proc.returncode == 0 else None
    if directory is None or not directory.is_dir():
        return "not built (scripts/build-bundle)"
    total = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    return f"{total / 1024 / 1024:.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    add_json_flag(parser)
    args = parser.parse_args()
    subprocess.run([str(Path(sys.executable).parent / "cloudtaser"), "stack", "up"],
                   check=True, capture_output=True)
    paths = stacking.Paths(state=stacking.default_state_dir(), bin=stacking.default_bin_dir())
    with tempfile.TemporaryDirectory() as tmp:
        token = Path(tmp) / "token"
        token.write_text(provisioning.kubectl(
            paths, "create", "token", provisioning.DEMO_ACCOUNT, "-n",
            provisioning.DEMO_NAMESPACE, "--audience", "openbao"))
        config = compiled_config(paths, token)
        # env delivery only: the file delivery's interposer is measured by benchmarks/interposer
        source = config.sources[0]
        secrets = [s.model_copy(update={"keys": [k.model_copy(update={"file": None, "sdk": None})
                                                 for k in s.keys]}) for s in source.secrets]
        config = config.model_copy(update={"sources": [source.model_copy(update={"secrets": secrets})]})
        env = {**os.environ, "CLOUDTASER_CONFIG": config.model_dump_json(exclude_none=True)}
        samples = []
        for _ in range(args.runs):
            start = time.time()
            out = subprocess.run(
                [sys.executable, "-m", "cloudtaser.wrapper", "--", "date", "+%s.%N"],
                env=env, capture_output=True, text=True, check=True,
            ).stdout
            samples.append((float(out) - start) * 1000)
    samples.sort()
    p50 = statistics.median(samples)
    p95 = samples[max(0, int(len(samples) * 0.95) - 1)]
    rows = [
        (f"wrapper start -> app exec, p50 of {args.runs}", "<= 200 ms", f"{p50:.0f} ms",
         f"{p50 / 200:.2f} of target"),
        (f"wrapper start -> app exec, p95 of {args.runs}", "-", f"{p95:.0f} ms", "-"),
        ("frozen bundle size", "-", bundle_size(), "-"),
    ]
    emit("wrapper", rows, args.json)


if __name__ == "__main__":
    main()
