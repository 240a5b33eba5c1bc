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
    False,
    "--token-stdin",
    "--registration-bearer-stdin",
    help="Read the registry bearer token from one line of stdin.",
)
ALLOW_AGENT_IDENTITY = typer.Option(
    False,
    "--allow-agent-identity-auth",
    "--use-agent-identity-auth",
    help="Register with the Agent Identity in CODEX_ACCESS_TOKEN (ignored without this flag).",
)
CLEARTEXT_RELAY = typer.Option(
    False,
    "--cleartext-relay",
    help="Register the unencrypted relay profile (the relay sees everything). "
    "The default is Noise, end to end.",
)
EXECUTOR_CREDENTIAL_STDIN = typer.Option(
    False,
    "--executor-credential-stdin",
    help="Read rotating executor credentials from stdin (one JSON frame a line); exit when "
    "the pipe closes.",
)
CHATGPT_TOKEN_STDIN = typer.Option(
    False,
    "--chatgpt-token-stdin",
    help="Read a ChatGPT access token from stdin for HTTPS registration.",
)
CHATGPT_ACCOUNT_ID = typer.Option(
    None,
    "--chatgpt-account-id",
    metavar="ID",
    help="ChatGPT account ID. Must match the token's account claim when present.",
)


def credential_conflict(
    token_file: str | None,
    token_stdin: bool,
    executor_credential_stdin: bool,
    chatgpt_token_stdin: bool,
    chatgpt_account_id: str | None,
) -> str | None:
    """Why these registration credential flags cannot go together (Codex's texts), or None."""
    chosen = [
        flag
        for flag, given in (
            ("--token-file", token_file is not None),
            ("--registration-bearer-stdin", token_stdin),
            ("--executor-credential-stdin", executor_credential_stdin),
            ("--chatgpt-token-stdin", chatgpt_token_stdin),
        )
        if given
    ]
    if len(chosen) > 1:
        return f"the argument '{chosen[-1]}' cannot be used with '{chosen[0]}'"
    if chatgpt_account_id is not None and not chatgpt_token_stdin:
        return "the following required arguments were not provided: --chatgpt-token-stdin"
    return None
