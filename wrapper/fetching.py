"""Log in to OpenBao/Vault with the pod's token over mutual TLS and fetch every secret.

All or nothing: the first permanent failure (TLS, 403, missing path or key) aborts the whole
fetch with one line naming the binding, the path and the reason; transient failures
(connection refused, timeouts, 5xx, sealed, and the one login 403 that names a Kubernetes
API outage: see _login_forbidden) are retried with exponential backoff and jitter until the
deadline. The deadline bounds the whole fetch, not only the retries: a server that
answers, but too slowly (a byte every few seconds never trips a socket timeout), is given up
on when it passes (SIGALRM on the main thread). Messages never carry a value: hvac's
exceptions can include response bodies, so only their class and HTTP status are used (a
login 403's error text is matched against known phrases, never echoed).
"""

from __future__ import annotations

import contextlib
import signal
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import requests
import tenacity

from cloudtaser.engine.plans import WrapperConfig, WrapperSource
from cloudtaser.errors import CloudtaserError, PermanentError, TemporaryError
from cloudtaser.wrapper.storing import wipe

REQUEST_TIMEOUT = 5


class FetchError(PermanentError):
    """A secret could not be fetched; the message is the one line the user sees."""


class TransientFetchError(TemporaryError):
    """Worth another try (until the deadline)."""


class _DeadlineReached(TimeoutError):  # noqa: N818 - internal signal, never leaves fetch_all
    """Raised by the SIGALRM handler when the total deadline passes mid-request or mid-wait.
    A TimeoutError (an OSError) so that the socket and TLS layers clean up after it as after
    any socket timeout (the ssl module closes a socket whose handshake raised an OSError);
    they may translate it on the way up, so fetch_all goes by ``Fetched.expired``."""


ValueKey = tuple[str, str, str, str]  # (binding, mount, path, key)


@dataclass
class Fetched:
    """Fetched values by (binding, mount, path, key); bytearrays so they can be wiped."""

    values: dict[ValueKey, bytearray] = field(default_factory=dict)
    attempts: int = 0
    in_flight: str | None = None  # the request under way ("binding ...: path"), for messages
    last_error: str | None = None  # the last transient failure's line
    expired: bool = False  # the total deadline passed
    expired_in: str | None = None  # ... while this request was under way


def _readable(path: str | None, what: str, source: WrapperSource) -> str | None:
    if path is None:
        return None
    if not Path(path).is_file():
        raise FetchError(f"{what} {path} of binding {source.binding} is not a readable file")
    return path


_TRANSPORT_MARKERS = ("dial tcp", "connection refused", "i/o timeout", "no such host",
                      "connection reset", "tls handshake timeout", "context deadline exceeded",
                      "(code 500", "(code 502", "(code 503", "(code 504")


def _login_forbidden(error: hvac.exceptions.Forbidden, where: str) -> CloudtaserError:
    """A 403 from the Kubernetes auth login, explained by fixed phrases (the server's text is
    matched, never echoed: it names hosts and URLs).

    What OpenBao (2.4, builtin/credential/kubernetes/path_login.go) answers, reproduced
    against a dev server whose kubernetes_host is dead:
    - the TokenReview fails for any reason (bad or revoked token, *or the Kubernetes API
      unreachable*): a bare "permission denied" (the cause is only in OpenBao's debug log),
      so an API server outage cannot be told from a refused token: permanent, with a hint;
    - a role with a namespace selector whose namespace lookup could not reach the API:
      'namespace not authorized err=Get "https://…/api/v1/namespaces/NS": dial tcp …:
      connect: connection refused' — an outage, told apart: transient (retried);
    - an expired token: "invalid expiration time (exp) claim: token is expired".
    """
    text = " ".join(str(e) for e in (error.errors or [])).lower()
    if "namespace not authorized err=" in text and any(m in text for m in _TRANSPORT_MARKERS):
        return TransientFetchError(f"{where}: permission denied because OpenBao could not reach "
                                   "the Kubernetes API to check the role's namespace selector")
    if "namespace not authorized err=" in text:
        return FetchError(f"{where}: permission denied (OpenBao could not check the role's "
                          "namespace selector; can its token reviewer read namespaces?)")
    if "expired" in text:
        return FetchError(f"{where}: permission denied (the service-account token has expired)")
    if "not authorized" in text:
        return FetchError(f"{where}: permission denied (the service account or its namespace "
                          "is not bound to the role)")
    return FetchError(f"{where}: permission denied (the token was refused; OpenBao answers the "
                      "same when it cannot reach the Kubernetes API to review the token)")


def _classify(error: Exception, where: str, login: bool = False) -> CloudtaserError:
    """Translate a library error into ours, with a message that carries no payload."""
    if isinstance(error, requests.exceptions.SSLError):
        reason = error.args[0] if error.args else error
        text = str(getattr(reason, "reason", reason))
        if isinstance(reason, ssl.SSLError) or "certificate" in text.lower() or "SSL" in text:
            return FetchError(f"{where}: TLS failure ({_short(text)})")
        return FetchError(f"{where}: TLS failure")
    if isinstance(error, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        return TransientFetchError(f"{where}: unreachable ({type(error).__name__})")
    if isinstance(error, hvac.exceptions.Forbidden):
        if login:
            return _login_forbidden(error, where)
        return FetchError(f"{where}: permission denied")
    if isinstance(error, hvac.exceptions.InvalidPath):
        return FetchError(f"{where}: no secret at this path")
    if isinstance(error, (hvac.exceptions.InternalServerError, hvac.exceptions.VaultDown,
                          hvac.exceptions.BadGateway, hvac.exceptions.RateLimitExceeded)):
        return TransientFetchError(f"{where}: server unavailable ({type(error).__name__})")
    if isinstance(error, hvac.exceptions.InvalidRequest):
        return FetchError(f"{where}: request refused (HTTP 400; check role and auth mount)")
    if isinstance(error, hvac.exceptions.VaultError):
        return FetchError(f"{where}: {type(error).__name__}")
    # Anything else: its class only (messages of e.g. requests.InvalidHeader carry headers).
    return FetchError(f"{where}: {type(error).__name__}")


def _short(text: str) -> str:
    """The interesting tail of an OpenSSL message, without hosts' payloads."""
    for marker in ("CERTIFICATE_VERIFY_FAILED", "certificate verify failed", "TLSV13_ALERT_CERTIFICATE_REQUIRED",
                   "alert certificate required", "WRONG_VERSION_NUMBER", "hostname mismatch",
                   "alert unknown ca", "TLSV1_ALERT_UNKNOWN_CA"):
        if marker.lower() in text.lower():
            return marker.lower().replace("_", " ")
    return text[:120]


def _client(source: WrapperSource) -> hvac.Client:
    ca = _readable(source.ca_file, "CA file", source)
    cert = _readable(source.client_cert_file, "client certificate", source)
    key = _readable(source.client_key_file, "client key", source)
    # hvac takes verify/cert from a session it is given, not from its own arguments.
    session = requests.Session()
    session.verify = ca if ca else True  # the system trust store otherwise; never False
    session.cert = (cert, key) if cert and key else None
    if source.server_name:
        # Verify the certificate against server_name while connecting to the address.
        session.mount("https://", _ServerNameAdapter(source.server_name))
    return hvac.Client(url=source.address, timeout=REQUEST_TIMEOUT, session=session)


class _ServerNameAdapter(requests.adapters.HTTPAdapter):
    def __init__(self, server_name: str) -> None:
        self._server_name = server_name
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["server_hostname"] = self._server_name
        kwargs["assert_hostname"] = self._server_name
        super().init_poolmanager(*args, **kwargs)


def _fetch_source(source: WrapperSource, jwt: str, out: Fetched) -> None:
    where = f"binding {source.binding}: login to {source.address} (role {source.role})"
    client = _client(source)
    out.in_flight = where
    try:
        client.auth.kubernetes.login(source.role, jwt, mount_point=source.auth_mount)
    except _DeadlineReached:
        raise
    except Exception as e:  # translated below; nothing else escapes
        raise _classify(e, where, login=True) from None
    for secret in source.secrets:
        where = f"binding {source.binding}: {secret.mount}/{secret.path}"
        out.in_flight = where
        try:
            response = client.secrets.kv.v2.read_secret_version(
                secret.path, mount_point=secret.mount, raise_on_deleted_version=True
            )
        except _DeadlineReached:
            raise
        except Exception as e:
            raise _classify(e, where) from None
        data = response.get("data", {}).get("data") or {}
        for key in secret.keys:
            if key.key not in data:
                raise FetchError(f"{where}: key '{key.key}' is missing from the secret")
            value = data[key.key]
            if not isinstance(value, str):
                raise FetchError(f"{where}: key '{key.key}' is not a string")
            out.values[(source.binding, secret.mount, secret.path, key.key)] = bytearray(
                value.encode()
            )
        # The parsed response (Python str objects) cannot be wiped; drop our references so
        # nothing outlives this call, and exec discards the heap entirely.
        del data, response


@contextlib.contextmanager
def _hard_deadline(seconds: float, out: Fetched) -> Iterator[None]:
    """Raise _DeadlineReached in the main thread once ``seconds`` have passed (a blocked
    socket read is interrupted: Python runs the handler when the syscall returns EINTR).
    Elsewhere than the main thread only the retry budget and socket timeouts bound the time."""
    if threading.current_thread() is not threading.main_thread() or seconds <= 0:
        yield
        return

    def expire(signum: int, frame: object) -> None:
        out.expired, out.expired_in = True, out.in_flight
        raise _DeadlineReached

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def fetch_all(
    config: WrapperConfig, jwt: str, deadline: float, log: Callable[[str], None]
) -> Fetched:
    """Every secret of every source, or FetchError/TransientFetchError with one line, within
    ``deadline`` seconds in total."""
    out = Fetched()

    def before_sleep(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        out.last_error = str(error) if error else "error"
        log(f"retrying after {out.last_error}")

    @tenacity.retry(
        retry=tenacity.retry_if_exception_type(TransientFetchError),
        wait=tenacity.wait_exponential_jitter(multiplier=0.2, max=5.0, jitter=0.5),
        # No wait that would end past the deadline: give up instead of sleeping into it.
        stop=tenacity.stop_before_delay(deadline),
        reraise=True,
        before_sleep=before_sleep,
    )
    def attempt() -> None:
        out.attempts += 1
        for value in out.values.values():  # a failed attempt's partial results
            wipe(value)
        out.values.clear()
        try:
            for source in config.sources:
                _fetch_source(source, jwt, out)
        except CloudtaserError:
            out.in_flight = None  # answered (with an error): a later expiry is the retries'
            raise
        out.in_flight = None

    try:
        with _hard_deadline(deadline, out):
            attempt()
    except (CloudtaserError, _DeadlineReached) as e:
        if not out.expired:
            if isinstance(e, TransientFetchError):
                raise TransientFetchError(f"{e} — gave up after {out.attempts} attempts "
                                          f"within {deadline:.0f}s") from None
            raise
        for value in out.values.values():
            wipe(value)
        out.values.clear()
        if out.expired_in is not None:
            reason = f"{out.expired_in}: no complete answer within the {deadline:.0f}s deadline (too slow)"
        else:
            reason = f"{out.last_error or 'unreachable'} — deadline of {deadline:.0f}s reached"
        raise TransientFetchError(f"{reason} after {out.attempts} attempt(s)") from None
    return out
