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
    line = stream.readline(MAX_STDIN_TOKEN_BYTES + 1)
    if not line.endswith(b"\n") or len(line) > MAX_STDIN_TOKEN_BYTES:
        raise AuthError(
            "expected a newline-terminated registration bearer of at most 16 KiB on stdin"
        )
    try:
        return StaticBearer(line.decode("ascii"), "stdin")
    except UnicodeDecodeError:
        raise AuthError("the registry token from stdin is not a valid HTTP header value") from None
