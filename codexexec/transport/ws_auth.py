"""Who may open a websocket to `codexexec serve`: Codex 0.169's `--ws-auth` modes.

* ``capability-token`` (``--ws-token-file`` | ``--ws-token-sha256``): the upgrade must carry
  ``Authorization: Bearer <token>``; only the token's SHA-256 is kept, and digests are
  compared in constant time.
* ``signed-bearer-token`` (``--ws-shared-secret-file``, optional ``--ws-issuer``,
  ``--ws-audience``, ``--ws-max-clock-skew-seconds`` default 30): the bearer is an HS256 JWT
  signed with the shared secret (at least 32 bytes), with an integer ``exp``; ``nbf``,
  ``iss`` and ``aud`` (a string or a list) are checked when present or configured.
* Neither, with ``CODEX_EXEC_SERVER_CONNECTION_TOKEN`` set: that token, as a capability token.

Every refusal is HTTP 401 with Codex's text as a plain-text body; the argument checks and
their texts are Codex's too (``docs/codex-0.169-observed.md`` §29). Pure: settings in, a policy
out; the caller reads the files (``load_policy``) and passes the time in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from codexexec.transport.errors import TransportError

Mode = Literal["capability-token", "signed-bearer-token"]
MODES: tuple[Mode, ...] = ("capability-token", "signed-bearer-token")
DEFAULT_MAX_CLOCK_SKEW_SECONDS = 30
MIN_SHARED_SECRET_BYTES = 32
# The largest Authorization header looked at; a JWT is a few hundred bytes.
MAX_AUTHORIZATION_BYTES = 16 * 1024
_I64 = (-(2**63), 2**63 - 1)

MISSING_BEARER = "missing websocket bearer token"
INVALID_HEADER = "invalid authorization header"
INVALID_BEARER = "invalid websocket bearer token"
INVALID_JWT = "invalid websocket jwt"
EXPIRED_JWT = "expired websocket jwt"
JWT_NOT_YET_VALID = "websocket jwt is not valid yet"
JWT_ISSUER_MISMATCH = "websocket jwt issuer mismatch"
JWT_AUDIENCE_MISMATCH = "websocket jwt audience mismatch"


class WsAuthError(TransportError, ValueError):
    """The websocket auth flags or files cannot be used; the text is Codex's. ``usage``:
    a value the flag does not take (Codex's argument parser refuses it: exit 2)."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


@dataclass(frozen=True)
class WsAuthArgs:
    """The flags as given (None: not given)."""

    mode: str | None = None
    token_file: str | None = None
    token_sha256: str | None = None
    shared_secret_file: str | None = None
    issuer: str | None = None
    audience: str | None = None
    max_clock_skew_seconds: int | None = None


@dataclass(frozen=True)
class CapabilityToken:
    sha256: bytes


@dataclass(frozen=True)
class SignedBearer:
    secret: bytes
    issuer: str | None
    audience: str | None
    max_clock_skew_seconds: int

    def __repr__(self) -> str:  # the secret never reaches a log or traceback
        return f"SignedBearer(issuer={self.issuer!r}, audience={self.audience!r})"


Policy = CapabilityToken | SignedBearer


@dataclass(frozen=True)
class Settings:
    """Validated flags: a token source or a secret file still to be read."""

    mode: Mode
    token_file: Path | None = None
    token_sha256: bytes | None = None
    shared_secret_file: Path | None = None
    issuer: str | None = None
    audience: str | None = None
    max_clock_skew_seconds: int = DEFAULT_MAX_CLOCK_SKEW_SECONDS


def configure(args: WsAuthArgs) -> Settings | None:
    """The flags checked as Codex checks them; None when no mode is set (and none is due)."""
    jwt_flags = (args.shared_secret_file, args.issuer, args.audience, args.max_clock_skew_seconds)
    token_flags = (args.token_file, args.token_sha256)
    if args.mode is None:
        if any(flag is not None for flag in (*jwt_flags, *token_flags)):
            raise WsAuthError(
                "websocket auth flags require `--ws-auth capability-token` or "
                "`--ws-auth signed-bearer-token`"
            )
        return None
    if args.mode not in MODES:
        raise WsAuthError(
            f"invalid value '{args.mode}' for '--ws-auth <MODE>' "
            "[possible values: capability-token, signed-bearer-token]",
            usage=True,
        )
    if args.mode == "capability-token":
        if any(flag is not None for flag in jwt_flags):
            raise WsAuthError(
                "`--ws-shared-secret-file`, `--ws-issuer`, `--ws-audience`, and "
                "`--ws-max-clock-skew-seconds` require `--ws-auth signed-bearer-token`"
            )
        if args.token_file is not None and args.token_sha256 is not None:
            raise WsAuthError("`--ws-token-file` and `--ws-token-sha256` are mutually exclusive")
        if args.token_file is not None:
            return Settings("capability-token", token_file=Path(args.token_file))
        if args.token_sha256 is not None:
            return Settings("capability-token", token_sha256=_digest_arg(args.token_sha256))
        raise WsAuthError(
            "`--ws-token-file` or `--ws-token-sha256` is required when "
            "`--ws-auth capability-token` is set"
        )
    if any(flag is not None for flag in token_flags):
        raise WsAuthError(
            "`--ws-token-file` and `--ws-token-sha256` require `--ws-auth capability-token`, "
            "not `signed-bearer-token`"
        )
    if args.shared_secret_file is None:
        raise WsAuthError(
            "`--ws-shared-secret-file` is required when `--ws-auth signed-bearer-token` is set"
        )
    skew = args.max_clock_skew_seconds
    if skew is not None and not 0 <= skew <= _I64[1]:
        raise WsAuthError("websocket auth clock skew must fit in a signed 64-bit integer")
    return Settings(
        "signed-bearer-token",
        shared_secret_file=Path(args.shared_secret_file),
        issuer=_trimmed(args.issuer),
        audience=_trimmed(args.audience),
        max_clock_skew_seconds=DEFAULT_MAX_CLOCK_SKEW_SECONDS if skew is None else skew,
    )


def load_policy(settings: Settings) -> Policy:
    """Read the token or secret file the settings name (the only I/O here)."""
    if settings.mode == "capability-token":
        if settings.token_sha256 is not None:
            return CapabilityToken(settings.token_sha256)
        assert settings.token_file is not None
        return capability_token(_read_secret(settings.token_file))
    assert settings.shared_secret_file is not None
    secret = _read_secret(settings.shared_secret_file).encode()
    if len(secret) < MIN_SHARED_SECRET_BYTES:
        raise WsAuthError(
            f"signed websocket bearer secret {settings.shared_secret_file} must be at least "
            f"{MIN_SHARED_SECRET_BYTES} bytes"
        )
    return SignedBearer(secret, settings.issuer, settings.audience, settings.max_clock_skew_seconds)


def unauthenticated_refusal(host: str, port: int, *, authenticated: bool) -> str | None:
    """Why a listener must not start: anyone who can reach a non-loopback address could run
    commands as the server's user. (Codex's app-server refuses this; its exec-server does not —
    codexexec does unless ``--insecure-no-auth``.)"""
    if authenticated or ipaddress.ip_address(host).is_loopback:
        return None
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return (
        f"refusing to start non-loopback websocket listener {shown} without auth; configure "
        "`--ws-auth capability-token` or `--ws-auth signed-bearer-token` "
        "(or pass --insecure-no-auth to accept any client that reaches it)"
    )


def capability_token(token: str) -> CapabilityToken:
    return CapabilityToken(hashlib.sha256(token.encode()).digest())


def authorize(policy: Policy, authorization: str | None, now: float) -> str | None:
    """None if the upgrade may proceed; otherwise the 401 body (Codex's text)."""
    if authorization is None:
        return MISSING_BEARER
    token = _bearer(authorization)
    if token is None:
        return INVALID_HEADER
    if isinstance(policy, CapabilityToken):
        given = hashlib.sha256(token.encode()).digest()
        return None if hmac.compare_digest(given, policy.sha256) else INVALID_BEARER
    return check_jwt(policy, token, int(now))


def check_jwt(policy: SignedBearer, token: str, now: int) -> str | None:
    claims = _verified_claims(token, policy.secret)
    if claims is None:
        return INVALID_JWT
    skew = policy.max_clock_skew_seconds
    if now > claims["exp"] + skew:
        return EXPIRED_JWT
    nbf = claims.get("nbf")
    if nbf is not None and now < nbf - skew:
        return JWT_NOT_YET_VALID
    if policy.issuer is not None and claims.get("iss") != policy.issuer:
        return JWT_ISSUER_MISMATCH
    if policy.audience is not None:
        audience = claims.get("aud")
        audiences = [audience] if isinstance(audience, str) else audience or []
        if policy.audience not in audiences:
            return JWT_AUDIENCE_MISMATCH
    return None


# -- helpers -----------------------------------------------------------------------------


def _trimmed(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    return value.strip()


def _digest_arg(value: str) -> bytes:
    text = value.strip()
    try:
        if len(text) != 64:
            raise ValueError
        return bytes.fromhex(text)
    except ValueError:
        raise WsAuthError("--ws-token-sha256 must be a 64-character hex SHA-256 digest") from None


def _read_secret(path: Path) -> str:
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = (
            f"{error.strerror} (os error {error.errno})"
            if isinstance(error, OSError) and error.strerror
            else "stream did not contain valid UTF-8"
        )
        raise WsAuthError(f"failed to read websocket auth secret {path}: {reason}") from None
    if not raw.strip():
        raise WsAuthError(f"websocket auth secret {path} must not be empty")
    return raw.strip()


def _bearer(header: str) -> str | None:
    """The token of ``Bearer <token>`` (scheme in any case), or None if malformed."""
    if len(header) > MAX_AUTHORIZATION_BYTES or any(
        not (" " <= ch <= "~" or ch == "\t") for ch in header
    ):
        return None
    scheme, space, token = header.partition(" ")
    if not space or scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _b64url(segment: str) -> bytes:
    if not segment or "=" in segment:
        raise ValueError("not base64url")
    padded = segment + "=" * (-len(segment) % 4)
    return base64.b64decode(padded, altchars=b"-_", validate=True)


def _verified_claims(token: str, secret: bytes) -> dict[str, Any] | None:
    """The claims of an HS256 JWT signed with ``secret`` whose types Codex accepts: an
    integer ``exp``, an optional integer ``nbf``, string ``iss``, string or string-list
    ``aud``. None for anything else."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        header = json.loads(_b64url(parts[0]))
        signature = _b64url(parts[2])
        claims = json.loads(_b64url(parts[1]))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        return None
    expected = hmac.new(secret, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(signature, expected) or not isinstance(claims, dict):
        return None
    if not _is_i64(claims.get("exp")):
        return None
    if "nbf" in claims and claims["nbf"] is not None and not _is_i64(claims["nbf"]):
        return None
    if claims.get("iss") is not None and not isinstance(claims["iss"], str):
        return None
    audience = claims.get("aud")
    if audience is not None and not (
        isinstance(audience, str)
        or (isinstance(audience, list) and all(isinstance(a, str) for a in audience))
    ):
        return None
    return claims


def _is_i64(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and _I64[0] <= value <= _I64[1]
