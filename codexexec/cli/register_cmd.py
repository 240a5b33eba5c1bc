"""`codexexec register --forward`: expose an existing exec-server through a registry."""

from __future__ import annotations

import typer


def register(
    remote: str = typer.Option(..., "--remote", help="Registry base URL."),
    environment_id: str = typer.Option(..., "--environment-id", help="Environment to register."),
    forward: str = typer.Option(
        ..., "--forward", help="ws:// URL of the exec-server (codexexec's or Codex's)."
    ),
    token_file: str | None = typer.Option(
        None, "--token-file", help="Bearer token file (else CODEXEXEC_REGISTRY_TOKEN)."
    ),
    cleartext_relay: bool = typer.Option(
        False,
        "--cleartext-relay",
        help="Register the unencrypted relay profile (the relay sees everything). "
        "The default is Noise, end to end.",
    ),
) -> None:
    """Forward each relay stream to its own websocket connection to FORWARD."""
    from codexexec.cli.remote_serve import run_relay
    from codexexec.logs import configure_client_logging
    from codexexec.transport.base import MessageTransport
    from codexexec.transport.forward import forward_stream

    configure_client_logging()

    async def serve(stream: MessageTransport) -> None:
        await forward_stream(stream, forward)

    run_relay(remote, environment_id, token_file, serve, cleartext=cleartext_relay)
