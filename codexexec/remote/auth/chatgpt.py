"""ChatGPT login (what `codex login` stores): bearer access token plus account header.

The access token is refreshed when it has expired (or expires within a minute), the way
Codex 0.169.0 does it: ``POST`` to the token endpoint (``CODEX_REFRESH_TOKEN_URL_OVERRIDE``
replaces ``https://auth.openai.com/oauth/token``, which is how tests point it at a loopback
server) with ``{"client_id", "grant_type": "refresh_token", "refresh_reason":
"proactive_expiry", "refresh_token"}``. The refresh token rotates, so the result is written
back at once to the store the login came from. Refreshes are serialized across processes
with ``flock`` on ``$CODEX_HOME/auth.json.lock``; inside the lock the login is re-read first,
so a process that finds a refresh already done by another uses it instead of spending the
(now stale) refresh token.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from codexexec.remote.auth.base import AuthError
from codexexec.remote.auth.jwt import JwtError, decode_claims, numeric_claim
from codexexec.remote.auth.storage import Store
from codexexec.remote.http import Unreachable, post_json

CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"
REFRESH_URL = "https://auth.openai.com/oauth/token"
REFRESH_URL_ENV = "CODEX_REFRESH_TOKEN_URL_OVERRIDE"
REFRESH_TIMEOUT_SECONDS = 30.0
EXPIRY_MARGIN_SECONDS = 60.0  # refresh a little early: clocks differ and requests take time
REFRESH_INTERVAL_SECONDS = 8 * 24 * 3600.0  # Codex's rule for access tokens without `exp`
LOCK_WAIT_SECONDS = 10.0
AUTH_CLAIMS = "https://api.openai.com/auth"
ACCOUNT_HEADER = "chatgpt-account-id"  # the spelling Codex 0.169 sends
FEDRAMP_HEADER = "X-OpenAI-Fedramp"

_PERMANENT = {
    "refresh_token_expired": "Your access token could not be refreshed because your refresh "
    "token has expired. Please log out and sign in again.",
    "refresh_token_reused": "Your access token could not be refreshed because your refresh "
    "token was already used. Please log out and sign in again.",
    "refresh_token_invalidated": "Your access token could not be refreshed because your "
    "refresh token was revoked. Please log out and sign in again.",
}
_PERMANENT_OTHER = "Your access token could not be refreshed. Please log out and sign in again."
_SWITCHED = (
    "Your access token could not be refreshed because you have since logged out or signed in "
    "to another account. Please sign in again."
)


def _claims(token: object) -> dict[str, Any]:
    if not isinstance(token, str):
        return {}
    try:
        return decode_claims(token)
    except JwtError:
        return {}


class ChatGPTAuth:
    def __init__(
        self,
        data: dict[str, Any],
        store: Store,
        home: Path,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._store = store
        self._home = home
        self._environ = os.environ if environ is None else environ
        self._lock = asyncio.Lock()
        self._data = self._checked(data)

    def _checked(self, data: dict[str, Any]) -> dict[str, Any]:
        tokens = data.get("tokens")
        if not isinstance(tokens, dict) or not isinstance(tokens.get("access_token"), str):
            raise AuthError(
                f"{self._store.where} holds no ChatGPT tokens (partial login?); run `codex login`"
            )
        if not tokens["access_token"] or any(ord(ch) < 33 for ch in tokens["access_token"]):
            raise AuthError(
                f"{self._store.where} holds a malformed access token; run `codex login`"
            )
        return data

    @property
    def _tokens(self) -> dict[str, Any]:
        tokens: dict[str, Any] = self._data["tokens"]
        return tokens

    @property
    def account_id(self) -> str | None:
        account = self._tokens.get("account_id")
        if isinstance(account, str) and account:
            return account
        claimed = _claims(self._tokens.get("id_token")).get(AUTH_CLAIMS, {})
        value = claimed.get("chatgpt_account_id") if isinstance(claimed, dict) else None
        return value if isinstance(value, str) and value else None

    @property
    def fedramp(self) -> bool:
        claimed = _claims(self._tokens.get("id_token")).get(AUTH_CLAIMS, {})
        return isinstance(claimed, dict) and claimed.get("chatgpt_account_is_fedramp") is True

    @property
    def email(self) -> str | None:
        email = _claims(self._tokens.get("id_token")).get("email")
        return email if isinstance(email, str) else None

    @property
    def description(self) -> str:
        who = ", ".join(
            part for part in (self.email, self.account_id and f"account {self.account_id}") if part
        )
        return f"ChatGPT login{f' ({who})' if who else ''} from {self._store.where}"

    @property
    def can_refresh(self) -> bool:
        token = self._tokens.get("refresh_token")
        return isinstance(token, str) and bool(token)

    def expires_at(self) -> float | None:
        try:
            return numeric_claim(_claims(self._tokens["access_token"]), "exp")
        except JwtError:
            return None

    def needs_refresh(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        expires = self.expires_at()
        if expires is not None:
            return expires <= now + EXPIRY_MARGIN_SECONDS
        refreshed = _parse_time(self._data.get("last_refresh"))
        return refreshed is not None and now - refreshed >= REFRESH_INTERVAL_SECONDS

    async def headers(self) -> dict[str, str]:
        if self.needs_refresh():
            async with self._lock:
                if self.needs_refresh():
                    await self._refresh()
        headers = {"Authorization": f"Bearer {self._tokens['access_token']}"}
        if self.account_id:
            headers[ACCOUNT_HEADER] = self.account_id
        if self.fedramp:
            headers[FEDRAMP_HEADER] = "true"
        return headers

    async def _refresh(self) -> None:
        async with self._file_lock():
            stored = self._store.load()
            if stored is not None:
                fresh = ChatGPTAuth(stored, self._store, self._home, self._environ)
                if fresh.account_id != self.account_id:
                    raise AuthError(_SWITCHED)
                if not fresh.needs_refresh():  # another process refreshed it meanwhile
                    self._data = fresh._data
                    return
                self._data = fresh._data
            refresh_token = self._tokens.get("refresh_token")
            if not self.can_refresh:
                raise AuthError(
                    f"the ChatGPT access token in {self._store.where} has expired and there "
                    "is no refresh token to renew it; run `codex login`"
                )
            url = self._environ.get(REFRESH_URL_ENV, "").strip() or REFRESH_URL
            body = {
                "client_id": CLIENT_ID,
                "grant_type": "refresh_token",
                "refresh_reason": "proactive_expiry",
                "refresh_token": refresh_token,
            }
            try:
                reply = await post_json(url, body, _refresh_headers(), REFRESH_TIMEOUT_SECONDS)
            except Unreachable as exc:
                raise AuthError(f"cannot refresh the ChatGPT access token: {exc}") from None
            granted = _granted_tokens(reply.status, reply.text)
            self._tokens.update(granted)
            self._data["last_refresh"] = (
                datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
            )
            self._store.save(self._data)

    @contextlib.asynccontextmanager
    async def _file_lock(self) -> AsyncIterator[None]:
        from codexexec.file_lock import lock_attempts

        path = self._home / "auth.json.lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:  # a read-only home: still refresh, just without the shared lock
            yield
            return
        try:
            try:
                for _ in lock_attempts(fd, LOCK_WAIT_SECONDS):
                    await asyncio.sleep(0.05)
            except TimeoutError:
                raise AuthError(
                    f"another process has held {path} for {LOCK_WAIT_SECONDS:.0f} s "
                    "while refreshing the login; try again"
                ) from None
            yield
        finally:
            os.close(fd)  # releases the lock


def _refresh_headers() -> dict[str, str]:
    """What Codex 0.169 sends with a refresh: its originator (the login is Codex's client id),
    and a User-Agent in Codex's shape that names codexexec."""
    import platform

    from codexexec import __version__

    system = f"{platform.system()} {platform.release()}"
    return {
        "originator": "codex_cli_rs",
        "User-Agent": f"codexexec/{__version__} ({system}; {platform.machine()})",
    }


def _granted_tokens(status: int, text: str) -> dict[str, str]:
    import json

    try:
        payload: Any = json.loads(text)
    except ValueError:
        payload = None
    if 200 <= status < 300:
        if not isinstance(payload, dict):
            raise AuthError("the token endpoint answered the refresh with something not JSON")
        granted = {
            key: payload[key]
            for key in ("id_token", "access_token", "refresh_token")
            if isinstance(payload.get(key), str) and payload[key]
        }
        if "access_token" not in granted:
            raise AuthError("the token endpoint's refresh answer holds no access token")
        if any(ord(ch) < 33 or ord(ch) > 126 for ch in granted["access_token"]):
            # It goes into a header on every request (and into the store): check it first.
            raise AuthError("the token endpoint's refresh answer holds a malformed access token")
        return granted
    code = _error_code(payload)
    if code in _PERMANENT:
        raise AuthError(_PERMANENT[code])
    if status == 401:
        raise AuthError(_PERMANENT_OTHER)
    raise AuthError(f"Failed to refresh token: {status}: {code or 'no details'}")


def _error_code(payload: Any) -> str | None:
    if not isinstance(payload, dict):
        return None
    error = payload.get("error")
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        return str(error["code"])
    if isinstance(error, str):
        return error
    code = payload.get("code")
    return code if isinstance(code, str) else None


def _parse_time(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
