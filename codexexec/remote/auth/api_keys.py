"""OpenAI API keys are never registry credentials (client and rendezvous say so alike)."""

from __future__ import annotations

# sk-..., sk-proj-..., sk-svcacct-..., sk-admin-...
API_KEY_PREFIX = "sk-"

API_KEY_REFUSED = (
    "API key authentication is not accepted for environment registration; sign in with "
    "ChatGPT (run `codex login`), pass --allow-agent-identity-auth with CODEX_ACCESS_TOKEN, "
    "or use a registry token"
)


def looks_like_api_key(token: str) -> bool:
    return token.startswith(API_KEY_PREFIX)
