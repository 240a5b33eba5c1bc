"""The registration options `serve --remote`, `register` and `login status` share."""

from __future__ import annotations

import typer

TOKEN_FILE = typer.Option(
    None,
    "--token-file",
    help="Registry bearer token file, for a self-hosted `codexexec rendezvous` "
    "(else CODEXEXEC_REGISTRY_TOKEN, else your `codex login`).",
)
TOKEN_STDIN = typer.Option(
    False, "--token-stdin", help="Read the registry bearer token from one line of stdin."
)
ALLOW_AGENT_IDENTITY = typer.Option(
    False,
    "--allow-agent-identity-auth",
    help="Register with the Agent Identity in CODEX_ACCESS_TOKEN (ignored without this flag).",
)
CLEARTEXT_RELAY = typer.Option(
    False,
    "--cleartext-relay",
    help="Register the unencrypted relay profile (the relay sees everything). "
    "The default is Noise, end to end.",
)
