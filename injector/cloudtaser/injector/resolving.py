"""An image's ENTRYPOINT and CMD, read from its config in the registry (OCI distribution API).

Why: Kubernetes ignores the image's ENTRYPOINT *and* CMD once a container sets ``command``.
The injector must set ``command`` (wrapper first), so for a container without one it has to
know what the image would have run: ``command = wrapper + ENTRYPOINT`` and, when the pod has
no ``args``, ``args = CMD`` (see engine/cloudtaser/engine/patches.py). If that cannot be known the webhook
refuses the pod rather than start it without its secrets or with the wrong program.

How: parse the reference (default registry docker.io -> registry-1.docker.io with
``library/``, default tag ``latest``, ``@sha256:`` digests), ``GET /v2/<name>/manifests/<ref>``
accepting OCI and Docker v2 manifests and indexes/lists (an index picks the configured
platform, linux/amd64 by default), then ``GET /v2/<name>/blobs/<config digest>``. Every
manifest fetched by digest and every blob is checked against its digest, so a registry (or
anything between) cannot hand us a different entrypoint for a pinned image.

Auth: each request goes out anonymously first; on 401 the ``WWW-Authenticate`` challenge is
answered - ``Bearer realm=,service=,scope=`` with a token from the realm (anonymous, then with
each credential for that registry), or ``Basic`` with each credential. Credentials come from
the pod's imagePullSecrets (``credentials_from_dockerconfigjson``), live only as long as the
caller holds them, and never appear in a cache, a log line, a repr or an exception. Tokens
live for one ``resolve`` call.

Caching (in memory, per Resolver, thread-safe):
- ``(registry, repository, manifest digest) -> ImageEntrypoint``: bounded LRU (1024 entries),
  no expiry - a digest names immutable content, so an ``@sha256:`` reference is served from
  the cache forever (until evicted);
- ``(registry, repository, tag) -> manifest digest``: bounded LRU with a short TTL (60 s),
  so a moved tag is seen within a minute while a burst of admissions (a Deployment scaling
  out) costs the registry one manifest request per minute at most, and nothing else.
The repository is part of the key so that a cached answer for one repository is never served
for another. A cache hit does not re-check authorization: a pod without pull secrets for a
private image that another pod resolved gets its ENTRYPOINT/CMD (not its content); kubelet
still refuses to pull the image.

TLS: https always, verified against the system roots or ``ca_file``; plain http only for
hosts listed in ``insecure`` (e.g. ``127.0.0.1:5000`` in tests). Every request has a
timeout, and bodies are size-limited.

``resolve`` blocks (it uses ``requests``); call it from a thread, not the event loop.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import urlencode, urlsplit

import requests

from cloudtaser.engine.patches import ImageEntrypoint
from cloudtaser.errors import CloudtaserError, PermanentError, TemporaryError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
_DOCKER_HUB_ALIASES = {
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
}

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST))

MAX_MANIFEST = 4 * 1024 * 1024  # what registries themselves accept
MAX_CONFIG = 8 * 1024 * 1024
MAX_TOKEN = 1024 * 1024
MAX_IMAGE_IN_MESSAGE = 300

# The reference grammar of github.com/distribution/reference, reduced to what we need.
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")
_TAG = re.compile(r"[\w][\w.-]{0,127}\Z")
_DIGEST = re.compile(r"(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})\Z")
_HOST = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?\Z"
)


# --------------------------------------------------------------------------- errors


class ResolveError(CloudtaserError):
    """The entrypoint of ``image`` could not be resolved; ``reason`` says why.

    Raised as ``PermanentResolveError`` (unknown image, denied, malformed, digest mismatch)
    or ``TemporaryResolveError`` (registry unreachable, timeout, 5xx, 429). The message never
    carries a credential or token.
    """

    def __init__(self, image: str, reason: str) -> None:
        self.image = (
            image if len(image) <= MAX_IMAGE_IN_MESSAGE else image[:MAX_IMAGE_IN_MESSAGE] + "..."
        )
        self.reason = reason
        super().__init__(f"could not resolve the entrypoint of {self.image}: {reason}")


class PermanentResolveError(ResolveError, PermanentError):
    """Retrying will not help: the image, the credentials or the registry's answer is wrong."""


class TemporaryResolveError(ResolveError, TemporaryError):
    """The registry could not be reached or is failing; the same call may succeed later."""


# --------------------------------------------------------------------------- references


@dataclass(frozen=True)
class ImageReference:
    """A parsed image reference. ``registry`` is the name users write (``docker.io``)."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def api_host(self) -> str:
        """Where the distribution API lives (Docker Hub's is not ``docker.io``)."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}" + (
            f"@{self.digest}" if self.digest else f":{self.tag}"
        )


def parse_reference(image: str) -> ImageReference:
    """Parse ``[host[:port]/]path[:tag][@digest]`` as container runtimes do.

    The first component is a registry host when it contains ``.`` or ``:`` or is
    ``localhost``; otherwise the image is on Docker Hub. With both a tag and a digest the
    digest decides (the tag is kept for the record only). Raises PermanentResolveError.
    """

    def bad(why: str) -> PermanentResolveError:
        return PermanentResolveError(image, f"invalid image reference ({why})")

    if not image or image != image.strip() or len(image) > 4096:
        raise bad("empty, too long or surrounded by whitespace")
    rest, digest = image, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST.match(digest):
            raise bad("digest must be sha256:<64 hex> or sha512:<128 hex>")
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.match(tag):
            raise bad(f"tag {tag[:130]!r}")
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        if not _HOST.match(first):
            raise bad(f"registry host {first[:100]!r}")
        registry, path = first.lower(), remainder
        if registry in _DOCKER_HUB_ALIASES:
            registry = DOCKER_HUB
    else:
        registry, path = DOCKER_HUB, rest
    if registry == DOCKER_HUB and "/" not in path:
        path = "library/" + path
    components = path.split("/")
    if not path or not all(_COMPONENT.match(c) for c in components):
        raise bad("repository must be lower-case components separated by '/'")
    if len(path) > 255:
        raise bad("repository longer than 255 characters")
    if tag is None and digest is None:
        tag = "latest"
    return ImageReference(registry=registry, repository=path, tag=tag, digest=digest)


# --------------------------------------------------------------------------- credentials


@dataclass(frozen=True)
class RegistryCredential:
    """Username and password for one registry (optionally a repository prefix on it).

    ``repr`` shows the registry only, so a credential in a log line or traceback leaks
    nothing.
    """

    registry: str
    username: str = field(repr=False)
    password: str = field(repr=False)
    path: str = ""  # repository prefix from keys like "registry.example/team"

    def matches(self, ref: ImageReference) -> bool:
        if self.registry != ref.registry:
            return False
        return (
            not self.path
            or ref.repository == self.path
            or ref.repository.startswith(self.path + "/")
        )


def _registry_key(key: str) -> tuple[str, str]:
    """A dockerconfig ``auths`` key -> (normalized host, repository prefix)."""
    key = key.strip()
    if "://" in key:
        parts = urlsplit(key)
        host, path = parts.netloc, parts.path
    else:
        host, _, path = key.partition("/")
    # Never a user:password@ part: the host is logged and kept (RegistryCredential.registry).
    host = host.rpartition("@")[2].lower()
    path = path.strip("/")
    if host in _DOCKER_HUB_ALIASES:
        return DOCKER_HUB, ""  # "https://index.docker.io/v1/" is a version, not a path
    return host, path


def credentials_from_dockerconfigjson(data: bytes) -> list[RegistryCredential]:
    """The credentials in a ``kubernetes.io/dockerconfigjson`` Secret's ``.dockerconfigjson``
    (also accepts the legacy ``.dockercfg`` shape without ``auths``).

    Entries without a username/password (e.g. only an ``identitytoken``) are skipped. Raises
    PermanentError on malformed input, without quoting it.
    """
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep
        raise PermanentError("image pull secret: .dockerconfigjson is not JSON") from None
    if not isinstance(doc, dict):
        raise PermanentError("image pull secret: .dockerconfigjson is not a JSON object")
    legacy = "auths" not in doc  # .dockercfg: the hosts at the top level
    auths = doc if legacy else doc["auths"]
    if not isinstance(auths, dict):
        raise PermanentError("image pull secret: .dockerconfigjson 'auths' is not an object")
    found: list[RegistryCredential] = []
    for key, entry in auths.items():
        if not isinstance(entry, dict):
            if legacy:
                continue  # e.g. "credsStore": "desktop" in a copied ~/.docker/config.json
            raise PermanentError("image pull secret: an 'auths' entry is not an object")
        username, password = entry.get("username"), entry.get("password")
        encoded = entry.get("auth")
        if isinstance(encoded, str) and encoded:
            try:
                decoded = base64.b64decode(encoded, validate=True).decode()
            except (binascii.Error, ValueError):
                raise PermanentError(
                    f"image pull secret: 'auth' of registry {_registry_key(key)[0][:100]!r} is not base64 of user:password"
                ) from None
            if ":" not in decoded:
                raise PermanentError(
                    f"image pull secret: 'auth' of registry {_registry_key(key)[0][:100]!r} is not base64 of user:password"
                )
            username, password = decoded.split(":", 1)
        if not isinstance(username, str) or not isinstance(password, str) or not username:
            continue
        host, path = _registry_key(key)
        if host:
            found.append(RegistryCredential(host, username, password, path))
    return found


# --------------------------------------------------------------------------- caches

K = TypeVar("K")
V = TypeVar("V")


class _LRU(Generic[K, V]):
    """A bounded LRU map with optional per-entry expiry; thread-safe."""

    def __init__(self, size: int, ttl: float | None, clock: Callable[[], float]) -> None:
        self._size, self._ttl, self._clock = size, ttl, clock
        self._data: OrderedDict[K, tuple[V, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            item = self._data.get(key)
            if item is None:
                return None
            value, expires = item
            if self._ttl is not None and self._clock() >= expires:
                del self._data[key]
                return None
            self._data.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        expires = self._clock() + self._ttl if self._ttl is not None else 0.0
        with self._lock:
            self._data[key] = (value, expires)
            self._data.move_to_end(key)
            while len(self._data) > self._size:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


# --------------------------------------------------------------------------- fetching


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="x",service="y"`` -> ("bearer", {"realm": "x", "service": "y"})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
        for m in re.finditer(r'([A-Za-z][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))', rest)
    }
    return scheme.lower(), params


def _digest_of(body: bytes, algorithm: str) -> str:
    return f"{algorithm}:{hashlib.new(algorithm, body).hexdigest()}"


class _Fetch:
    """One ``resolve`` call's HTTP conversation with one registry: session and auth header."""

    def __init__(
        self,
        resolver: Resolver,
        image: str,
        ref: ImageReference,
        credentials: list[RegistryCredential],
    ) -> None:
        self.r, self.image, self.ref = resolver, image, ref
        self.credentials = [c for c in credentials if c.matches(ref)]
        self.credentials.sort(key=lambda c: -len(c.path))  # most specific first
        self.session = requests.Session()
        self.session.trust_env = False  # no ~/.netrc credentials, no env proxies by surprise
        self.authorization: str | None = None
        self.base = f"{resolver.scheme(ref.api_host)}://{ref.api_host}/v2/{ref.repository}"

    def close(self) -> None:
        self.session.close()

    def permanent(self, reason: str) -> PermanentResolveError:
        return PermanentResolveError(self.image, reason)

    def temporary(self, reason: str) -> TemporaryResolveError:
        return TemporaryResolveError(self.image, reason)

    def _send(
        self, url: str, headers: dict[str, str], limit: int, auth: str | None
    ) -> tuple[requests.Response, bytes]:
        if auth is not None:
            headers = {**headers, "Authorization": auth}
        host = urlsplit(url).netloc
        try:
            with self.session.get(
                url, headers=headers, timeout=self.r.timeout, stream=True, verify=self.r.verify
            ) as response:
                body = b""
                if response.status_code == 200:
                    declared = response.headers.get("Content-Length", "")
                    if declared.isdigit() and int(declared) > limit:
                        raise self.permanent(f"{host} sent {declared} bytes, more than {limit}")
                    chunks: list[bytes] = []
                    size = 0
                    for chunk in response.iter_content(65536):
                        size += len(chunk)
                        if size > limit:
                            raise self.permanent(f"{host} sent more than {limit} bytes")
                        chunks.append(chunk)
                    body = b"".join(chunks)
                return response, body
        except requests.exceptions.SSLError:
            # from None: the request object in a requests exception carries our headers
            raise self.permanent(
                f"TLS with {host} failed (certificate not trusted or "
                "handshake refused; is ca_file right?)"
            ) from None
        except requests.exceptions.Timeout:
            raise self.temporary(f"{host} did not answer within {self.r.timeout} s") from None
        except requests.exceptions.ConnectionError:
            raise self.temporary(f"cannot connect to {host}") from None
        except requests.exceptions.RequestException as e:
            raise self.temporary(f"request to {host} failed ({type(e).__name__})") from None

    def _token(self, params: dict[str, str], credential: RegistryCredential | None) -> str | None:
        """A bearer token from the challenge's realm; None when the realm refuses us."""
        realm = params.get("realm", "")
        parts = urlsplit(realm)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise self.permanent(f"{self.ref.api_host} asked for a token from an invalid realm")
        if parts.scheme == "http" and parts.netloc not in self.r.insecure:
            raise self.permanent(
                f"{self.ref.api_host} asked for a token over plain http "
                f"from {parts.netloc}, which is not listed as insecure"
            )
        query = {k: params[k] for k in ("service", "scope") if params.get(k)}
        query.setdefault("scope", f"repository:{self.ref.repository}:pull")
        url = realm + ("&" if parts.query else "?") + urlencode(query)
        headers = {"Accept": "application/json"}
        auth = None
        if credential is not None:
            auth = (
                "Basic "
                + base64.b64encode(f"{credential.username}:{credential.password}".encode()).decode()
            )
        response, body = self._send(url, headers, MAX_TOKEN, auth)
        if response.status_code in (401, 403):
            return None
        self._check_status(response, f"token from {parts.netloc}")
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, UnicodeDecodeError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise self.permanent(f"the token service {parts.netloc} sent no token")
        return f"Bearer {token}"

    def _check_status(self, response: requests.Response, what: str) -> None:
        status = response.status_code
        if status == 200:
            return
        if status == 429 or status >= 500:
            raise self.temporary(f"{what}: {self.ref.api_host} answered HTTP {status}")
        raise self.permanent(f"{what}: {self.ref.api_host} answered HTTP {status}")

    def get(self, path: str, accept: str, limit: int, what: str) -> tuple[requests.Response, bytes]:
        """GET ``/v2/<name>/<path>``, answering an auth challenge once per conversation."""
        url = f"{self.base}/{path}"
        headers = {"Accept": accept}
        response, body = self._send(url, headers, limit, self.authorization)
        if response.status_code == 401:
            scheme, params = _challenge(response.headers.get("WWW-Authenticate", ""))
            response, body = self._authorize(url, headers, limit, scheme, params, what)
        if response.status_code == 404:
            raise self.permanent(f"{what} not found in {self.ref.api_host}")
        if response.status_code == 403:
            raise self.permanent(f"{what}: access denied by {self.ref.api_host}")
        self._check_status(response, what)
        return response, body

    def _authorize(
        self,
        url: str,
        headers: dict[str, str],
        limit: int,
        scheme: str,
        params: dict[str, str],
        what: str,
    ) -> tuple[requests.Response, bytes]:
        candidates: list[RegistryCredential | None] = [None, *self.credentials]
        tried = False
        for credential in candidates:
            if scheme == "bearer":
                auth = self._token(params, credential)
            elif scheme == "basic" and credential is not None:
                auth = (
                    "Basic "
                    + base64.b64encode(
                        f"{credential.username}:{credential.password}".encode()
                    ).decode()
                )
            else:
                continue
            if auth is None:
                continue
            tried = True
            response, body = self._send(url, headers, limit, auth)
            if response.status_code not in (401, 403):
                self.authorization = auth
                return response, body
        if scheme not in ("bearer", "basic"):
            raise self.permanent(
                f"{what}: {self.ref.api_host} requires an unsupported "
                f"authentication scheme {scheme[:20]!r}"
            )
        if not self.credentials:
            raise self.permanent(
                f"{what}: unauthorized, and the pod's imagePullSecrets hold no "
                f"credentials for {self.ref.registry}"
            )
        detail = "were refused" if tried else "could not be used"
        raise self.permanent(
            f"{what}: unauthorized; the credentials for {self.ref.registry} "
            f"from the pod's imagePullSecrets {detail}"
        )


# --------------------------------------------------------------------------- resolver


class Resolver:
    """Resolves image references to their ENTRYPOINT/CMD, with the caches described above."""

    def __init__(
        self,
        *,
        ca_file: str | None = None,
        insecure: Iterable[str] = (),
        timeout: float = 5.0,
        platform: tuple[str, str] = ("linux", "amd64"),
        cache_size: int = 1024,
        tag_ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.verify: str | bool = ca_file if ca_file else True
        self.insecure = frozenset(h.lower() for h in insecure)
        self.timeout = timeout
        self.platform = platform
        self._entrypoints: _LRU[tuple[str, str, str], ImageEntrypoint] = _LRU(
            cache_size, None, clock
        )
        self._tags: _LRU[tuple[str, str, str], str] = _LRU(cache_size, tag_ttl, clock)

    def scheme(self, host: str) -> str:
        return "http" if host.lower() in self.insecure else "https"

    def clear(self) -> None:
        self._entrypoints.clear()
        self._tags.clear()

    def cached(self, image: str) -> ImageEntrypoint | None:
        """The cached answer for ``image``, or None; never any I/O (safe on an event loop).
        Raises PermanentResolveError for a reference that cannot be parsed."""
        ref = parse_reference(image)
        digest = ref.digest or self._tags.get((ref.registry, ref.repository, ref.reference))
        if digest is None:
            return None
        found = self._entrypoints.get((ref.registry, ref.repository, digest))
        return None if found is None else found.model_copy(deep=True)

    def resolve(
        self, image: str, credentials: list[RegistryCredential] | None = None
    ) -> ImageEntrypoint:
        """ENTRYPOINT and CMD of ``image`` (cached; see the module docstring).

        Raises PermanentResolveError or TemporaryResolveError.
        """
        ref = parse_reference(image)
        digest = ref.digest
        if digest is None:
            digest = self._tags.get((ref.registry, ref.repository, ref.reference))
        if digest is not None:
            cached = self._entrypoints.get((ref.registry, ref.repository, digest))
            if cached is not None:
                return cached.model_copy(deep=True)
        fetch = _Fetch(self, image, ref, credentials or [])
        try:
            result, digest = self._fetch(fetch)
        finally:
            fetch.close()
        if ref.digest is None:
            self._tags.put((ref.registry, ref.repository, ref.reference), digest)
        self._entrypoints.put((ref.registry, ref.repository, digest), result)
        return result.model_copy(deep=True)

    def _manifest(
        self, fetch: _Fetch, reference: str, expected: str | None
    ) -> tuple[dict[str, Any], str]:
        what = f"manifest {reference}" if expected is None else f"manifest {reference[:19]}..."
        response, body = fetch.get(f"manifests/{reference}", ACCEPT, MAX_MANIFEST, what)
        if expected is not None:
            algorithm = expected.split(":", 1)[0]
            digest = _digest_of(body, algorithm)
            if digest != expected:
                raise fetch.permanent(
                    f"the manifest's content does not match its digest {expected} (got {digest})"
                )
        else:
            digest = _digest_of(body, "sha256")
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise fetch.permanent(f"{what} is not JSON") from None
        if not isinstance(doc, dict):
            raise fetch.permanent(f"{what} is not a JSON object")
        if doc.get("schemaVersion") == 1:
            raise fetch.permanent(f"{what} is a Docker schema 1 manifest, which is not supported")
        if "mediaType" not in doc:
            doc["mediaType"] = response.headers.get("Content-Type", "").split(";")[0].strip()
        return doc, digest

    def _pick(self, fetch: _Fetch, index: dict[str, Any]) -> str:
        os_, arch = self.platform
        manifests = index.get("manifests")
        if not isinstance(manifests, list):
            raise fetch.permanent("the image index has no 'manifests' list")
        seen: list[str] = []
        for entry in manifests:
            if not isinstance(entry, dict):
                continue
            platform = entry.get("platform") or {}
            if not isinstance(platform, dict):
                continue
            seen.append(f"{platform.get('os')}/{platform.get('architecture')}")
            digest = entry.get("digest")
            if platform.get("os") == os_ and platform.get("architecture") == arch:
                if not isinstance(digest, str) or not _DIGEST.match(digest):
                    raise fetch.permanent(f"the image index has an invalid digest for {os_}/{arch}")
                return digest
        have = ", ".join(sorted(set(seen))[:10]) or "none"
        raise fetch.permanent(f"the image index has no {os_}/{arch} image (has: {have})")

    def _fetch(self, fetch: _Fetch) -> tuple[ImageEntrypoint, str]:
        ref = fetch.ref
        doc, top_digest = self._manifest(fetch, ref.reference, ref.digest)
        cached = self._entrypoints.get((ref.registry, ref.repository, top_digest))
        if cached is not None:  # an expired tag that still names the same manifest
            return cached, top_digest
        for _ in range(3):  # index -> manifest, tolerating one level of nesting
            if doc.get("mediaType") in (OCI_INDEX, DOCKER_LIST) or (
                "manifests" in doc and "config" not in doc
            ):
                child = self._pick(fetch, doc)
                # an index entry pins its manifest: a cached entrypoint under it is reusable
                cached = self._entrypoints.get((ref.registry, ref.repository, child))
                if cached is not None:
                    return cached, top_digest
                doc, _ = self._manifest(fetch, child, child)
                continue
            break
        else:
            raise fetch.permanent("image indexes nested too deep")
        config = doc.get("config")
        if not isinstance(config, dict) or not isinstance(config.get("digest"), str):
            raise fetch.permanent(
                f"the manifest ({doc.get('mediaType') or 'unknown type'}) has no config descriptor"
            )
        config_digest: str = config["digest"]
        if not _DIGEST.match(config_digest):
            raise fetch.permanent("the manifest's config digest is invalid")
        _, blob = fetch.get(
            f"blobs/{config_digest}",
            "application/json, */*",
            MAX_CONFIG,
            f"config blob {config_digest[:19]}...",
        )
        actual = _digest_of(blob, config_digest.split(":", 1)[0])
        if actual != config_digest:
            raise fetch.permanent(
                f"the config blob does not match its digest {config_digest} (got {actual})"
            )
        return _entrypoint(fetch, blob), top_digest


def _entrypoint(fetch: _Fetch, blob: bytes) -> ImageEntrypoint:
    try:
        doc = json.loads(blob)
    except (ValueError, UnicodeDecodeError):
        raise fetch.permanent("the image config is not JSON") from None
    config = doc.get("config") if isinstance(doc, dict) else None
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise fetch.permanent("the image config's 'config' is not an object")
    values: list[list[str]] = []
    for key in ("Entrypoint", "Cmd"):
        value = config.get(key)
        if value is None:
            value = []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise fetch.permanent(f"the image config's {key} is not a list of strings")
        values.append(value)
    return ImageEntrypoint(entrypoint=values[0], cmd=values[1])
