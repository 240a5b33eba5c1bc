"""An executor's Noise identity kept on disk, for a public key that survives restarts.

By default the executor makes a fresh identity per process (as Codex does). With a file, the
secrets are created once with mode 0600 and loaded afterwards; a file that others can read
is refused, because whoever holds it can impersonate the executor.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import stat

from codexexec.noise.errors import NoiseError
from codexexec.noise.keys import MLKEM768_SEED_LEN, X25519_KEY_LEN, NoiseKeyError, StaticIdentity

_VERSION = 1


class IdentityFileError(NoiseError):
    """The identity file cannot be used; the message names the file and the fix."""


def load_or_create_identity(path: str) -> StaticIdentity:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return _create(path)
    except OSError as exc:
        raise IdentityFileError(f"cannot open Noise identity file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise IdentityFileError(
                f"Noise identity file {path} is accessible to other users; run `chmod 600 {path}`"
            )
        raw = handle.read(4096)
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("version") != _VERSION:
            raise ValueError
        x_secret = base64.b64decode(data["x25519_secret_key"], validate=True)
        kem_seed = base64.b64decode(data["mlkem768_seed"], validate=True)
        return StaticIdentity.from_secret_bytes(x_secret, kem_seed)
    except (ValueError, KeyError, TypeError, binascii.Error, NoiseKeyError):
        raise IdentityFileError(
            f"Noise identity file {path} is not a codexexec identity; move it away to make a "
            "new one"
        ) from None


def _create(path: str) -> StaticIdentity:
    x_secret = os.urandom(X25519_KEY_LEN)
    kem_seed = os.urandom(MLKEM768_SEED_LEN)
    document = {
        "version": _VERSION,
        "x25519_secret_key": base64.b64encode(x_secret).decode("ascii"),
        "mlkem768_seed": base64.b64encode(kem_seed).decode("ascii"),
    }
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise IdentityFileError(
            f"cannot create Noise identity file {path}: {exc.strerror}"
        ) from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(document, handle)
    return StaticIdentity.from_secret_bytes(x_secret, kem_seed)
