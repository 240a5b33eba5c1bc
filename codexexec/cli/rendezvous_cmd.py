"""`codexexec rendezvous`: the self-hosted environment registry and relay."""

from __future__ import annotations

import typer


def rendezvous(
    listen: str = typer.Option(
        "http://127.0.0.1:0", "--listen", help="http://IP:PORT to serve on (port 0 picks one)."
    ),
    token_file: str | None = typer.Option(
        None,
        "--token-file",
        help="Bearer tokens, one per line (TOKEN [executor|harness] [env,...]). Without it, "
        "a development token is created and its location printed.",
    ),
    db: str | None = typer.Option(
        None,
        "--db",
        help="Registry state: an SQLite file (default: rendezvous.sqlite3 in the state "
        "directory), or postgresql://USER@HOST:PORT/DB for several nodes sharing one registry.",
    ),
    bus: str | None = typer.Option(
        None,
        "--bus",
        help="nats://HOST:PORT of the NATS server joining this node to a cluster: harnesses "
        "on any node reach executors on any other (with --db postgresql://… shared by all).",
    ),
    agent_keys: str | None = typer.Option(
        None,
        "--agent-keys",
        help="Agents admitted by AgentAssertion, one per line "
        "(AGENT_RUNTIME_ID ED25519_PUBLIC_KEY [executor|harness|both] [env,...]).",
    ),
) -> None:
    """Register executors and relay harness streams to them (frames are never decrypted)."""
    from pathlib import Path

    from codexexec.cli.errors import fail
    from codexexec.rendezvous.options import RendezvousOptions
    from codexexec.rendezvous.service import parse_listen_url, run_rendezvous

    try:
        parse_listen_url(listen)
    except ValueError as exc:  # a usage error: exit 2, as everywhere
        fail(str(exc), 2)
    if bus is not None and not bus.startswith(("nats://", "tls://")):
        fail(f"--bus must be a nats:// URL, not `{bus}`", 2)
    options = RendezvousOptions(agent_keys=Path(agent_keys) if agent_keys else None, bus=bus)
    try:
        run_rendezvous(listen, Path(token_file) if token_file else None, db, options)
    except (OSError, ValueError, RuntimeError) as exc:
        fail(f"cannot run the rendezvous on {listen}: {exc}", 1)
