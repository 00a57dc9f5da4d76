"""cloudtaser's Kubernetes API client: a few REST calls over urllib3, JSON in and out, for the
node agent and the operator.

Why not the kubernetes client: importing it (its generated API classes and models) cost the
agent some 35 MiB of its 64 MiB budget, and the operator some 10 MiB of its 128 MiB (issue 17),
for the handful of calls they make. The agent lists pods, bindings and policies, reads a
namespace, reads/patches/creates its Lease and its Node's label, creates/patches Events; the
operator lists the four kinds it compiles and the agents' Leases, reads image pull Secrets by
name, merge-patches status subresources, creates Events, reads/creates/replaces its
MutatingWebhookConfiguration and keeps its leader Lease (get, create, replace). Objects stay
plain JSON dicts, as both used them anyway (the kubernetes client's models were serialised
straight back); parsing and validation stay with the engine's pydantic models
(engine/cloudtaser/engine/documents.py). (kopf, which watches for the operator, has its own
aiohttp client and its own login.)

Credentials as the kubernetes client finds them: in-cluster (KUBERNETES_SERVICE_HOST/PORT,
the service account's token, re-read for every request as the kubelet rotates it, and its
CA), else the current context of $KUBECONFIG (default ~/.kube/config): server, CA
(file or data), client certificate and key (file or data) or a bearer token (or token file).
TLS is always verified against that CA (or the system's, when a kubeconfig names none):
a kubeconfig asking for insecure-skip-tls-verify, or for credentials this client cannot use
(exec plugins, auth providers, basic auth), is refused rather than half-honoured.

Errors: an HTTP error status is an ``ApiError`` (``status`` and the server's ``body``, as the
kubernetes client's ApiException had them): temporary for 429 and 5xx, else permanent;
connection failures and timeouts are ``TemporaryError``; a TLS failure is permanent. No
error's message carries what was sent or answered (an answer may be a Secret).
"""

from __future__ import annotations

import base64
import http
import json
import os
import ssl
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import urllib3

from cloudtaser.errors import CloudtaserError, PermanentError, TemporaryError

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0  # a list of 10k bindings takes a few seconds on a busy API server
PAGE = 500  # items per list request (KubeApi.pages and .items)
STRATEGIC_MERGE = "application/strategic-merge-patch+json"  # what the kubernetes client sent
# for a dict body on built-in kinds; custom resources (and their status) take only this one:
MERGE_PATCH = "application/merge-patch+json"


class ApiError(CloudtaserError):
    """The API server answered with an error status (``status``; its Status object, ``body``,
    names the object but never holds a Secret's data: an error answers no object, and neither
    room writes Secrets). The message is the status line only."""

    def __init__(self, status: int, reason: str, body: str) -> None:
        super().__init__(f"HTTP {status} {reason}".rstrip())
        self.status = status
        self.reason = reason
        self.body = body


class TemporaryApiError(ApiError, TemporaryError):
    """429 or 5xx: the same request may succeed later."""


class PermanentApiError(ApiError, PermanentError):
    """Any other error status (404, 403, 409, 422, ...)."""


def _phrase(status: int) -> str:
    """The standard reason phrase of an HTTP status ('' for one without)."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def api_error(status: int, reason: str, body: str) -> ApiError:
    if status == 429 or status >= 500:
        return TemporaryApiError(status, reason, body)
    return PermanentApiError(status, reason, body)


class KubeApi:
    """JSON requests to one API server with one set of credentials; thread-safe (a urllib3
    pool manager, connections kept alive)."""

    def __init__(
        self,
        server: str,
        context: ssl.SSLContext,
        token: str | None = None,
        token_file: Path | None = None,
        server_hostname: str | None = None,
    ) -> None:
        if not server.startswith("https://"):
            raise PermanentError(f"the API server must be https://, not {server.split(':')[0]}")
        self.server = server.rstrip("/")
        self._token = token
        self._token_file = token_file
        self._pool = urllib3.PoolManager(
            num_pools=2,
            # Requests that may overlap: the agent's relist, Lease, label and Events; the
            # operator's election, writes, node-report poll and the webhook's pull-secret reads.
            maxsize=8,
            ssl_context=context,
            server_hostname=server_hostname,
            retries=False,  # callers retry: a relist, the report's and label's next round
        )

    # -- configuration -----------------------------------------------------------------------

    @classmethod
    def from_environment(cls) -> KubeApi:
        """In-cluster when the pod's service account and KUBERNETES_SERVICE_* are there, else
        $KUBECONFIG (read now: its current context)."""
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT")
        token = SERVICE_ACCOUNT / "token"
        ca = SERVICE_ACCOUNT / "ca.crt"
        if host and port and token.is_file() and ca.is_file():
            return cls.in_cluster(host, port, token, ca)
        return cls.from_kubeconfig(os.environ.get("KUBECONFIG") or "~/.kube/config")

    @classmethod
    def in_cluster(cls, host: str, port: str, token: Path, ca: Path) -> KubeApi:
        if not ca.read_text().strip():
            raise PermanentError(f"{ca} is empty")
        context = ssl.create_default_context(cafile=str(ca))
        host = f"[{host}]" if ":" in host else host  # IPv6
        return cls(f"https://{host}:{port}", context, token_file=token)

    @classmethod
    def from_kubeconfig(cls, path: str) -> KubeApi:
        """The current context of the kubeconfig ``path`` (files joined by ':' as kubectl
        merges them: the first to set a name or the current context wins)."""
        import yaml  # only here: in-cluster agents never parse YAML

        files = [Path(p).expanduser() for p in path.split(os.pathsep) if p]
        merged: dict[str, Any] = {"clusters": {}, "users": {}, "contexts": {}}
        bases: dict[tuple[str, str], Path] = {}  # relative paths are relative to their file
        for file in files:
            try:
                doc = yaml.safe_load(file.read_text()) or {}
            except (OSError, yaml.YAMLError) as e:
                raise PermanentError(f"kubeconfig {file}: {type(e).__name__}") from None
            merged["current-context"] = merged.get("current-context") or doc.get("current-context")
            for kind in ("clusters", "users", "contexts"):
                for item in doc.get(kind) or []:
                    if item.get("name") not in merged[kind]:
                        merged[kind][item.get("name")] = item.get(kind[:-1]) or {}
                        bases[(kind, item.get("name"))] = file.parent
        name = merged.get("current-context")
        if not name or name not in merged["contexts"]:
            raise PermanentError(f"kubeconfig {path}: no current context")
        ctx = merged["contexts"][name]
        cluster_name, user_name = ctx.get("cluster"), ctx.get("user")
        if cluster_name not in merged["clusters"]:
            raise PermanentError(f"kubeconfig {path}: context {name}: no cluster {cluster_name}")
        cluster = merged["clusters"][cluster_name]
        user = merged["users"].get(user_name, {})
        cluster_base = bases[("clusters", cluster_name)]
        user_base = bases.get(("users", user_name), cluster_base)
        if cluster.get("insecure-skip-tls-verify"):
            raise PermanentError(
                f"kubeconfig {path}: cluster {cluster_name}: insecure-skip-tls-verify is refused"
            )
        for unsupported in ("exec", "auth-provider", "username", "password"):
            if user.get(unsupported):
                raise PermanentError(
                    f"kubeconfig {path}: user {user_name}: {unsupported} is not supported "
                    "by cloudtaser's API client (use a token or a client certificate)"
                )
        context = ssl.create_default_context()
        ca = _file_or_data(cluster, "certificate-authority", cluster_base)
        if isinstance(ca, bytes):
            context = ssl.create_default_context(cadata=ca.decode())
        elif ca is not None:
            context = ssl.create_default_context(cafile=str(ca))
        cert = _file_or_data(user, "client-certificate", user_base)
        key = _file_or_data(user, "client-key", user_base)
        if (cert is None) != (key is None):
            raise PermanentError(f"kubeconfig {path}: user {user_name}: a certificate needs a key")
        if cert is not None and key is not None:
            _load_cert_chain(context, cert, key)
        token_file = user.get("tokenFile")
        return cls(
            str(cluster.get("server", "")),
            context,
            token=user.get("token") or None,
            token_file=(user_base / token_file) if token_file else None,
            server_hostname=cluster.get("tls-server-name") or None,
        )

    # -- requests ----------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float | None = None,
    ) -> Any:
        """``method`` on ``path`` (e.g. /api/v1/pods), the JSON answer parsed. ``timeout``
        (seconds) bounds connecting and waiting for the answer when a caller has a deadline
        of its own (the leader election's renewal); else CONNECT_TIMEOUT and READ_TIMEOUT."""
        headers = {"Accept": "application/json"}
        token = self._token
        if self._token_file is not None:  # rotated by the kubelet: read it every time
            try:
                token = self._token_file.read_text().strip()
            except OSError as e:
                raise TemporaryError(f"token file {self._token_file}: {e.strerror}") from None
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        url = self.server + path + (f"?{urlencode(query)}" if query else "")
        try:
            response = self._pool.request(
                method,
                url,
                body=data,
                headers=headers,
                timeout=urllib3.Timeout(
                    connect=min(CONNECT_TIMEOUT, timeout or CONNECT_TIMEOUT),
                    read=timeout or READ_TIMEOUT,
                ),
            )
        except urllib3.exceptions.SSLError as e:
            raise PermanentError(f"TLS with the API server failed: {_first_line(e)}") from None
        except urllib3.exceptions.HTTPError as e:
            # the exception's text may carry the URL (never a token: that is a header)
            raise TemporaryError(f"API server unreachable: {type(e).__name__}") from None
        if not 200 <= response.status < 300:
            # Any other answer is an error, a redirect too (never followed: it would take the
            # token elsewhere, and its body is not the answer). The reason phrase is the
            # standard one for the status, not the server's, which could echo what was sent.
            raise api_error(
                response.status, _phrase(response.status), response.data.decode(errors="replace")
            )
        try:
            return json.loads(response.data)
        except (ValueError, RecursionError):  # RecursionError: nested too deep
            raise TemporaryError(f"{method} {path}: the answer is not JSON") from None

    def get(
        self, path: str, query: Mapping[str, str] | None = None, timeout: float | None = None
    ) -> Any:
        return self.request("GET", path, query=query, timeout=timeout)

    def pages(
        self, path: str, query: Mapping[str, str] | None = None, page: int = PAGE
    ) -> Iterator[list[dict[str, Any]]]:
        """The items of a list, ``page`` at a time (the API server's chunking: one consistent
        snapshot), so that a caller never holds more than a page of the answer at once."""
        token = ""
        while True:
            chunk = self.get(
                path,
                {**(query or {}), "limit": str(page), **({"continue": token} if token else {})},
            )
            yield chunk.get("items") or []
            token = (chunk.get("metadata") or {}).get("continue") or ""
            if not token:
                return

    def items(
        self, path: str, query: Mapping[str, str] | None = None, page: int = PAGE
    ) -> Iterator[dict[str, Any]]:
        """The items of a list one by one, fetched ``page`` at a time (``pages``), so that a
        caller keeping few of them never holds them all."""
        for chunk in self.pages(path, query, page):
            yield from chunk

    def post(self, path: str, body: Any, timeout: float | None = None) -> Any:
        return self.request("POST", path, body, timeout=timeout)

    def put(self, path: str, body: Any, timeout: float | None = None) -> Any:
        """Replace the object at ``path`` with ``body``; its metadata.resourceVersion, when
        given, makes the write fail with 409 if the object changed since it was read."""
        return self.request("PUT", path, body, timeout=timeout)

    def patch(self, path: str, body: Any, content_type: str = STRATEGIC_MERGE) -> Any:
        return self.request("PATCH", path, body, content_type=content_type)


def path(*parts: str) -> str:
    """An API path from its segments, each quoted (names come from the cluster). An empty,
    ``.`` or ``..`` segment is refused: quoting leaves them as they are, and the URL's dot
    segments would then name another object (a pull Secret named ``.`` would be the list of
    the namespace's Secrets)."""
    for p in parts:
        if p in ("", ".", ".."):
            raise PermanentError(f"not an API object name: {p!r}")
    return "/" + "/".join(quote(p, safe="") for p in parts)


def _file_or_data(section: Mapping[str, Any], key: str, base: Path) -> Path | bytes | None:
    """``key``-data (base64, decoded) or ``key`` (a file, relative to ``base``)."""
    data = section.get(f"{key}-data")
    if data:
        try:
            return base64.b64decode(data, validate=True)
        except ValueError:
            raise PermanentError(f"kubeconfig: {key}-data is not base64") from None
    file = section.get(key)
    return (base / file) if file else None


def _load_cert_chain(context: ssl.SSLContext, cert: Path | bytes, key: Path | bytes) -> None:
    """The client certificate and key, from files or from data (through a private temporary
    directory, removed at once: ssl reads them only from files)."""
    if isinstance(cert, Path) and isinstance(key, Path):
        context.load_cert_chain(str(cert), str(key))
        return
    with tempfile.TemporaryDirectory(prefix="cloudtaser-kubeapi-") as tmp:  # mode 0700
        files = []
        for name, value in (("cert", cert), ("key", key)):
            if isinstance(value, Path):
                files.append(str(value))
                continue
            file = Path(tmp) / name
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(value)
            files.append(str(file))
        context.load_cert_chain(files[0], files[1])


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0][:200] if str(error) else type(error).__name__
