"""`codexexec register --forward`: expose an existing exec-server through a registry."""

from __future__ import annotations

import typer

from codexexec.cli.auth_options import (
    ALLOW_AGENT_IDENTITY,
    CLEARTEXT_RELAY,
    TOKEN_FILE,
    TOKEN_STDIN,
)


def register(
    remote: str = typer.Option(..., "--remote", help="Registry base URL."),
    environment_id: str = typer.Option(..., "--environment-id", help="Environment to register."),
    forward: str = typer.Option(
        ..., "--forward", help="ws:// URL of the exec-server (codexexec's or Codex's)."
    ),
    token_file: str | None = TOKEN_FILE,
    token_stdin: bool = TOKEN_STDIN,
    allow_agent_identity_auth: bool = ALLOW_AGENT_IDENTITY,
    cleartext_relay: bool = CLEARTEXT_RELAY,
) -> None:
    """Forward each relay stream to its own websocket connection to FORWARD."""
    from codexexec.cli.remote_serve import run_relay
    from codexexec.logs import configure_client_logging
    from codexexec.remote.auth.resolve import AuthOptions
    from codexexec.transport.base import MessageTransport
    from codexexec.transport.forward import forward_stream

    configure_client_logging()

    async def serve(stream: MessageTransport) -> None:
        await forward_stream(stream, forward)

    auth = AuthOptions(remote, token_file, token_stdin, allow_agent_identity_auth)
    run_relay(remote, environment_id, auth, serve, cleartext=cleartext_relay)
