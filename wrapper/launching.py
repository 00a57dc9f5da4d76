"""The wrapper's main: config -> login -> fetch -> secret memory -> register -> exec.

    cloudtaser-wrapper [--config-env CLOUDTASER_CONFIG] [--deadline 60] -- COMMAND ARGS...

The app replaces the wrapper in the same PID (execve), so the node agent's protection, the
hardening (no core dumps) and the secret fds carry over. Deliveries:
- env: in the app's environment;
- file: the interposer (LD_PRELOAD) serves open() of the path from the secret fd;
- sdk: the Go/Python SDKs mmap the fd named in CLOUDTASER_FDS.
On any failure the app is not started and one line on stderr says what and why.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from cloudtaser.engine.fields import validation_problems
from cloudtaser.engine.plans import CONFIG_ENV, WrapperConfig
from cloudtaser.errors import CloudtaserError, TemporaryError
from cloudtaser.wrapper import fetching, refreshing, registering, storing

FDS_ENV = "CLOUDTASER_FDS"
INTERPOSER_ENV = "CLOUDTASER_INTERPOSER"
EX_TEMPFAIL, EX_CONFIG = 75, 78
PROG = "cloudtaser-wrapper"
_DEV_INTERPOSER = Path(__file__).resolve().parent / "interposer" / "build" / "libcloudtaser_interposer.so"


class WrapperError(CloudtaserError):
    """A failure before exec; the message is the one line the user sees."""


def _log(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--config-env", default=CONFIG_ENV,
                        help="environment variable holding the WrapperConfig JSON")
    parser.add_argument("--deadline", type=float, default=60.0,
                        help="seconds to keep retrying transient failures (default 60)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    args = parser.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        parser.error("no command: use cloudtaser-wrapper [options] -- COMMAND ARGS...")
    return args


def load_config(env_name: str) -> WrapperConfig:
    raw = os.environ.get(env_name)
    if not raw:
        raise WrapperError(f"{env_name} is not set: the injector puts the wrapper config there")
    try:
        return WrapperConfig.model_validate_json(raw)
    except ValidationError as e:
        path, message = validation_problems(e)[0]
        raise WrapperError(f"{env_name} is not a valid wrapper config: {path}: {message}") from None


def _interposer() -> str:
    path = os.environ.get(INTERPOSER_ENV) or str(_DEV_INTERPOSER)
    if not Path(path).is_file():
        raise WrapperError(f"file delivery needs the interposer library, not found at {path} "
                           f"(set {INTERPOSER_ENV})")
    return path


@dataclass
class Prepared:
    """The app's environment and, per fetched value, the secret fd holding it (if any)."""

    env: dict[str, str]
    fds: dict[fetching.ValueKey, int] = field(default_factory=dict)


def prepare(config: WrapperConfig, fetched: fetching.Fetched, environ: dict[str, str]) -> Prepared:
    """The app's environment: env deliveries, the fd manifest, LD_PRELOAD when files are served.

    Each delivered value gets one secret fd shared by its file and SDK deliveries.
    """
    out = Prepared({k: v for k, v in environ.items() if k not in (CONFIG_ENV, FDS_ENV)})
    manifest: list[str] = []
    for source in config.sources:
        for secret in source.secrets:
            for key in secret.keys:
                value_key = (source.binding, secret.mount, secret.path, key.key)
                value = fetched.values[value_key]
                if key.env:
                    out.env[key.env] = value.decode()
                if key.file or key.sdk:
                    held = storing.store(value, config.require_secret_mem,
                                         sealed=config.refresh_seconds is None)
                    out.fds[value_key] = held.fd
                    if held.kind != "memfd_secret":
                        _log(f"warning: memfd_secret unavailable, {secret.mount}/{secret.path} "
                             f"key {key.key} is in a sealed memfd (root can read it unless the "
                             "node agent protects this process)")
                    if key.file:
                        manifest.append(f"file {held.fd} {key.file}")
                    if key.sdk:
                        manifest.append(f"sdk {held.fd} {key.sdk}")
    if manifest:
        out.env[FDS_ENV] = "\n".join(manifest)
    if any(line.startswith("file ") for line in manifest):
        preload = out.env.get("LD_PRELOAD")
        out.env["LD_PRELOAD"] = _interposer() + (f":{preload}" if preload else "")
    return out


def _register(config: WrapperConfig) -> str:
    """Register with the node agent; the line to log once the app is about to start."""
    try:
        registration = registering.register(config.agent.socket)
    except registering.AgentUnavailable as e:
        if config.agent.required:
            raise WrapperError(f"{e}; the pod's policy enforces protection, so the app is not "
                               "started without the agent") from None
        return f"warning: {e}; audit mode, starting without kernel protection"
    return f"registered with the node agent ({registration.backend} backend)"


def _wipe(fetched: fetching.Fetched | None) -> None:
    if fetched is not None:
        for value in fetched.values.values():
            storing.wipe(value)


def run(argv: Sequence[str]) -> int:
    args = _parse(argv)
    started = time.monotonic()
    fetched: fetching.Fetched | None = None
    try:
        config = load_config(args.config_env)
        storing.harden_process()
        try:
            jwt = Path(config.token_path).read_text().strip()
        except OSError as e:
            raise WrapperError(f"cannot read the service-account token {config.token_path}: "
                               f"{e.strerror}") from None
        # Register first: the wrapper itself is protected while it holds secrets, and in
        # enforce mode nothing is fetched for an app that will not be started.
        registered = _register(config)
        fetched = fetching.fetch_all(config, jwt, args.deadline, _log)
        prepared = prepare(config, fetched, dict(os.environ))
        _wipe(fetched)  # before the refresher forks: it must not inherit plaintext copies
        if config.refresh_seconds and prepared.fds:
            refreshing.start(config, prepared.fds, args.deadline)
        env = prepared.env
    except TemporaryError as e:
        _log(str(e))
        return EX_TEMPFAIL
    except CloudtaserError as e:
        _log(str(e))
        return EX_CONFIG
    except Exception as e:  # never a traceback: it could carry a value or a token
        _log(f"internal error ({type(e).__name__}); the app was not started")
        return EX_CONFIG
    finally:
        _wipe(fetched)
    _log(registered)
    count = len(fetched.values) if fetched else 0
    _log(f"{count} secret(s) fetched in {(time.monotonic() - started) * 1000:.0f} ms; "
         f"starting {args.command[0]}")
    try:
        os.execvpe(args.command[0], args.command, env)
    except FileNotFoundError:
        _log(f"cannot start {args.command[0]}: not found")
        return 127
    except PermissionError:
        _log(f"cannot start {args.command[0]}: permission denied")
        return 126
    return 0  # not reached: execvpe does not return


def main() -> None:
    sys.exit(run(sys.argv[1:]))
