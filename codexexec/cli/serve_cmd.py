"""`codexexec serve`: run an exec-server on a websocket or stdio."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import typer

from codexexec.cli.auth_options import (
    ALLOW_AGENT_IDENTITY,
    CHATGPT_ACCOUNT_ID,
    CHATGPT_TOKEN_STDIN,
    CLEARTEXT_RELAY,
    EXECUTOR_CREDENTIAL_STDIN,
    TOKEN_FILE,
    TOKEN_STDIN,
    credential_conflict,
)
from codexexec.protocol.limits import DEFAULT_DETACHED_SESSION_TTL_SECONDS

if TYPE_CHECKING:
    from codexexec.sandbox.floor import Floor, FloorMode, PidNamespace, SandboxSettings


def serve(
    listen: str = typer.Option(
        "ws://127.0.0.1:0", "--listen", help="ws://IP:PORT (port 0 picks one) or stdio."
    ),
    detached_session_ttl: float = typer.Option(
        DEFAULT_DETACHED_SESSION_TTL_SECONDS,
        "--detached-session-ttl",
        min=0.0,
        help="Seconds a disconnected session keeps its processes for a client to resume.",
    ),
    concurrent_requests: int = typer.Option(
        1,
        "--concurrent-requests",
        min=1,
        max=64,
        help="Requests processed at once per connection (Codex's default is 1).",
    ),
    network_policy: str | None = typer.Option(
        None,
        "--network-policy",
        help="TOML policy for the managed network proxy: denials always apply, "
        "allows and local access are the default for requests that bring none.",
    ),
    proxy_private_ips_via_upstream: bool = typer.Option(
        False,
        "--proxy-private-ips-via-upstream",
        help="Allow permitted private IP destinations to use the configured upstream proxy "
        "(the network policy's upstream_proxy). Loopback stays local. Also "
        "CODEX_EXEC_SERVER_PROXY_PRIVATE_IPS_VIA_UPSTREAM=true.",
    ),
    remote: str | None = typer.Option(
        None, "--remote", help="Register with this registry and serve through its relay."
    ),
    environment_id: str | None = typer.Option(
        None, "--environment-id", help="With --remote: the environment to register as."
    ),
    token_file: str | None = TOKEN_FILE,
    token_stdin: bool = TOKEN_STDIN,
    executor_credential_stdin: bool = EXECUTOR_CREDENTIAL_STDIN,
    chatgpt_token_stdin: bool = CHATGPT_TOKEN_STDIN,
    chatgpt_account_id: str | None = CHATGPT_ACCOUNT_ID,
    allow_agent_identity_auth: bool = ALLOW_AGENT_IDENTITY,
    cleartext_relay: bool = CLEARTEXT_RELAY,
    security_profile: str = typer.Option(
        "noise_hybrid_ik_v1",
        "--security-profile",
        help="With --remote: noise_hybrid_ik_v1 (Codex's, X25519+ML-KEM-768) or noise_ik_v1 "
        "(classic X25519 Noise IK, for harnesses without ML-KEM).",
    ),
    noise_identity_file: str | None = typer.Option(
        None,
        "--noise-identity-file",
        help="With --remote: keep the executor's Noise key here (created 0600 if missing) "
        "instead of a fresh one per start.",
    ),
    ws_auth: str | None = typer.Option(
        None,
        "--ws-auth",
        metavar="MODE",
        help="Authentication mode for incoming WebSocket connections: capability-token or "
        "signed-bearer-token.",
    ),
    ws_token_file: str | None = typer.Option(
        None, "--ws-token-file", metavar="PATH", help="Path to the capability-token file."
    ),
    ws_token_sha256: str | None = typer.Option(
        None,
        "--ws-token-sha256",
        metavar="HEX",
        help="Hex-encoded SHA-256 digest of the capability token.",
    ),
    ws_shared_secret_file: str | None = typer.Option(
        None,
        "--ws-shared-secret-file",
        metavar="PATH",
        help="Path to the shared secret file for signed JWT bearer tokens (HS256).",
    ),
    ws_issuer: str | None = typer.Option(
        None, "--ws-issuer", help="Expected issuer for signed JWT bearer tokens."
    ),
    ws_audience: str | None = typer.Option(
        None, "--ws-audience", help="Expected audience for signed JWT bearer tokens."
    ),
    ws_max_clock_skew_seconds: int | None = typer.Option(
        None,
        "--ws-max-clock-skew-seconds",
        metavar="SECONDS",
        help="Maximum clock skew when validating signed JWT bearer tokens (default 30).",
    ),
    exit_on_stdin_close: bool = typer.Option(
        False,
        "--exit-on-stdin-close",
        help="With --remote: exit when the parent-owned standard-input pipe closes "
        "(also CODEX_EXEC_SERVER_EXIT_ON_STDIN_CLOSE=true).",
    ),
    name: str | None = typer.Option(
        None, "--name", metavar="NAME", help="Human-readable environment name."
    ),
    sandbox_floor: str | None = typer.Option(
        None,
        "--sandbox-floor",
        metavar="read-only|workspace-write",
        help="The least confinement this executor applies, whatever a client asks (an "
        "unsandboxed request included).",
    ),
    sandbox_floor_mode: str = typer.Option(
        "raise",
        "--sandbox-floor-mode",
        metavar="raise|refuse",
        help="A request below the floor is raised to it (default) or refused.",
    ),
    linux_sandbox_pid_namespace: str = typer.Option(
        "isolate",
        "--linux-sandbox-pid-namespace",
        metavar="MODE",
        help="Linux PID namespace: isolate (default) or inherit. Inherit allows signals to "
        "other same-UID processes; enable only when provisioning a dedicated environment.",
    ),
    metrics_listen: str | None = typer.Option(
        None,
        "--metrics-listen",
        metavar="http://IP:PORT",
        help="Answer GET /metrics (Prometheus) here too; a websocket listener answers it on "
        "its own port already.",
    ),
    audit_log: str | None = typer.Option(
        None,
        "--audit-log",
        metavar="FILE",
        help="Append one JSON line per process start and end, fs write and http/request "
        "(fsync'ed; rotated at 64 MiB, 5 kept); never environment values, bodies or output.",
    ),
    insecure_no_auth: bool = typer.Option(
        False,
        "--insecure-no-auth",
        help="Listen on a non-loopback address without websocket authentication (anyone who "
        "reaches the port can run commands as this user).",
    ),
    log_level: str = typer.Option("warning", "--log-level", help="debug, info, warning, error."),
) -> None:
    """Serve the exec-server protocol; the first stdout line is the bound URL."""
    import asyncio
    import os
    import sys

    from codexexec.cli.errors import fail
    from codexexec.logs import configure_logging
    from codexexec.server.app import ExecServer
    from codexexec.server.listener import run_server, validate_listen_url
    from codexexec.server.secrets import forget_secrets_in_environment
    from codexexec.transport.ws_auth import WsAuthArgs, WsAuthError, configure, load_policy
    from codexexec.transport.ws_listen import CONNECTION_TOKEN_ENV, ListenUrlError

    try:
        validate_listen_url(listen)
    except ListenUrlError as exc:
        fail(str(exc), 2)
    ws_args = WsAuthArgs(
        ws_auth,
        ws_token_file,
        ws_token_sha256,
        ws_shared_secret_file,
        ws_issuer,
        ws_audience,
        ws_max_clock_skew_seconds,
    )
    try:
        ws_settings = configure(ws_args)
        auth = None if ws_settings is None else load_policy(ws_settings)
    except WsAuthError as exc:
        fail(str(exc), 2 if exc.usage else 1)
    if remote is None and listen not in ("stdio", "stdio://") and not insecure_no_auth:
        from codexexec.transport.ws_auth import unauthenticated_refusal
        from codexexec.transport.ws_listen import parse_ws_listen_url

        address = parse_ws_listen_url(listen)
        refusal = unauthenticated_refusal(
            address.host,
            address.port,
            authenticated=auth is not None or bool(os.environ.get(CONNECTION_TOKEN_ENV)),
        )
        if refusal is not None:
            fail(refusal, 1)
    configure_logging(log_level, secrets=[os.environ.get(CONNECTION_TOKEN_ENV, "")])

    def on_ready(url: str) -> None:
        forget_secrets_in_environment()  # read by now; no helper or child inherits them
        if url != "stdio":
            sys.stdout.write(url + "\n")
            sys.stdout.flush()

    baseline = None
    if network_policy is not None:
        from codexexec.network.policy import NetworkPolicyError, parse_policy_file

        try:
            baseline = parse_policy_file(network_policy)
        except NetworkPolicyError as exc:
            fail(str(exc), 2)
    sandbox_settings = _sandbox_settings(
        sandbox_floor, sandbox_floor_mode, linux_sandbox_pid_namespace
    )
    audit = None
    if audit_log is not None:
        from pathlib import Path

        from codexexec.server.audit import AuditLog

        try:
            audit = AuditLog(Path(audit_log))
        except OSError as exc:
            fail(f"cannot open the audit log {audit_log}: {exc.strerror or exc}", 1)
    metrics = None
    if metrics_listen is not None or (remote is None and listen not in ("stdio", "stdio://")):
        from codexexec.server.metrics import ServerMetrics

        if metrics_listen is not None:
            from codexexec.server.metrics_http import MetricsListenError, parse_metrics_url

            try:
                parse_metrics_url(metrics_listen)
            except MetricsListenError as exc:
                fail(str(exc), 2)
        metrics = ServerMetrics()
    server = ExecServer(
        detached_session_ttl=detached_session_ttl,
        concurrent_requests=concurrent_requests,
        network_policy=baseline,
        proxy_private_ips_via_upstream=proxy_private_ips_via_upstream
        or _env_flag(
            "CODEX_EXEC_SERVER_PROXY_PRIVATE_IPS_VIA_UPSTREAM", "--proxy-private-ips-via-upstream"
        ),
        sandbox=sandbox_settings,
        audit=audit,
        metrics=metrics,
    )
    exit_on_stdin_close = exit_on_stdin_close or _env_flag(
        "CODEX_EXEC_SERVER_EXIT_ON_STDIN_CLOSE", "--exit-on-stdin-close"
    )
    if remote is None and environment_id is not None:
        fail("--environment-id names the environment to register as: it needs --remote", 2)
    if exit_on_stdin_close and (remote is None or not environment_id):
        fail("--exit-on-stdin-close needs --remote and --environment-id", 2)
    conflict = credential_conflict(
        token_file, token_stdin, executor_credential_stdin, chatgpt_token_stdin, chatgpt_account_id
    )
    if conflict is not None:
        fail(conflict, 2)
    stdin_credential = token_stdin or executor_credential_stdin or chatgpt_token_stdin
    if stdin_credential and (remote is None or not environment_id):
        fail("a registration credential on stdin needs --remote and --environment-id", 2)
    if remote is not None:
        if not environment_id:
            fail("--remote needs --environment-id", 2)
        from codexexec.cli.remote_serve import run_relay
        from codexexec.remote.auth.resolve import AuthOptions
        from codexexec.transport.base import MessageTransport
        from codexexec.transport.relay import RELAY_MALFORMED_PREFIX

        async def serve_stream(stream: MessageTransport) -> None:
            await server.serve(stream, malformed_prefix=RELAY_MALFORMED_PREFIX)

        run_relay(
            remote,
            environment_id,
            AuthOptions(
                remote,
                token_file,
                token_stdin,
                allow_agent_identity_auth,
                chatgpt_token_stdin=chatgpt_token_stdin,
                chatgpt_account_id=chatgpt_account_id,
                executor_credential_stdin=executor_credential_stdin,
            ),
            serve_stream,
            server.aclose,
            cleartext=cleartext_relay,
            profile=security_profile,
            identity_file=noise_identity_file,
            exit_on_stdin_close=exit_on_stdin_close,
            name=name,
            metrics=metrics,
            metrics_listen=metrics_listen,
        )
        return
    try:
        asyncio.run(
            run_server(server, listen, on_ready=on_ready, auth=auth, metrics_listen=metrics_listen)
        )
    except OSError as exc:
        fail(f"cannot listen on {listen}: {exc.strerror or exc}", 1)


def _env_flag(variable: str, flag: str) -> bool:
    """A boolean flag's environment variable, read as Codex's parser reads it: `true` or
    `false`, anything else refused."""
    import os

    from codexexec.cli.errors import fail

    value = os.environ.get(variable)
    if value is None or value == "false":
        return False
    if value == "true":
        return True
    if value == "":
        fail(
            f"a value is required for '{flag}' but none was supplied "
            "[possible values: true, false]",
            2,
        )
    fail(f"invalid value '{value}' for '{flag}' [possible values: true, false]", 2)


def _sandbox_settings(floor: str | None, mode: str, pid_namespace: str) -> SandboxSettings:
    from codexexec.cli.errors import fail
    from codexexec.sandbox.floor import SandboxSettings

    choices = (
        ("--sandbox-floor", floor, ("read-only", "workspace-write")),
        ("--sandbox-floor-mode", mode, ("raise", "refuse")),
        ("--linux-sandbox-pid-namespace", pid_namespace, ("isolate", "inherit")),
    )
    for flag, value, allowed in choices:
        if value is not None and value not in allowed:
            fail(f"invalid value '{value}' for '{flag}' [possible values: {', '.join(allowed)}]", 2)
    return SandboxSettings(
        cast("Floor | None", floor), cast("FloorMode", mode), cast("PidNamespace", pid_namespace)
    )
