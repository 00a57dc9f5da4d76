"""Entrypoint resolution against a canned registry on 127.0.0.1 (no network needed)."""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from cloudtaser.engine.patches import ImageEntrypoint
from cloudtaser.errors import PermanentError, TemporaryError
from cloudtaser.injector.resolving import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    ImageReference,
    PermanentResolveError,
    RegistryCredential,
    ResolveError,
    Resolver,
    TemporaryResolveError,
    credentials_from_dockerconfigjson,
    parse_reference,
)
from cloudtaser.testbed.certificates import CertificateAuthority

D64 = "a" * 64
SECRET = "s3cr3t-pa55"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# --------------------------------------------------------------------------- fake registry


@dataclass
class FakeRegistry:
    """Serves /v2/<repo>/manifests/<ref> and /blobs/<digest>; optional Basic or Bearer auth."""

    manifests: dict[tuple[str, str], tuple[str, bytes]] = field(default_factory=dict)
    blobs: dict[tuple[str, str], bytes] = field(default_factory=dict)
    auth: str | None = None  # None, "basic" or "bearer"
    public: set[str] = field(default_factory=set)  # repos an anonymous bearer token may pull
    user: str = "robot"
    password: str = SECRET
    status: int | None = None  # force every registry answer to this status
    delay: float = 0.0
    log: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Authorization)
    port: int = 0
    scheme: str = "http"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add_image(
        self,
        repo: str,
        tag: str | None,
        entrypoint: list[str] | None,
        cmd: list[str] | None,
        media: str = OCI_MANIFEST,
        config_override: bytes | None = None,
    ) -> str:
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Entrypoint": entrypoint, "Cmd": cmd},
            }
        ).encode()
        digest = sha(config)
        self.blobs[(repo, digest)] = config_override if config_override is not None else config
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": media,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": digest,
                    "size": len(config),
                },
                "layers": [],
            }
        ).encode()
        return self.add_manifest(repo, tag, media, manifest)

    def add_manifest(self, repo: str, tag: str | None, media: str, body: bytes) -> str:
        digest = sha(body)
        self.manifests[(repo, digest)] = (media, body)
        if tag:
            self.manifests[(repo, tag)] = (media, body)
        return digest

    def add_index(
        self, repo: str, tag: str, children: list[tuple[str, str, str]], media: str = OCI_INDEX
    ) -> str:
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": media,
                "manifests": [
                    {
                        "mediaType": OCI_MANIFEST,
                        "digest": d,
                        "size": 1,
                        "platform": {"os": os_, "architecture": arch},
                    }
                    for os_, arch, d in children
                ],
            }
        ).encode()
        return self.add_manifest(repo, tag, media, body)

    # -- request handling
    def challenge(self, repo: str) -> str:
        if self.auth == "basic":
            return 'Basic realm="fake"'
        return (
            f'Bearer realm="{self.scheme}://{self.host}/token",service="fake",'
            f'scope="repository:{repo}:pull"'
        )

    def authorized(self, repo: str, header: str | None) -> bool:
        if self.auth is None:
            return True
        if self.auth == "basic":
            return header == basic(self.user, self.password)
        return header == "Bearer good" or (header == "Bearer anon" and repo in self.public)

    def handle(
        self, path: str, query: dict[str, list[str]], header: str | None
    ) -> tuple[int, dict[str, str], bytes]:
        self.log.append((path, header))
        if self.delay:
            time.sleep(self.delay)
        if path == "/token":
            assert query.get("service") == ["fake"] and query.get("scope"), query
            if header is None:
                return 200, {}, json.dumps({"token": "anon"}).encode()
            if header == basic(self.user, self.password):
                return 200, {}, json.dumps({"access_token": "good"}).encode()
            return 401, {}, b'{"errors":[{"code":"UNAUTHORIZED"}]}'
        if self.status is not None:
            return self.status, {}, b"{}"
        head, sep, ref = path.rpartition("/")
        repo, kind = head.removeprefix("/v2/").rsplit("/", 1)
        if not self.authorized(repo, header):
            return 401, {"WWW-Authenticate": self.challenge(repo)}, b'{"errors":[]}'
        if kind == "manifests" and (repo, ref) in self.manifests:
            media, body = self.manifests[(repo, ref)]
            return 200, {"Content-Type": media, "Docker-Content-Digest": sha(body)}, body
        if kind == "blobs" and (repo, ref) in self.blobs:
            return 200, {"Content-Type": "application/octet-stream"}, self.blobs[(repo, ref)]
        return 404, {}, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}'

    def paths(self) -> list[str]:
        return [p for p, _ in self.log]


def serve(registry: FakeRegistry, context: ssl.SSLContext | None = None) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            status, headers, body = registry.handle(
                url.path, parse_qs(url.query), self.headers.get("Authorization")
            )
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
        registry.scheme = "https"
    registry.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    return server


@pytest.fixture
def registry() -> Iterator[FakeRegistry]:
    fake = FakeRegistry()
    server = serve(fake)
    yield fake
    server.shutdown()
    server.server_close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def resolver_for(registry: FakeRegistry, **kwargs: Any) -> Resolver:
    return Resolver(insecure=[registry.host], **{"timeout": 2.0, **kwargs})


# --------------------------------------------------------------------------- references


@pytest.mark.parametrize(
    "image, expected",
    [
        ("nginx", ("docker.io", "library/nginx", "latest", None)),
        ("nginx:1.25", ("docker.io", "library/nginx", "1.25", None)),
        ("bitnami/redis:7", ("docker.io", "bitnami/redis", "7", None)),
        ("docker.io/nginx", ("docker.io", "library/nginx", "latest", None)),
        ("index.docker.io/library/nginx:1", ("docker.io", "library/nginx", "1", None)),
        ("ghcr.io/org/team/app:v1.2.3", ("ghcr.io", "org/team/app", "v1.2.3", None)),
        ("localhost/app", ("localhost", "app", "latest", None)),
        ("localhost:5000/app:dev", ("localhost:5000", "app", "dev", None)),
        ("127.0.0.1:5000/a/b", ("127.0.0.1:5000", "a/b", "latest", None)),
        ("Registry.Example.COM:443/x", ("registry.example.com:443", "x", "latest", None)),
        (f"nginx@sha256:{D64}", ("docker.io", "library/nginx", None, f"sha256:{D64}")),
        (f"quay.io/a/b:1.0@sha256:{D64}", ("quay.io", "a/b", "1.0", f"sha256:{D64}")),
        ("my-app_x__z/sub.dir-x:tag_1", ("docker.io", "my-app_x__z/sub.dir-x", "tag_1", None)),
    ],
)
def test_reference_parsing(image: str, expected: tuple[str, str, str | None, str | None]) -> None:
    ref = parse_reference(image)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == expected
    assert ref.reference == (expected[3] or expected[2])


def test_reference_api_host() -> None:
    assert parse_reference("nginx").api_host == "registry-1.docker.io"
    assert parse_reference("localhost:5000/app").api_host == "localhost:5000"
    assert (
        str(ImageReference("docker.io", "library/nginx", "latest"))
        == "docker.io/library/nginx:latest"
    )


@pytest.mark.parametrize(
    "image",
    [
        "",
        " nginx",
        "Nginx",
        "nginx:",
        "nginx:bad/tag",
        "nginx@sha256:abc",
        "nginx@md5:" + "a" * 32,
        "ghcr.io/",
        "ghcr.io//x",
        "a/-b",
        "nginx:" + "t" * 129,
        "bad_host:5000:x/y",
    ],
)
def test_invalid_references_are_permanent(image: str) -> None:
    with pytest.raises(PermanentResolveError, match="invalid image reference"):
        parse_reference(image)


# --------------------------------------------------------------------------- credentials


def test_dockerconfigjson_parsing() -> None:
    data = json.dumps(
        {
            "auths": {
                "https://index.docker.io/v1/": {
                    "auth": base64.b64encode(b"hubuser:hub:pw").decode()
                },
                "registry.example.com": {"username": "u", "password": SECRET},
                "https://registry.example.com:5000/team": {
                    "auth": base64.b64encode(f"t:{SECRET}".encode()).decode()
                },
                "token-only.example": {"identitytoken": "xyz"},
            }
        }
    ).encode()
    creds = credentials_from_dockerconfigjson(data)
    assert [(c.registry, c.path, c.username, c.password) for c in creds] == [
        ("docker.io", "", "hubuser", "hub:pw"),
        ("registry.example.com", "", "u", SECRET),
        ("registry.example.com:5000", "team", "t", SECRET),
    ]
    assert SECRET not in repr(creds) and "hub:pw" not in repr(creds)
    assert creds[0].matches(parse_reference("nginx"))
    assert creds[2].matches(parse_reference("registry.example.com:5000/team/app"))
    assert not creds[2].matches(parse_reference("registry.example.com:5000/teamx/app"))
    assert not creds[1].matches(parse_reference("registry.example.com:5000/team/app"))


def test_legacy_dockercfg_and_empty() -> None:
    legacy = json.dumps(
        {"quay.io": {"auth": base64.b64encode(b"a:b").decode()}, "credsStore": "desktop"}
    ).encode()
    assert [c.registry for c in credentials_from_dockerconfigjson(legacy)] == ["quay.io"]
    assert credentials_from_dockerconfigjson(b'{"auths": {}}') == []


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        b'{"auths": []}',
        b'{"auths": {"x": "y"}}',
        json.dumps({"auths": {"x.io": {"auth": "%%%" + SECRET}}}).encode(),
        json.dumps(
            {"auths": {"x.io": {"auth": base64.b64encode(SECRET.encode()).decode()}}}
        ).encode(),
    ],
)
def test_malformed_dockerconfigjson(data: bytes) -> None:
    with pytest.raises(PermanentError) as info:
        credentials_from_dockerconfigjson(data)
    assert SECRET not in str(info.value)
    assert info.value.__cause__ is None


# --------------------------------------------------------------------------- resolving


@pytest.mark.parametrize("media", [OCI_MANIFEST, DOCKER_MANIFEST])
def test_resolve_by_tag_and_digest(registry: FakeRegistry, media: str) -> None:
    digest = registry.add_image("team/app", "1.0", ["/entry", "-x"], ["serve"], media=media)
    resolver = resolver_for(registry)
    expected = ImageEntrypoint(entrypoint=["/entry", "-x"], cmd=["serve"])
    assert resolver.resolve(f"{registry.host}/team/app:1.0", []) == expected
    (config_digest,) = [d for _, d in registry.blobs]
    assert registry.paths() == ["/v2/team/app/manifests/1.0", f"/v2/team/app/blobs/{config_digest}"]
    fresh = resolver_for(registry)
    assert fresh.resolve(f"{registry.host}/team/app@{digest}", []) == expected


def test_null_entrypoint_and_cmd_are_empty(registry: FakeRegistry) -> None:
    registry.add_image("app", "x", None, None)
    assert resolver_for(registry).resolve(f"{registry.host}/app:x") == ImageEntrypoint()


@pytest.mark.parametrize("media", [OCI_INDEX, DOCKER_LIST])
def test_index_picks_linux_amd64(registry: FakeRegistry, media: str) -> None:
    arm = registry.add_image("multi", None, ["/arm"], [])
    amd = registry.add_image("multi", None, ["/amd"], ["run"])
    win = registry.add_image("multi", None, ["/win"], [])
    registry.add_index(
        "multi",
        "latest",
        [
            ("linux", "arm64", arm),
            ("windows", "amd64", win),
            ("unknown", "unknown", arm),
            ("linux", "amd64", amd),
        ],
        media=media,
    )
    resolver = resolver_for(registry)
    assert resolver.resolve(f"{registry.host}/multi") == ImageEntrypoint(
        entrypoint=["/amd"], cmd=["run"]
    )
    assert f"/v2/multi/manifests/{amd}" in registry.paths()
    arm_resolver = resolver_for(registry, platform=("linux", "arm64"))
    assert arm_resolver.resolve(f"{registry.host}/multi").entrypoint == ["/arm"]


def test_index_without_the_platform(registry: FakeRegistry) -> None:
    arm = registry.add_image("multi", None, ["/arm"], [])
    registry.add_index("multi", "arm-only", [("linux", "arm64", arm)])
    with pytest.raises(PermanentResolveError, match=r"no linux/amd64 image \(has: linux/arm64\)"):
        resolver_for(registry).resolve(f"{registry.host}/multi:arm-only")


def test_config_blob_digest_mismatch(registry: FakeRegistry) -> None:
    evil = json.dumps({"config": {"Entrypoint": ["/evil"]}}).encode()
    registry.add_image("app", "1", ["/good"], [], config_override=evil)
    with pytest.raises(
        PermanentResolveError, match="config blob does not match its digest"
    ) as info:
        resolver_for(registry).resolve(f"{registry.host}/app:1")
    assert isinstance(info.value, PermanentError)


def test_manifest_digest_mismatch(registry: FakeRegistry) -> None:
    digest = registry.add_image("app", None, ["/good"], [])
    other = registry.add_image("app", None, ["/evil"], [])
    registry.manifests[("app", digest)] = registry.manifests[("app", other)]
    with pytest.raises(PermanentResolveError, match="manifest's content does not match its digest"):
        resolver_for(registry).resolve(f"{registry.host}/app@{digest}")


def test_index_child_digest_mismatch(registry: FakeRegistry) -> None:
    good = registry.add_image("app", None, ["/good"], [])
    evil = registry.add_image("app", None, ["/evil"], [])
    registry.manifests[("app", good)] = registry.manifests[("app", evil)]
    registry.add_index("app", "multi", [("linux", "amd64", good)])
    with pytest.raises(PermanentResolveError, match="does not match its digest"):
        resolver_for(registry).resolve(f"{registry.host}/app:multi")


@pytest.mark.parametrize(
    "blob, reason",
    [
        (b"not json", "not JSON"),
        (
            json.dumps({"config": {"Entrypoint": "/bin/sh -c x"}}).encode(),
            "Entrypoint is not a list",
        ),
        (json.dumps({"config": {"Cmd": [1]}}).encode(), "Cmd is not a list"),
    ],
)
def test_bad_configs(registry: FakeRegistry, blob: bytes, reason: str) -> None:
    digest = sha(blob)
    registry.blobs[("app", digest)] = blob
    registry.add_manifest(
        "app",
        "1",
        OCI_MANIFEST,
        json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"digest": digest}}
        ).encode(),
    )
    with pytest.raises(PermanentResolveError, match=reason):
        resolver_for(registry).resolve(f"{registry.host}/app:1")


def test_schema1_is_refused(registry: FakeRegistry) -> None:
    registry.add_manifest(
        "old",
        "1",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        b'{"schemaVersion": 1, "fsLayers": []}',
    )
    with pytest.raises(PermanentResolveError, match="schema 1"):
        resolver_for(registry).resolve(f"{registry.host}/old:1")


# --------------------------------------------------------------------------- errors


def test_unknown_tag_is_permanent_with_a_clear_message(registry: FakeRegistry) -> None:
    image = f"{registry.host}/team/app:nope"
    with pytest.raises(PermanentResolveError) as info:
        resolver_for(registry).resolve(image)
    assert str(info.value) == (
        f"could not resolve the entrypoint of {image}: manifest nope not found in {registry.host}"
    )
    assert info.value.image == image and isinstance(info.value, ResolveError)


@pytest.mark.parametrize(
    "status, kind",
    [
        (500, TemporaryResolveError),
        (503, TemporaryResolveError),
        (429, TemporaryResolveError),
        (400, PermanentResolveError),
        (403, PermanentResolveError),
    ],
)
def test_status_classification(
    registry: FakeRegistry, status: int, kind: type[ResolveError]
) -> None:
    registry.status = status
    with pytest.raises(kind, match=f"HTTP {status}|access denied"):
        resolver_for(registry).resolve(f"{registry.host}/app:1")


def test_connection_refused_and_timeout_are_temporary(registry: FakeRegistry) -> None:
    with pytest.raises(TemporaryResolveError, match="cannot connect to 127.0.0.1:1"):
        Resolver(insecure=["127.0.0.1:1"], timeout=1).resolve("127.0.0.1:1/app")
    registry.add_image("app", "1", ["/a"], [])
    registry.delay = 0.6
    started = time.monotonic()
    with pytest.raises(TemporaryError, match="did not answer within 0.2 s"):
        resolver_for(registry, timeout=0.2).resolve(f"{registry.host}/app:1")
    assert time.monotonic() - started < 0.6


# --------------------------------------------------------------------------- auth


def test_basic_auth(registry: FakeRegistry) -> None:
    registry.auth = "basic"
    registry.add_image("private/app", "1", ["/p"], ["x"])
    image = f"{registry.host}/private/app:1"
    with pytest.raises(PermanentResolveError, match="imagePullSecrets hold no credentials") as info:
        resolver_for(registry).resolve(image)
    good = RegistryCredential(registry.host, "robot", SECRET)
    wrong = RegistryCredential(registry.host, "robot", "wrong-" + SECRET)
    elsewhere = RegistryCredential("other.example", "robot", SECRET)
    with pytest.raises(PermanentResolveError, match="were refused") as info:
        resolver_for(registry).resolve(image, [wrong, elsewhere])
    assert SECRET not in str(info.value) and SECRET not in repr(info.value.args)
    assert info.value.__cause__ is None
    registry.log.clear()
    assert resolver_for(registry).resolve(image, [elsewhere, wrong, good]).cmd == ["x"]
    # anonymous first, then each matching credential; the blob request reuses what worked
    assert [a for _, a in registry.log] == [
        None,
        basic("robot", "wrong-" + SECRET),
        basic("robot", SECRET),
        basic("robot", SECRET),
    ]


def test_bearer_token_flow(registry: FakeRegistry) -> None:
    registry.auth = "bearer"
    registry.add_image("private/app", "1", ["/p"], [])
    registry.add_image("public/app", "1", ["/pub"], [])
    registry.public.add("public/app")
    # public repository: anonymous token suffices
    assert resolver_for(registry).resolve(f"{registry.host}/public/app:1").entrypoint == ["/pub"]
    assert registry.paths()[:3] == [
        "/v2/public/app/manifests/1",
        "/token",
        "/v2/public/app/manifests/1",
    ]
    assert registry.log[3][1] == "Bearer anon"  # the blob, with the same token
    registry.log.clear()
    with pytest.raises(PermanentResolveError, match="unauthorized"):
        resolver_for(registry).resolve(f"{registry.host}/private/app:1")
    registry.log.clear()
    cred = RegistryCredential(registry.host, "robot", SECRET)
    assert resolver_for(registry).resolve(f"{registry.host}/private/app:1", [cred]).entrypoint == [
        "/p"
    ]
    assert registry.log[:5] == [
        ("/v2/private/app/manifests/1", None),
        ("/token", None),
        ("/v2/private/app/manifests/1", "Bearer anon"),
        ("/token", basic("robot", SECRET)),
        ("/v2/private/app/manifests/1", "Bearer good"),
    ]
    assert registry.log[5][1] == "Bearer good"  # the blob


def test_bearer_realm_over_plain_http_needs_an_insecure_listing(registry: FakeRegistry) -> None:
    registry.auth = "bearer"
    registry.add_image("app", "1", ["/p"], [])
    # the registry host is insecure-listed under another spelling: the realm's host is not
    resolver = Resolver(insecure=[f"localhost:{registry.port}"], timeout=2)
    with pytest.raises(PermanentResolveError, match="plain http"):
        resolver.resolve(
            f"localhost:{registry.port}/app:1",
            [RegistryCredential(f"localhost:{registry.port}", "robot", SECRET)],
        )


# --------------------------------------------------------------------------- caching


def test_tag_cache_ttl_and_digest_cache(registry: FakeRegistry) -> None:
    digest = registry.add_image("app", "1", ["/a"], ["b"])
    clock = Clock()
    resolver = resolver_for(registry, clock=clock, tag_ttl=60)
    image = f"{registry.host}/app:1"
    first = resolver.resolve(image)
    assert len(registry.log) == 2
    first.cmd.append("mutated")  # callers get copies
    assert resolver.resolve(image) == ImageEntrypoint(entrypoint=["/a"], cmd=["b"])
    assert len(registry.log) == 2
    clock.now += 61  # tag expired: one manifest request, the digest's entrypoint is cached
    assert resolver.resolve(image).entrypoint == ["/a"]
    assert registry.paths()[2:] == ["/v2/app/manifests/1"]
    # the tag moves: seen after the TTL
    registry.add_image("app", "1", ["/new"], [])
    assert resolver.resolve(image).entrypoint == ["/a"]
    clock.now += 61
    assert resolver.resolve(image).entrypoint == ["/new"]
    # a digest reference is cached forever
    registry.log.clear()
    clock.now += 10**9
    assert resolver.resolve(f"{registry.host}/app@{digest}").entrypoint == ["/a"]
    assert registry.log == []


def test_digest_cache_is_bounded_and_per_repository(registry: FakeRegistry) -> None:
    digests = [registry.add_image("app", None, [f"/{i}"], []) for i in range(3)]
    resolver = resolver_for(registry, cache_size=2)
    for d in digests:
        resolver.resolve(f"{registry.host}/app@{d}")
    registry.log.clear()
    resolver.resolve(f"{registry.host}/app@{digests[2]}")
    assert registry.log == []
    resolver.resolve(f"{registry.host}/app@{digests[0]}")  # evicted: fetched again
    assert len(registry.log) == 2
    registry.log.clear()
    with pytest.raises(PermanentResolveError, match="not found"):
        resolver.resolve(f"{registry.host}/other@{digests[0]}")


def test_errors_are_not_cached(registry: FakeRegistry) -> None:
    resolver = resolver_for(registry)
    registry.status = 503
    with pytest.raises(TemporaryResolveError):
        resolver.resolve(f"{registry.host}/app:1")
    registry.status = None
    registry.add_image("app", "1", ["/a"], [])
    assert resolver.resolve(f"{registry.host}/app:1").entrypoint == ["/a"]


# --------------------------------------------------------------------------- TLS


def test_https_with_ca_file_and_plain_http_only_when_insecure(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path, "test registry CA")
    pair = ca.issue("registry", "127.0.0.1", hosts=("127.0.0.1",), server=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pair.cert, pair.key)
    fake = FakeRegistry()
    server = serve(fake, context)
    try:
        fake.add_image("app", "1", ["/tls"], [])
        image = f"{fake.host}/app:1"
        assert Resolver(ca_file=str(ca.pair.cert), timeout=2).resolve(image).entrypoint == ["/tls"]
        with pytest.raises(PermanentResolveError, match="TLS with"):
            Resolver(timeout=2).resolve(image)  # system roots do not know this CA
    finally:
        server.shutdown()
        server.server_close()


def test_https_is_the_default(registry: FakeRegistry) -> None:
    registry.add_image("app", "1", ["/a"], [])
    # the fake speaks plain http; without an insecure listing the resolver insists on TLS
    with pytest.raises(PermanentResolveError, match="TLS with"):
        Resolver(timeout=2).resolve(f"{registry.host}/app:1")
    assert Resolver(insecure=[registry.host], timeout=2).resolve(
        f"{registry.host}/app:1"
    ).entrypoint == ["/a"]


def test_a_registry_key_with_user_and_password_names_only_its_host() -> None:
    """An ``auths`` key may be a URL with userinfo: the registry kept, and the one an error
    names (a warning line), is its host alone."""
    auth = base64.b64encode(b"u:p").decode()
    doc = {"auths": {"https://bob:hunter2@R.io/team": {"auth": auth}}}
    [cred] = credentials_from_dockerconfigjson(json.dumps(doc).encode())
    assert (cred.registry, cred.username, cred.password) == ("r.io", "u", "p")
    bad = {"auths": {"https://bob:hunter2@r.io": {"auth": "not base64!"}}}
    with pytest.raises(PermanentError) as e:
        credentials_from_dockerconfigjson(json.dumps(bad).encode())
    assert "hunter2" not in str(e.value) and "'r.io'" in str(e.value)
