"""Which credential registers an executor, in this order:

1. ``--token-file`` or ``--token-stdin``: a self-hosted registry token;
   ``--chatgpt-token-stdin``: a ChatGPT access token (``--executor-credential-stdin``, a
   rotating credential, is read by the relay itself: see ``rotating.py``).
2. ``CODEX_ACCESS_TOKEN`` with ``--allow-agent-identity-auth``: Agent Identity.
3. ``CODEXEXEC_REGISTRY_TOKEN``: a self-hosted registry token.
4. ``CODEX_API_KEY``: refused (API keys never register an executor).
5. The ChatGPT login Codex stored (``auth.json`` or keyring, per ``cli_auth_credentials_store``);
   an API-key login there is refused, an Agent Identity login needs the flag.
6. ``OPENAI_API_KEY`` alone: refused, saying why.

Without the flag, ``CODEX_ACCESS_TOKEN`` is never used for registration, and the user is
told so whenever it is set.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO

from codexexec.remote.auth.agent_identity import (
    ACCESS_TOKEN_ENV,
    AgentIdentityAuth,
    authapi_base_url,
    parse_agent_identity,
)
from codexexec.remote.auth.api_keys import API_KEY_REFUSED
from codexexec.remote.auth.base import AuthError, AuthProvider
from codexexec.remote.auth.bearer import (
    TOKEN_ENV,
    StaticBearer,
    bearer_from_file,
    bearer_from_stdin,
    chatgpt_bearer_from_stdin,
)
from codexexec.remote.auth.chatgpt import ChatGPTAuth
from codexexec.remote.auth.codex_home import STORE_SETTING, codex_home, store_mode
from codexexec.remote.auth.storage import load_login

ALLOW_FLAG = "--allow-agent-identity-auth"
CODEX_API_KEY_ENV, OPENAI_API_KEY_ENV = "CODEX_API_KEY", "OPENAI_API_KEY"
IGNORED_ACCESS_TOKEN = (
    f"{ACCESS_TOKEN_ENV} is set but not used: registration uses Agent Identity only with "
    f"{ALLOW_FLAG}"
)


@dataclass(frozen=True)
class AuthOptions:
    registry_url: str
    token_file: str | None = None
    token_stdin: bool = False
    allow_agent_identity: bool = False
    chatgpt_token_stdin: bool = False
    chatgpt_account_id: str | None = None
    executor_credential_stdin: bool = False


def resolve_registration_auth(
    options: AuthOptions,
    notice: Callable[[str], None],
    environ: Mapping[str, str] | None = None,
    stdin: IO[bytes] | None = None,
) -> AuthProvider:
    env = os.environ if environ is None else environ
    if options.token_file:
        return bearer_from_file(options.token_file)
    if options.token_stdin:
        return bearer_from_stdin(stdin if stdin is not None else sys.stdin.buffer)
    if options.chatgpt_token_stdin:
        return chatgpt_bearer_from_stdin(
            stdin if stdin is not None else sys.stdin.buffer,
            options.registry_url,
            options.chatgpt_account_id,
        )
    access_token = env.get(ACCESS_TOKEN_ENV, "").strip()
    if access_token and options.allow_agent_identity:
        return AgentIdentityAuth(
            parse_agent_identity(access_token), authapi_base_url(options.registry_url, env)
        )
    provider = _without_agent_identity(options, env, notice)
    if access_token:
        notice(IGNORED_ACCESS_TOKEN)
    return provider


def _without_agent_identity(
    options: AuthOptions, env: Mapping[str, str], notice: Callable[[str], None]
) -> AuthProvider:
    if env.get(TOKEN_ENV, "").strip():
        return StaticBearer(env[TOKEN_ENV], TOKEN_ENV)
    if env.get(CODEX_API_KEY_ENV, "").strip():
        raise AuthError(f"{API_KEY_REFUSED} ({CODEX_API_KEY_ENV} is set: unset it)")
    home = codex_home(env)
    mode = store_mode(home)
    found = load_login(home, mode, notice)
    if found is not None:
        data, store = found
        auth_mode = data.get("auth_mode")
        if auth_mode == "apikey" or (auth_mode is None and not data.get("tokens")):
            raise AuthError(f"{API_KEY_REFUSED} ({store.where} holds an API key login)")
        if auth_mode == "agentIdentity":
            jwt = data.get("agent_identity")
            if not options.allow_agent_identity:
                raise AuthError(
                    f"{store.where} holds an Agent Identity login; pass {ALLOW_FLAG} to "
                    "register with it, or run `codex login` for a ChatGPT login"
                )
            if not isinstance(jwt, str):
                raise AuthError(f"{store.where} holds no Agent Identity token; run `codex login`")
            return AgentIdentityAuth(
                parse_agent_identity(jwt), authapi_base_url(options.registry_url, env)
            )
        if auth_mode not in (None, "chatgpt", "chatgptAuthTokens"):
            raise AuthError(
                f"{store.where} holds a `{auth_mode}` login, which cannot register an "
                "executor; run `codex login` to sign in with ChatGPT"
            )
        return ChatGPTAuth(data, store, home, env)
    if env.get(OPENAI_API_KEY_ENV, "").strip():
        raise AuthError(f"{API_KEY_REFUSED} ({OPENAI_API_KEY_ENV} is set, but no ChatGPT login)")
    where = f"{home / 'auth.json'}" if mode == "file" else f"{home} ({STORE_SETTING} = {mode})"
    hint = (
        f"; {ACCESS_TOKEN_ENV} is set: pass {ALLOW_FLAG} to register with Agent Identity"
        if env.get(ACCESS_TOKEN_ENV, "").strip()
        else ""
    )
    raise AuthError(
        "remote exec-server registration requires ChatGPT authentication; run `codex login` "
        f"first (no login in {where}; set CODEX_HOME if yours is elsewhere){hint}"
    )
