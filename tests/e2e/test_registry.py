"""Entrypoint resolution against a real registry (Debian's docker-registry, distribution 2.8).

Why: the fake registry in the unit tests serves what we think registries serve; this pushes
an image through a real registry's upload API (blobs via POST/PUT, an OCI manifest and an OCI
index via PUT), then resolves it by tag, by digest and through the index, with the registry's
htpasswd (Basic) auth when ``htpasswd`` (apache2-utils) is installed, and feeds the result to
``pod_patch`` as the webhook does. Needs no cloudtaser stack; runs on 127.0.0.1 only.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import secrets
import shutil
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import jsonpatch
import pytest
import requests

from cloudtaser.engine.compiler import ClusterState, IncrementalCompiler
from cloudtaser.engine.kube import Pod
from cloudtaser.engine.patches import ImageEntrypoint, pod_patch
from cloudtaser.engine.plans import InjectorSettings
from cloudtaser.engine.resources import SecretBinding
from cloudtaser.injector.resolving import (
    OCI_INDEX,
    OCI_MANIFEST,
    PermanentResolveError,
    RegistryCredential,
    Resolver,
    credentials_from_dockerconfigjson,
)
from tests.harness.documents import binding_doc, pod_doc
from tests.harness.registry import free_port, running_registry

pytestmark = pytest.mark.e2e


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Registry:
    host: str
    auth: tuple[str, str] | None

    @property
    def credentials(self) -> list[RegistryCredential]:
        if self.auth is None:
            return []
        return [RegistryCredential(self.host, *self.auth)]

    def url(self, repo: str, path: str) -> str:
        return f"http://{self.host}/v2/{repo}/{path}"

    def push_blob(self, repo: str, data: bytes) -> dict[str, Any]:
        digest = digest_of(data)
        started = requests.post(self.url(repo, "blobs/uploads/"), auth=self.auth, timeout=10)
        assert started.status_code == 202, started.text
        location = urljoin(self.url(repo, ""), started.headers["Location"])
        done = requests.put(
            location,
            params={"digest": digest},
            data=data,
            auth=self.auth,
            headers={"Content-Type": "application/octet-stream"},
            timeout=10,
        )
        assert done.status_code == 201, done.text
        return {"digest": digest, "size": len(data)}

    def push_manifest(self, repo: str, ref: str, media: str, doc: dict[str, Any]) -> str:
        body = json.dumps(doc).encode()
        answer = requests.put(
            self.url(repo, f"manifests/{ref}"),
            data=body,
            auth=self.auth,
            headers={"Content-Type": media},
            timeout=10,
        )
        assert answer.status_code == 201, answer.text
        assert answer.headers["Docker-Content-Digest"] == digest_of(body)
        return digest_of(body)

    def push_image(
        self,
        repo: str,
        tag: str | None,
        entrypoint: list[str] | None,
        cmd: list[str] | None,
        arch: str = "amd64",
    ) -> str:
        """A one-layer image (a tar.gz holding /hello); returns the manifest digest."""
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as tar:
            content = f"hello from {repo} {arch}\n".encode()
            info = tarfile.TarInfo("hello")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        layer = gzip.compress(raw.getvalue(), mtime=0)
        config = json.dumps(
            {
                "architecture": arch,
                "os": "linux",
                "config": {"Entrypoint": entrypoint, "Cmd": cmd, "Env": ["PATH=/bin"]},
                "rootfs": {"type": "layers", "diff_ids": [digest_of(raw.getvalue())]},
            }
        ).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                **self.push_blob(repo, config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    **self.push_blob(repo, layer),
                }
            ],
        }
        if tag is None:
            return self.push_manifest(
                repo, digest_of(json.dumps(manifest).encode()), OCI_MANIFEST, manifest
            )
        return self.push_manifest(repo, tag, OCI_MANIFEST, manifest)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    # Without apache2-utils the registry runs open (auth is then covered by the unit tests).
    auth = ("robot", secrets.token_urlsafe(16)) if shutil.which("htpasswd") else None
    with running_registry(tmp_path_factory.mktemp("registry"), auth) as host:
        yield Registry(host, auth)


@pytest.fixture(scope="module")
def image(registry: Registry) -> tuple[str, str]:
    """(tag reference, manifest digest) of team/app:1.0 with ENTRYPOINT and CMD."""
    digest = registry.push_image(
        "team/app", "1.0", ["/docker-entrypoint.sh"], ["postgres", "-c", "x=1"]
    )
    return f"{registry.host}/team/app:1.0", digest


EXPECTED = ImageEntrypoint(entrypoint=["/docker-entrypoint.sh"], cmd=["postgres", "-c", "x=1"])


def test_resolve_by_tag_then_cached(registry: Registry, image: tuple[str, str]) -> None:
    resolver = Resolver(insecure=[registry.host])
    started = time.perf_counter()
    assert resolver.resolve(image[0], registry.credentials) == EXPECTED
    cold = time.perf_counter() - started
    started = time.perf_counter()
    assert resolver.resolve(image[0], registry.credentials) == EXPECTED
    cached = time.perf_counter() - started
    print(f"resolve cold {cold * 1000:.1f} ms, cached {cached * 1e6:.0f} us")
    assert cached < cold


def test_resolve_by_digest(registry: Registry, image: tuple[str, str]) -> None:
    resolver = Resolver(insecure=[registry.host])
    ref = f"{registry.host}/team/app@{image[1]}"
    assert resolver.resolve(ref, registry.credentials) == EXPECTED
    assert (
        resolver.resolve(f"{registry.host}/team/app:ignored@{image[1]}", registry.credentials)
        == EXPECTED
    )


def test_resolve_through_an_index(registry: Registry) -> None:
    children = []
    for arch, entry in (("arm64", ["/arm"]), ("amd64", ["/amd"])):
        digest = registry.push_image("team/multi", None, entry, ["run"], arch=arch)
        children.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": 0,
                "platform": {"os": "linux", "architecture": arch},
            }
        )
    # sizes must be right for a real registry's index validation
    for child in children:
        body = requests.get(
            registry.url("team/multi", f"manifests/{child['digest']}"),
            headers={"Accept": OCI_MANIFEST},
            auth=registry.auth,
            timeout=10,
        ).content
        child["size"] = len(body)
    registry.push_manifest(
        "team/multi",
        "2.0",
        OCI_INDEX,
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children},
    )
    resolved = Resolver(insecure=[registry.host]).resolve(
        f"{registry.host}/team/multi:2.0", registry.credentials
    )
    assert resolved == ImageEntrypoint(entrypoint=["/amd"], cmd=["run"])


def test_unknown_tag_is_a_clear_permanent_error(registry: Registry, image: tuple[str, str]) -> None:
    ref = f"{registry.host}/team/app:nope"
    with pytest.raises(PermanentResolveError) as info:
        Resolver(insecure=[registry.host]).resolve(ref, registry.credentials)
    assert str(info.value) == (
        f"could not resolve the entrypoint of {ref}: manifest nope not found in {registry.host}"
    )
    with pytest.raises(PermanentResolveError, match="not found"):
        Resolver(insecure=[registry.host]).resolve(
            f"{registry.host}/team/nothing:1", registry.credentials
        )


def test_auth_with_dockerconfigjson(registry: Registry, image: tuple[str, str]) -> None:
    if registry.auth is None:
        pytest.skip("htpasswd (apache2-utils) is not installed; auth is covered by the unit tests")
    user, password = registry.auth
    with pytest.raises(PermanentResolveError, match="hold no credentials") as info:
        Resolver(insecure=[registry.host]).resolve(image[0], [])
    with pytest.raises(PermanentResolveError, match="were refused") as info:
        Resolver(insecure=[registry.host]).resolve(
            image[0], [RegistryCredential(registry.host, user, password + "x")]
        )
    assert password not in str(info.value)
    secret = json.dumps(
        {"auths": {f"http://{registry.host}": {"username": user, "password": password}}}
    )
    creds = credentials_from_dockerconfigjson(secret.encode())
    assert Resolver(insecure=[registry.host]).resolve(image[0], creds) == EXPECTED


def test_pod_without_command_gets_wrapper_entrypoint_and_cmd(
    registry: Registry, image: tuple[str, str]
) -> None:
    compiler = IncrementalCompiler(
        ClusterState(bindings=[SecretBinding.model_validate(binding_doc("app"))])
    )
    settings = InjectorSettings()
    resolver = Resolver(insecure=[registry.host])
    containers: list[dict[str, Any]] = [
        {"name": "app", "image": image[0]},
        {"name": "with-args", "image": image[0], "args": ["-c", "y=2"]},
    ]
    raw = pod_doc(labels={"app": "app"}, containers=containers)
    pod = Pod.model_validate(raw)
    plan = compiler.plan_pod(pod)
    assert plan is not None
    entrypoints = {
        c.name: resolver.resolve(c.image or "", registry.credentials) for c in pod.spec.containers
    }
    result = pod_patch(pod, plan, settings, entrypoints=entrypoints)
    assert result.problems == []
    patched = jsonpatch.apply_patch(raw, result.operations)
    app, with_args = patched["spec"]["containers"]
    wrapper = [f"{settings.bundle_dir}/wrapper", "--"]
    assert app["command"] == wrapper + ["/docker-entrypoint.sh"]
    assert app["args"] == ["postgres", "-c", "x=1"]
    assert with_args["command"] == wrapper + ["/docker-entrypoint.sh"]
    assert with_args["args"] == ["-c", "y=2"]  # the pod's args replace the image CMD
    # without a resolved entrypoint the pod is refused, never started unwrapped
    refused = pod_patch(pod, plan, settings, entrypoints={})
    assert (
        refused.operations == [] and "set spec.containers[].command" in refused.problems[0].message
    )


def test_webhook_reads_the_pods_image_pull_secret(
    registry: Registry,
    image: tuple[str, str],
    stack: Any,
    kubectl: Any,
) -> None:
    """The operator's webhook server (serving.application with running.read_pull_secrets, the
    operator's API client) over HTTPS: a private image resolves only with the pod's
    imagePullSecrets, read from the real API server by name; without them the pod is denied
    with a message that says to set command; the credential appears in no answer."""
    import asyncio
    import base64
    import functools

    import yaml

    from cloudtaser.injector import serving
    from cloudtaser.kubeapi import KubeApi
    from cloudtaser.operator import running
    from cloudtaser.testbed.certificates import CertificateAuthority

    if registry.auth is None:
        pytest.skip("htpasswd (apache2-utils) is not installed; auth is covered by the unit tests")
    user, password = registry.auth
    namespace = "registry-e2e"
    secret_name = f"pull-{secrets.token_hex(3)}"
    config = json.dumps(
        {"auths": {f"http://{registry.host}": {"username": user, "password": password}}}
    )
    kubectl(
        "apply",
        "-f",
        "-",
        stdin=yaml.safe_dump_all(
            [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "type": "kubernetes.io/dockerconfigjson",
                    "metadata": {"name": secret_name, "namespace": namespace},
                    "data": {".dockerconfigjson": base64.b64encode(config.encode()).decode()},
                },
            ]
        ),
    )
    api = KubeApi.from_kubeconfig(str(stack.kubeconfig))
    compiler = IncrementalCompiler(
        ClusterState(bindings=[SecretBinding.model_validate(binding_doc("app", namespace))])
    )
    holder = serving.Holder(
        compiler=compiler,
        resolver=Resolver(insecure=[registry.host]),
        pull_secrets=functools.partial(running.read_pull_secrets, api),
    )
    pair = CertificateAuthority(stack.pki).issue(
        "registry-e2e-webhook", "webhook", server=True, hosts=("127.0.0.1",)
    )
    port = free_port()

    def review(pull_secrets: list[str]) -> dict[str, Any]:
        pod = pod_doc(
            f"private-{secrets.token_hex(3)}",
            namespace,
            labels={"app": "app"},
            containers=[{"name": "app", "image": image[0]}],
        )
        pod["spec"]["imagePullSecrets"] = [{"name": n} for n in pull_secrets]
        return {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": secrets.token_hex(8),
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "operation": "CREATE",
                "namespace": namespace,
                "object": pod,
            },
        }

    async def run() -> list[tuple[int, str]]:
        runner = await serving.start(holder, "127.0.0.1", port, str(pair.cert), str(pair.key))
        try:
            answers = []
            for refs in ([], ["missing-secret"], [secret_name]):
                answer = await asyncio.to_thread(
                    requests.post,
                    f"https://127.0.0.1:{port}/mutate-v1-pod",
                    json=review(refs),
                    verify=str(stack.ca),
                    timeout=30,
                )
                answers.append((answer.status_code, answer.text))
            return answers
        finally:
            await runner.cleanup()

    without, missing, with_secret = asyncio.run(run())
    for status, text in (without, missing):
        response = json.loads(text)["response"]
        assert status == 200 and response["allowed"] is False, text
        assert "spec.containers[0]" in response["status"]["message"], text
        assert "set command" in response["status"]["message"], text
    status, text = with_secret
    response = json.loads(text)["response"]
    assert status == 200 and response["allowed"] is True and response["patchType"] == "JSONPatch", (
        text
    )
    patch = json.loads(base64.b64decode(response["patch"]))
    command = next(op["value"] for op in patch if op["path"] == "/spec/containers/0/command")
    assert command[-1] == "/docker-entrypoint.sh", command
    for _, text in (without, missing, with_secret):
        assert password not in text and base64.b64encode(password.encode()).decode() not in text
    kubectl("delete", "secret", secret_name, "-n", namespace)
