"""The refresher: keeps file and SDK deliveries current without restarting the app.

Limitation: a rotated value must keep its length (secret memory cannot be resized and the
app holds its fds by number); a value of another length is reported and needs a restart.

Forked by the wrapper just before it execs the app, it keeps the secret fds and the config,
and every ``refresh_seconds`` re-reads the (rotating, projected) service-account token,
fetches everything again and rewrites each fd in place; the interposer and the SDKs map the
fd on every read, so the app sees the new value on its next open/get. Env deliveries cannot
change after exec (``cloudtaser validate`` warns). A failed refresh keeps the old values and
is retried at the next interval. The refresher registers its own PID with the node agent, so
it is protected like the app, and dies with the app (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import signal
import sys
import time
from pathlib import Path

from cloudtaser.engine.plans import WrapperConfig
from cloudtaser.errors import CloudtaserError
from cloudtaser.wrapper import fetching, registering, storing

PR_SET_PDEATHSIG = 1
PROG = "cloudtaser-refresher"


def _log(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def start(config: WrapperConfig, fds: dict[fetching.ValueKey, int], deadline: float) -> int:
    """Fork the refresher; returns its PID in the parent (the future app)."""
    app = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    try:  # the child: never returns into the wrapper's exec path
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != app:  # the app died before the prctl took effect
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        try:
            registering.register(config.agent.socket)
        except CloudtaserError as e:
            _log(f"warning: {e}")
        loop(config, fds, deadline, app)
    finally:
        os._exit(0)


def refresh_once(config: WrapperConfig, fds: dict[fetching.ValueKey, int], deadline: float) -> int:
    """One refresh; returns how many fds changed. Raises on failure (old values stay)."""
    jwt = Path(config.token_path).read_text().strip()
    fetched = fetching.fetch_all(config, jwt, deadline, _log)
    changed = 0
    try:
        for value_key, fd in fds.items():
            value = fetched.values[value_key]
            if hashlib.sha256(storing.read(fd)).digest() != hashlib.sha256(value).digest():
                try:
                    storing.rewrite(fd, value)
                except storing.SecretMemoryError as e:
                    _log(f"{value_key[1]}/{value_key[2]} key {value_key[3]}: {e}")
                    continue
                changed += 1
    finally:
        for value in fetched.values.values():
            storing.wipe(value)
    return changed


def loop(config: WrapperConfig, fds: dict[fetching.ValueKey, int], deadline: float, app: int) -> None:
    interval = config.refresh_seconds or 0
    while os.getppid() == app:
        time.sleep(interval)
        try:
            changed = refresh_once(config, fds, min(deadline, interval))
        except (CloudtaserError, OSError) as e:
            _log(f"refresh failed, keeping the current values: {e}")
            continue
        except Exception as e:  # an odd server answer must not end rotation for good
            _log(f"refresh failed ({type(e).__name__}), keeping the current values")
            continue
        if changed:
            _log(f"{changed} secret(s) updated in place")
