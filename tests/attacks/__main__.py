"""``python -m tests.attacks [pytest args]``: run the attack matrix (root, the running local
stack) and print its table. The same as ``pytest -m kernel tests/attacks``."""

from __future__ import annotations

import os
import sys

import pytest

if __name__ == "__main__":
    os.environ.setdefault("CLOUDTASER_KEEP_STACK", "1")
    sys.exit(pytest.main(["-p", "no:cacheprovider", "tests/attacks", *sys.argv[1:]]))
