"""`codexexec env`: list, check and import environments."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="env",
    help="The environments in codexexec's environments.toml (and `local`).",
    no_args_is_help=True,
)


@app.command("list")
def list_environments(
    json_mode: bool = typer.Option(False, "--json", help="One JSON object per environment."),
) -> None:
    """Each environment's id, kind, target, state and connect latency.

    Websocket and registry environments are connected (all at once, each bounded by its
    own timeouts); stdio environments are not spawned just to be listed.
    """
    import asyncio

    from codexexec.logs import configure_client_logging

    configure_client_logging()
    raise SystemExit(asyncio.run(_list(json_mode)))


async def _list(json_mode: bool) -> int:
    import asyncio

    from codexexec.cli.errors import fail
    from codexexec.cli.render import emit_json
    from codexexec.cli.spinner import spinner
    from codexexec.cli.targets import load_environments
    from codexexec.client.errors import ExecServerError
    from codexexec.environments.connect import load_transport_code
    from codexexec.environments.manager import EnvironmentManager
    from codexexec.environments.probe import wait_for_state

    config = load_environments()
    try:
        manager = EnvironmentManager.from_config(config)
    except ExecServerError as exc:
        fail(str(exc))
    try:
        environments = manager.environments()
        # Every connection's code is loaded before the first one starts (the background
        # starts have not run yet): one environment's first import must not be timed as
        # another's latency.
        for environment in environments:
            load_transport_code(None if environment.kind == "local" else environment.spec)
        async with spinner(f"connecting to {len(environments)} environments"):
            probes = await asyncio.gather(*(wait_for_state(e) for e in environments))
        rows: list[dict[str, object]] = []
        for probe in probes:
            environment = probe.environment
            latency = probe.latency
            row: dict[str, object] = {
                "id": environment.id,
                "kind": environment.kind,
                "target": environment.spec.target,
                "state": environment.status().value,
                "latencyMs": round(latency * 1000, 1) if latency is not None else None,
                "default": environment.id == config.default,
                "error": environment.error(),
            }
            if json_mode:
                emit_json(row)
            rows.append(row)
        if not json_mode:
            _print_table(rows, config.describe_source())
    finally:
        await manager.aclose()
    return 0


def _print_table(rows: list[dict[str, object]], source: str) -> None:
    table = [["ID", "KIND", "TARGET", "STATE", "LATENCY"]]
    for row in rows:
        latency = row["latencyMs"]
        state = str(row["state"])
        if row["kind"] == "stdio" and state == "pending":
            state = "pending (starts on use)"
        table.append(
            [
                f"{row['id']}{' *' if row['default'] else ''}",
                str(row["kind"]),
                str(row["target"]),
                state,
                f"{latency:.1f} ms" if latency is not None else "-",
            ]
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        typer.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )
    for row in rows:
        if row["error"]:
            typer.echo(f"{row['id']}: {row['error']}")
    typer.echo(f"(* default; {source})")


@app.command("check")
def check_environment(
    name: str = typer.Argument(..., help="A configured environment, local, ws://… or ENV@URL."),
    json_mode: bool = typer.Option(False, "--json", help="The result as one JSON object."),
) -> None:
    """Connect, initialize and ask `environment/info`, with each step's time."""
    import asyncio

    from codexexec.logs import configure_client_logging

    configure_client_logging()
    raise SystemExit(asyncio.run(_check(name, json_mode)))


async def _check(name: str, json_mode: bool) -> int:
    from codexexec.cli.errors import EXIT_FAILURE, fail
    from codexexec.cli.render import emit_json
    from codexexec.cli.spinner import spinner
    from codexexec.cli.targets import chosen_environment
    from codexexec.environments.probe import check

    async with chosen_environment(name) as environment:
        async with spinner(f"checking {environment.id}"):
            probe = await check(environment)
        if json_mode:
            emit_json(
                {
                    "id": environment.id,
                    "kind": environment.kind,
                    "target": environment.spec.target,
                    "ok": probe.ok,
                    "stepsMs": {k: round(v * 1000, 2) for k, v in probe.steps.items()},
                    "info": probe.info,
                    "error": probe.error,
                }
            )
            return 0 if probe.ok else EXIT_FAILURE
        typer.echo(f"{environment.id} ({environment.kind}, {environment.spec.target})")
        for step, seconds in probe.steps.items():
            typer.echo(f"  {step:<18}{seconds * 1000:8.1f} ms")
        if probe.error is not None:
            fail(probe.error)
        typer.echo(f"  {_describe(probe.info or {})}")
        typer.echo(f"ready in {sum(probe.steps.values()) * 1000:.1f} ms")
    return 0


def _describe(info: dict[str, object]) -> str:
    shell = info.get("shell")
    parts = []
    if isinstance(shell, dict):
        parts.append(f"shell {shell.get('name')} ({shell.get('path')})")
    for key, label in (("cwd", "cwd"), ("platformOs", "os"), ("executorVersion", "executor")):
        if info.get(key):
            parts.append(f"{label} {info[key]}")
    return ", ".join(parts) or "no environment details"


@app.command("import")
def import_environments(
    codex_home: str | None = typer.Option(
        None, "--codex-home", help="Codex's home (default: $CODEX_HOME, else ~/.codex)."
    ),
) -> None:
    """Copy the environments of a Codex CODEX_HOME into codexexec's environments.toml."""
    from pathlib import Path

    from codexexec.cli.errors import fail
    from codexexec.environments.config import EnvironmentConfigError, config_path
    from codexexec.environments.config import codex_home as default_codex_home
    from codexexec.environments.importer import import_codex_environments

    source = Path(codex_home) if codex_home else default_codex_home()
    try:
        imported = import_codex_environments(source, config_path())
    except EnvironmentConfigError as exc:
        fail(str(exc))
    names = ", ".join(imported.ids) or "none"
    typer.echo(f"imported {len(imported.ids)} environments ({names}) into {imported.destination}")
    if imported.codex_default is not None:
        typer.echo(
            f"Codex's default is `{imported.codex_default}`; to use it here too, put "
            f'default = "{imported.codex_default}" at the top of {imported.destination}'
        )
