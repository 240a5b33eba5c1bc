"""`codexexec login status`: which credential would register an executor, and from where."""

from __future__ import annotations

import typer

from codexexec.cli.auth_options import ALLOW_AGENT_IDENTITY, TOKEN_FILE

app = typer.Typer(
    help="Registry credentials: Codex's login, Agent Identity, registry tokens.",
    no_args_is_help=True,
)


@app.command("status")
def status(
    remote: str = typer.Option(
        "", "--remote", help="The registry the credential is for (as given to serve --remote)."
    ),
    token_file: str | None = TOKEN_FILE,
    allow_agent_identity_auth: bool = ALLOW_AGENT_IDENTITY,
) -> None:
    """Show the credential `serve --remote` would use and its source (never the secret)."""
    import sys
    import time

    from codexexec.cli.errors import fail
    from codexexec.remote.auth.agent_identity import AgentIdentityAuth
    from codexexec.remote.auth.base import AuthError
    from codexexec.remote.auth.chatgpt import ChatGPTAuth
    from codexexec.remote.auth.resolve import AuthOptions, resolve_registration_auth

    def notice(text: str) -> None:
        sys.stderr.write(f"codexexec: {text}\n")

    options = AuthOptions(remote, token_file, False, allow_agent_identity_auth)
    try:
        provider = resolve_registration_auth(options, notice)
    except AuthError as exc:
        fail(str(exc), 1)
    print(f"registration credential: {provider.description}")
    expires = None
    if isinstance(provider, ChatGPTAuth | AgentIdentityAuth):
        expires = provider.expires_at()
    if expires is not None:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
        left = expires - time.time()
        if left > 0:
            print(f"expires: {when} (in {int(left // 60)} min)")
        elif isinstance(provider, ChatGPTAuth) and provider.can_refresh:
            print(f"expired: {when}; the refresh token renews it on first use")
        else:
            print(f"expired: {when}")
