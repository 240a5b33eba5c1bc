"""A fixed bearer token for a self-hosted registry (`codexexec rendezvous`).

From ``--token-file`` (the first line that is not blank or a ``#`` comment), from stdin
(one newline-terminated line of at most 16 KiB, as Codex's ``--registration-bearer-stdin``),
or from ``CODEXEXEC_REGISTRY_TOKEN``.
"""

from __future__ import annotations

from typing import IO

from codexexec.remote.auth.api_keys import API_KEY_REFUSED, looks_like_api_key
from codexexec.remote.auth.base import AuthError

TOKEN_ENV = "CODEXEXEC_REGISTRY_TOKEN"
MAX_STDIN_TOKEN_BYTES = 16 * 1024


class StaticBearer:
    """``account_id``: also sent as ``ChatGPT-Account-ID``, as Codex's harness does with
    ``CODEX_EXEC_SERVER_NOISE_CHATGPT_ACCOUNT_ID``."""

    def __init__(self, token: str, source: str, account_id: str | None = None) -> None:
        token = token.strip()
        if not token or not all(33 <= ord(ch) <= 126 for ch in token):
            raise AuthError(f"the registry token from {source} is not a valid HTTP header value")
        if looks_like_api_key(token):
            raise AuthError(API_KEY_REFUSED)
        self._token = token
        self._source = source
        self._account_id = account_id

    @property
    def description(self) -> str:
        return f"registry token from {self._source}"

    async def headers(self) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self._token}"}
        if self._account_id:
            headers["ChatGPT-Account-ID"] = self._account_id
        return headers


def bearer_from_file(path: str) -> StaticBearer:
    return StaticBearer(token_from_file(path), f"token file {path}")


def token_from_file(path: str) -> str:
    """The first field of the first line that is not blank or a ``#`` comment."""
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                line = line.strip()
                if line and not line.startswith("#"):
                    return line.split()[0]
    except OSError as exc:
        raise AuthError(f"cannot read token file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise AuthError(f"token file {path} is not UTF-8 text") from None
    raise AuthError(f"token file {path} holds no token")


def bearer_from_stdin(stream: IO[bytes]) -> StaticBearer:
    try:
        return StaticBearer(_stdin_line(stream, "registration bearer"), "stdin")
    except UnicodeDecodeError:
        raise AuthError("the registry token from stdin is not a valid HTTP header value") from None


def _stdin_line(stream: IO[bytes], what: str) -> str:
    line = stream.readline(MAX_STDIN_TOKEN_BYTES + 1)
    if not line.endswith(b"\n") or len(line) > MAX_STDIN_TOKEN_BYTES:
        raise AuthError(f"expected a newline-terminated {what} of at most 16 KiB on stdin")
    return line.decode("ascii")


CHATGPT_URL_REFUSED = "ChatGPT token registry URLs must use HTTPS without userinfo or fragments"
CHATGPT_TOKEN_INVALID = "invalid ChatGPT access token"


def chatgpt_bearer_from_stdin(
    stream: IO[bytes], registry_url: str, account_id: str | None
) -> StaticBearer:
    """``--chatgpt-token-stdin``: a ChatGPT access token for an HTTPS registry, sent with its
    account (from the token's claim, or ``--chatgpt-account-id``, which must match it).
    Codex's checks and texts (docs/codex-0.169-observed.md §32)."""
    from urllib.parse import urlsplit

    from codexexec.remote.auth.chatgpt import AUTH_CLAIMS
    from codexexec.remote.auth.jwt import JwtError, decode_claims

    url = urlsplit(registry_url)
    if url.scheme != "https" or url.username is not None or "#" in registry_url:
        raise AuthError(CHATGPT_URL_REFUSED)
    try:
        token = _stdin_line(stream, "ChatGPT access token").strip()
        claims = decode_claims(token)
    except (UnicodeDecodeError, JwtError):
        raise AuthError(CHATGPT_TOKEN_INVALID) from None
    auth = claims.get(AUTH_CLAIMS)
    claimed = auth.get("chatgpt_account_id") if isinstance(auth, dict) else None
    if isinstance(claimed, str) and claimed:
        if account_id is not None and account_id != claimed:
            raise AuthError("--chatgpt-account-id does not match the token")
        account_id = claimed
    if not account_id:
        raise AuthError("token has no ChatGPT account ID; supply --chatgpt-account-id")
    return StaticBearer(token, "stdin (ChatGPT access token)", account_id)
