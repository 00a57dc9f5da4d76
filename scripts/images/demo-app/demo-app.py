"""The local stack's glibc demo app (the demo-app image: Debian's python3.11).

Started by the cloudtaser wrapper, it proves it received its secret without revealing it: it
prints a SHA-256 prefix of the env delivery and whether the file delivery (served from secret
memory by the interposer; nothing is on disk) holds the same bytes, then stays up until
SIGTERM. Without the wrapper (the pod was not injected) it says so and exits 1.
"""

import hashlib
import os
import signal
import sys

NAME, PATH = "DEMO_PASSWORD", "/etc/demo/password"


def main() -> int:
    value = os.environ.get(NAME)
    if not value:
        print(f"demo-app: {NAME} is not set: this pod was not injected by cloudtaser", flush=True)
        return 1
    digest = hashlib.sha256(value.encode()).hexdigest()[:16]
    try:
        with open(PATH, "rb") as f:
            same = f.read() == value.encode()
        file_line = f"{PATH} {'holds the same value' if same else 'DIFFERS'}"
    except OSError as e:
        file_line = f"{PATH}: {e.strerror}"
    print(f"demo-app: {NAME} received (sha256 {digest}...); {file_line}", flush=True)
    del value
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # PID 1 ignores it otherwise
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
