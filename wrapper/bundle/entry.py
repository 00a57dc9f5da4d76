"""Entry script of the frozen wrapper in the bundle (``scripts/build-bundle`` freezes it).

Why this file and not ``cloudtaser.wrapper.launching:main`` directly: in the bundle the wrapper
runs from ``/cloudtaser/wrapper`` inside an app image that has no cloudtaser tree and maybe no
Python, so two things differ from a development run and are settled here, before the wrapper
proper starts:

- the interposer is the bundle's own ``lib/libcloudtaser_interposer.so`` (next to the
  executable), unless ``CLOUDTASER_INTERPOSER`` says otherwise;
- the app must not inherit the frozen runtime's environment: PyInstaller's bootloader may point
  ``LD_LIBRARY_PATH`` at the bundle's private libraries (keeping the original in
  ``LD_LIBRARY_PATH_ORIG``) and sets ``_PYI_*``/``_MEIPASS2`` variables; the app (itself
  perhaps a frozen program) gets the environment the container was started with.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

INTERPOSER_ENV = "CLOUDTASER_INTERPOSER"  # the same name as cloudtaser.wrapper.launching's
INTERPOSER = Path("lib") / "libcloudtaser_interposer.so"


def _restore_environment(environ: MutableMapping[str, str]) -> None:
    for name in ("LD_LIBRARY_PATH", "LIBPATH"):
        original = environ.pop(f"{name}_ORIG", None)
        if original is not None:
            environ[name] = original
        elif name in environ and _points_into_bundle(environ[name]):
            del environ[name]  # set by the bootloader where the container had none
    for name in [n for n in environ if n.startswith("_PYI_") or n == "_MEIPASS2"]:
        del environ[name]


def _points_into_bundle(value: str) -> bool:
    internal: str | None = getattr(sys, "_MEIPASS", None)
    if not internal:
        return False
    parts = [Path(part).resolve() for part in value.split(":") if part]
    return bool(parts) and all(part == Path(internal).resolve() for part in parts)


def main() -> None:
    bundle = Path(sys.executable).resolve().parent
    if not os.environ.get(INTERPOSER_ENV):
        os.environ[INTERPOSER_ENV] = str(bundle / INTERPOSER)
    _restore_environment(os.environ)
    from cloudtaser.wrapper.launching import main as wrapper_main

    wrapper_main()


if __name__ == "__main__":
    main()
