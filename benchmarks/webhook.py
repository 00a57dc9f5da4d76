"""Webhook benchmark: AdmissionReview handling in-process and over HTTPS on loopback.

Run: .venv/bin/python benchmarks/webhook.py [--seconds 60] [--rate 200]

1,000 bindings in one namespace (each selecting its own app label) and one opted-in pod that
one of them selects: the handler compiles the pod's plan and builds the patch. In-process:
admit() called directly. HTTPS: the real server (serving.py) on 127.0.0.1 with a generated
certificate, driven at a fixed rate by a client that keeps its connections open (as the API
server does); latency is measured per request from send to parsed response.
Targets (issue 5): handler p50 <= 0.5 ms, HTTPS p99 <= 10 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.figures import add_json_flag, emit, percentile  # noqa: E402
from cloudtaser.engine.compiler import ClusterState, IncrementalCompiler  # noqa: E402
from cloudtaser.engine.plans import InjectorSettings  # noqa: E402
from cloudtaser.engine.resources import SecretBinding  # noqa: E402
from cloudtaser.injector import serving  # noqa: E402
from cloudtaser.injector.admitting import admit  # noqa: E402
from cloudtaser.testbed.certificates import CertificateAuthority  # noqa: E402
from tests.harness.documents import binding_doc, pod_doc  # noqa: E402
from tests.harness.loading import paced  # noqa: E402

PORT = 18450


def review() -> bytes:
    pod = pod_doc("app-500-x", "bench", labels={"app": "app-500"})
    del pod["metadata"]["namespace"]
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "operation": "CREATE",
                "namespace": "bench",
                "object": pod,
            },
        }
    ).encode()


async def over_https(
    holder: serving.Holder, body: bytes, seconds: float, rate: float, ca: str, cert: str, key: str
) -> tuple[list[float], int]:
    runner = await serving.start(holder, "127.0.0.1", PORT, cert, key)
    import ssl

    context = ssl.create_default_context(cafile=ca)
    latencies: list[float] = []
    errors = 0
    url = f"https://127.0.0.1:{PORT}/mutate-v1-pod"
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=context, limit=16)
    ) as session:

        async def one(_: float) -> None:
            nonlocal errors
            start = time.perf_counter()
            async with session.post(
                url, data=body, headers={"Content-Type": "application/json"}
            ) as r:
                answer = await r.json()
            latencies.append((time.perf_counter() - start) * 1000)
            if r.status != 200 or not answer["response"]["allowed"]:
                errors += 1

        await paced(rate, seconds, one)
    await runner.cleanup()
    return latencies, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rate", type=float, default=200)
    add_json_flag(parser)
    args = parser.parse_args()
    bindings = [SecretBinding.model_validate(binding_doc(f"app-{i}", "bench")) for i in range(1000)]
    compiler = IncrementalCompiler(ClusterState(bindings=bindings))
    settings = InjectorSettings()
    body = review()
    assert "patch" in admit(body, compiler, settings).body["response"], "the pod must be selected"
    samples = []
    for _ in range(2000):
        start = time.perf_counter()
        admit(body, compiler, settings)
        samples.append((time.perf_counter() - start) * 1000)
    handler_p50, handler_p99 = statistics.median(samples), percentile(samples, 0.99)
    with tempfile.TemporaryDirectory() as tmp:
        pair = CertificateAuthority(Path(tmp)).issue(
            "webhook", "bench", server=True, hosts=("127.0.0.1",)
        )
        latencies, errors = asyncio.run(
            over_https(
                serving.Holder(compiler=compiler, settings=settings),
                body,
                args.seconds,
                args.rate,
                str(Path(tmp) / "ca.crt"),
                str(pair.cert),
                str(pair.key),
            )
        )
    https_p50, https_p99 = statistics.median(latencies), percentile(latencies, 0.99)
    rows = [
        (
            "handler in-process, p50 (1,000 bindings)",
            "<= 0.5 ms",
            f"{handler_p50:.3f} ms",
            f"{handler_p50 / 0.5:.2f} of target",
        ),
        ("handler in-process, p99", "-", f"{handler_p99:.3f} ms", "-"),
        (
            f"HTTPS loopback at {args.rate:.0f}/s for {args.seconds:.0f} s, p50",
            "-",
            f"{https_p50:.2f} ms",
            "-",
        ),
        (
            f"HTTPS loopback at {args.rate:.0f}/s for {args.seconds:.0f} s, p99",
            "<= 10 ms",
            f"{https_p99:.2f} ms",
            f"{https_p99 / 10:.2f} of target",
        ),
        ("HTTPS requests / errors", "0 errors", f"{len(latencies)} / {errors}", "-"),
    ]
    emit("webhook", rows, args.json, failed=errors > 0)


if __name__ == "__main__":
    main()
