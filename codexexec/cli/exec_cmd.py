"""`codexexec exec`: run one command on an environment and mirror it here."""

from __future__ import annotations

import enum
from typing import Any

import typer

from codexexec.cli.completion import complete_environment


class SandboxMode(enum.StrEnum):
    read_only = "read-only"
    workspace_write = "workspace-write"
    danger_full_access = "danger-full-access"


class NetworkMode(enum.StrEnum):
    off = "off"
    proxy = "proxy"
    on = "on"


EXAMPLES = """\b
Examples:
  codexexec exec -- make test                    in this machine's sandbox
  codexexec exec --sandbox read-only -- ls -la   read, write nothing
  codexexec exec --env devbox --tty -- bash      an interactive shell there
  codexexec exec --network proxy --allow-domain pypi.org -- pip download x
  codexexec exec -e DEBUG=1 --timeout 60 -- ./run.sh
  codexexec exec --env devbox --detach -- ./long-job   (then: codexexec ps)"""

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


class Approval(enum.StrEnum):
    on_failure = "on-failure"
    never = "never"


def exec_command(
    argv: list[str] = typer.Argument(..., metavar="-- ARGV...", help="The command to run."),
    env: str | None = typer.Option(
        None,
        "--env",
        autocompletion=complete_environment,
        help="A configured environment (`codexexec env list`), local (in this process), an "
        "exec-server ws:// URL, or ENV@REGISTRY_URL. Default: the configured default, else local.",
    ),
    registry: str | None = typer.Option(
        None, "--registry", help="Registry URL: reach --env ID through its relay."
    ),
    cd: str | None = typer.Option(None, "--cd", help="Working directory on the executor host."),
    tty: bool = typer.Option(False, "--tty", help="Run in a pseudo-terminal; forward stdin."),
    detach: bool = typer.Option(
        False,
        "--detach",
        help="Print the process handle and return at once (for `read HANDLE`). A stdio "
        "environment's session is held by its keeper, which ends with the program or "
        "after CODEXEXEC_KEEPER_IDLE_TTL seconds (default 600) with no client attached.",
    ),
    json_mode: bool = typer.Option(False, "--json", help="Print JSON Lines events."),
    sandbox: SandboxMode | None = typer.Option(
        None,
        "--sandbox",
        show_default=False,
        help="What the command may touch; the executor enforces it with its own OS sandbox. "
        "Default: [defaults] sandbox in config.toml, else workspace-write.",
    ),
    writable_root: list[str] = typer.Option(
        [], "--writable-root", help="Another writable directory (repeatable)."
    ),
    deny_read: list[str] = typer.Option(
        [],
        "--deny-read",
        metavar="PATH|GLOB",
        help="Hide this path, or every file a glob (`**/*.env`, `~/.ssh`) matches when the "
        "command starts, from the sandboxed command: no reading, no writing (repeatable).",
    ),
    profile: str | None = typer.Option(
        None,
        "--profile",
        metavar="FILE",
        help="A permission profile in Codex's [permissions] TOML shape, in place of "
        "--sandbox's (default_permissions picks one when the file has several); "
        "--network on or off overrides its network setting.",
    ),
    deny_write: list[str] = typer.Option(
        [],
        "--deny-write",
        metavar="PATH",
        help="Keep this path read-only inside a writable root (repeatable).",
    ),
    network: NetworkMode | None = typer.Option(
        None,
        "--network",
        help="off: no network (default under a sandbox); proxy: only through the executor's "
        "managed proxy, with its domain policy; on: unrestricted. [defaults] network in "
        "config.toml sets another default.",
    ),
    allow_domain: list[str] = typer.Option(
        [], "--allow-domain", help="With --network proxy: a domain (wildcards ok) to allow."
    ),
    deny_domain: list[str] = typer.Option(
        [], "--deny-domain", help="With --network proxy: a domain to deny (deny wins)."
    ),
    ask_domains: bool = typer.Option(
        False, "--ask-domains", help="With --network proxy: ask about domains in neither list."
    ),
    allow_local: bool = typer.Option(
        False,
        "--allow-local",
        help="With --network proxy: allow loopback (localhost, 127.0.0.1, ::1), and private "
        "addresses named with --allow-domain.",
    ),
    set_env: list[str] = typer.Option(
        [],
        "-e",
        "--setenv",
        metavar="KEY=VAL",
        help="Set a variable for the command (repeatable; KEY alone passes this shell's "
        "value). Not --env, which names the environment to run on.",
    ),
    env_file: list[str] = typer.Option(
        [],
        "--env-file",
        metavar="FILE",
        help="Variables for the command, a KEY=VAL a line (# comments), as docker reads them.",
    ),
    timeout: float | None = typer.Option(
        None,
        "--timeout",
        metavar="SECONDS",
        min=0.001,
        help="End the command after this long (interrupt, then terminate); exit 124.",
    ),
    idle_timeout: float | None = typer.Option(
        None,
        "--idle-timeout",
        metavar="SECONDS",
        min=0.001,
        help="End the command after this long without output; exit 124.",
    ),
    token_file: str | None = typer.Option(
        None,
        "--token-file",
        metavar="FILE",
        help="Registry bearer token for an ENV@REGISTRY_URL or --registry target "
        "(else CODEXEXEC_REGISTRY_TOKEN).",
    ),
    approval: Approval | None = typer.Option(
        None,
        "--approval",
        help="on-failure: offer to re-run a sandbox-denied command without the sandbox "
        "(default when stdin is a terminal); never: just report the denial. [defaults] "
        "approval in config.toml sets another default.",
    ),
) -> None:
    """Run ARGV on an environment; exit with its exit code."""
    import asyncio

    from codexexec.logs import configure_client_logging

    configure_client_logging()
    import sys

    from codexexec.cli.errors import fail
    from codexexec.cli.session import ExecOptions, run_exec

    if registry is not None:
        if env is None:
            fail("--registry needs --env ID (the environment's id at that registry)", 2)
        env = f"{env}@{registry}"
    if detach and (timeout is not None or idle_timeout is not None):
        fail("--timeout and --idle-timeout end a command this CLI follows; not with --detach", 2)
    sandbox_flag, network_flag = sandbox, network
    sandbox, approval, network = _with_defaults(sandbox, approval, network)
    interactive = sys.stdin.isatty() and not json_mode
    if approval is None:
        approval = Approval.on_failure if interactive else Approval.never
    if network is None:
        network = (
            NetworkMode.off if sandbox is not SandboxMode.danger_full_access else NetworkMode.on
        )
    profile_json = None
    if profile is not None:
        profile_json = _read_profile(profile)
        if sandbox_flag is SandboxMode.danger_full_access:  # a default gives way to it
            fail("--profile replaces --sandbox; give one of them", 2)
        # An explicit --network on or off wins over the profile's own network setting.
        if network_flag in (NetworkMode.on, NetworkMode.off):
            profile_json["network"] = "enabled" if network_flag is NetworkMode.on else "restricted"
    if (deny_read or deny_write) and sandbox is SandboxMode.danger_full_access:
        fail("--deny-read and --deny-write need a sandbox (read-only or workspace-write)", 2)
    if deny_write:
        from codexexec.sandbox.policy import SandboxPolicyError, deny_entries

        try:
            deny_entries((), deny_write, lambda path: path, lambda rest: rest)
        except SandboxPolicyError as exc:
            fail(str(exc), 2)
    proxy_flags = bool(allow_domain or deny_domain or ask_domains or allow_local)
    if proxy_flags and network is not NetworkMode.proxy:
        fail(
            "--allow-domain, --deny-domain, --ask-domains and --allow-local need --network proxy", 2
        )
    network_proxy = None
    if network is NetworkMode.proxy:
        from codexexec.client.client import NetworkProxyRequest

        network_proxy = NetworkProxyRequest(
            # --allow-local means what it says: loopback is reachable without listing it
            # (the policy only lifts its local-address block; other hosts still need
            # --allow-domain, and the report says so).
            tuple(allow_domain) + (LOOPBACK_NAMES if allow_local else ()),
            tuple(deny_domain),
            allow_local,
            ask_domains,
        )
    variables = _variables(env_file, set_env)
    options = ExecOptions(
        argv=argv,
        cwd=cd,
        tty=tty,
        detach=detach,
        json_mode=json_mode,
        sandbox=sandbox.value,
        writable_roots=writable_root,
        # Only a person at a terminal may approve: piped input is the command's data, and
        # must never answer "run it again without the sandbox".
        ask=approval is Approval.on_failure and interactive,
        network=network is NetworkMode.on,
        network_proxy=network_proxy,
        deny_read=tuple(deny_read),
        deny_write=tuple(deny_write),
        profile=profile_json,
        env=variables or None,
        timeout=timeout,
        idle_timeout=idle_timeout,
        token_file=token_file,
    )
    from codexexec.client import notices

    if sys.stderr.isatty():
        notices.waiting.set(lambda text: print(f"codexexec: {text}…", file=sys.stderr))
    notices.connection.set(lambda text: print(f"codexexec: {text}", file=sys.stderr, flush=True))
    # bubblewrap orphans (orphans.py) come from a sandbox on this machine: the in-process
    # server's, or that of a stdio environment's server, which is our child. A websocket or
    # registry target starts no process here.
    from codexexec.cli.targets import is_literal

    in_process = env is None or env == "local" or not is_literal(env)
    if in_process:
        from codexexec.cli.orphans import adopt_orphans

        adopt_orphans()
    try:
        code = asyncio.run(run_exec(env, options))
    except KeyboardInterrupt:
        code = 130
    finally:
        if in_process:
            from codexexec.cli.orphans import reap_orphans

            reap_orphans()
    raise SystemExit(code)


def _with_defaults(
    sandbox: SandboxMode | None, approval: Approval | None, network: NetworkMode | None
) -> tuple[SandboxMode, Approval | None, NetworkMode | None]:
    """Flags first, then `[defaults]` in config.toml (read only when a flag is missing)."""
    if sandbox is not None and approval is not None and network is not None:
        return sandbox, approval, network
    from codexexec.cli.defaults import DefaultsError, load_defaults
    from codexexec.cli.errors import fail

    try:
        defaults = load_defaults()
    except DefaultsError as exc:
        fail(str(exc), 2)
    if sandbox is None:
        sandbox = SandboxMode(defaults.get("sandbox", SandboxMode.workspace_write.value))
    if approval is None and "approval" in defaults:
        approval = Approval(defaults["approval"])
    if network is None and "network" in defaults:
        network = NetworkMode(defaults["network"])
    return sandbox, approval, network


def _variables(files: list[str], flags: list[str]) -> dict[str, str]:
    import os

    from codexexec.cli.env_vars import EnvVarError, parse_settings
    from codexexec.cli.errors import fail

    texts = []
    for path in files:
        try:
            with open(path, encoding="utf-8") as handle:
                texts.append((path, handle.read()))
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            fail(f"cannot read the env file {path}: {reason}", 2)
    try:
        return parse_settings(texts, flags, os.environ)
    except EnvVarError as exc:
        fail(str(exc), 2)


def _read_profile(path: str) -> dict[str, Any]:
    """`--profile FILE` as PermissionProfile JSON; one line and exit 2 when it is not one."""
    import tomllib

    from codexexec.cli.errors import fail
    from codexexec.protocol.path_uri import PathUri
    from codexexec.sandbox.policy import SandboxPolicyError
    from codexexec.sandbox.profile_file import choose, profile_json

    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
        name, table = choose(document, path)
        return profile_json(
            table, lambda native: str(PathUri.from_host_native_path(native)), f"permissions.{name}"
        )
    except OSError as exc:
        fail(f"cannot read the profile {path}: {exc.strerror or exc}", 2)
    except tomllib.TOMLDecodeError as exc:
        fail(f"the profile {path} is not valid TOML: {exc}", 2)
    except SandboxPolicyError as exc:
        fail(f"the profile {path}: {exc}", 2)
