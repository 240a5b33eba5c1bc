"""Drive a real Codex 0.169.0 harness (`codex app-server`) through one turn on an environment.

No model is involved: a scripted stand-in for the Responses API on loopback answers the
first request with an `exec_command` function call whose `cmd` the test chooses, and the
follow-up (carrying the `function_call_output`) with a short assistant message. The harness
runs the command on the environment given in its `thread/start` — a websocket URL from
`environments.toml`, or a Noise environment from the CODEX_EXEC_SERVER_NOISE_* variables
(environment id `remote`) — exactly as verified-codex-0.169.md §6.3 records.

    result = await run_codex_turn(UrlEnvironment(server.url), "echo hello; exit 3")
    result.command.aggregated_output == "hello\\n"; result.command.exit_code == 3

For a URL environment the harness's exec-server traffic passes a recording websocket proxy,
so `result.exec_server_calls` lists every request the harness made (method and params).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tests.servers import codex_binary

TURN_TIMEOUT_SECONDS = 120.0
_STDERR_TAIL_BYTES = 64 * 1024


@dataclass(frozen=True)
class UrlEnvironment:
    """An exec-server the harness reaches at a websocket URL (an `environments.toml` entry)."""

    url: str
    environment_id: str = "devbox"
    record: bool = True  # route through the recording proxy
    bearer: str | None = None  # sent as `auth_bearer_token` (Codex 0.169's field)


@dataclass(frozen=True)
class NoiseEnvironment:
    """An executor the harness reaches through a registry and rendezvous, end-to-end Noise."""

    registry_url: str
    environment_id: str
    auth_token: str

    def env(self) -> dict[str, str]:
        return {
            "CODEX_EXEC_SERVER_NOISE_REGISTRY_URL": self.registry_url,
            "CODEX_EXEC_SERVER_NOISE_ENVIRONMENT_ID": self.environment_id,
            "CODEX_EXEC_SERVER_NOISE_AUTH_TOKEN": self.auth_token,
        }


@dataclass(frozen=True)
class FunctionCall:
    """The tool call the scripted model makes; a bare string command means `exec_command`."""

    name: str
    arguments: dict[str, Any]
    namespace: str | None = None  # e.g. "mcp__<server>" for an MCP tool

    def item(self, call_id: str) -> dict[str, Any]:
        item = {
            "type": "function_call",
            "call_id": call_id,
            "name": self.name,
            "arguments": json.dumps(self.arguments),
        }
        if self.namespace is not None:
            item["namespace"] = self.namespace
        return item


def exec_command(cmd: str) -> FunctionCall:
    return FunctionCall("exec_command", {"cmd": cmd})


@dataclass
class CommandExecution:
    command: str
    aggregated_output: str | None
    exit_code: int | None
    status: str
    item: dict[str, Any]


@dataclass
class TurnResult:
    turn_status: str
    commands: list[CommandExecution]
    notifications: list[dict[str, Any]]
    model_requests: list[dict[str, Any]]  # bodies the fake Responses endpoint received
    exec_server_calls: list[dict[str, Any]] = field(default_factory=list)
    exec_server_replies: list[dict[str, Any]] = field(default_factory=list)
    stderr_tail: str = ""

    @property
    def command(self) -> CommandExecution:
        assert len(self.commands) == 1, self.summary()
        return self.commands[0]

    def items(self, item_type: str) -> list[dict[str, Any]]:
        """Completed turn items of one type (`commandExecution`, `mcpToolCall`, …)."""
        return [
            n["params"]["item"]
            for n in self.notifications
            if n.get("method") == "item/completed" and n["params"]["item"].get("type") == item_type
        ]

    def function_call_output(self) -> str:
        """What the harness sent back to the model for its tool call."""
        for request in self.model_requests:
            for item in request.get("input", []):
                if isinstance(item, dict) and item.get("type") == "function_call_output":
                    output = item.get("output")
                    return output if isinstance(output, str) else json.dumps(output)
        raise AssertionError(f"the harness never answered the model's call: {self.summary()}")

    def methods_called(self) -> list[str]:
        return [c["method"] for c in self.exec_server_calls if "method" in c]

    def summary(self) -> str:
        """What happened, for an assertion message."""
        methods = ", ".join(self.methods_called()) or "none recorded"
        errors = [r for r in self.exec_server_replies if "error" in r]
        return (
            f"turn {self.turn_status}; {len(self.commands)} command(s); exec-server calls: "
            f"{methods}; error replies: {errors}; stderr tail:\n{self.stderr_tail[-4000:]}"
        )


# -- the scripted Responses endpoint --------------------------------------------------


def _sse(events: list[dict[str, Any]]) -> str:
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)


def _completed(response_id: str) -> dict[str, Any]:
    usage = {
        "input_tokens": 0,
        "input_tokens_details": None,
        "output_tokens": 0,
        "output_tokens_details": None,
        "total_tokens": 0,
    }
    return {"type": "response.completed", "response": {"id": response_id, "usage": usage}}


class FakeResponses:
    """POST /v1/responses: first the scripted tool call, then (after its output) a message."""

    def __init__(self, call: FunctionCall) -> None:
        self.call = call
        self.requests: list[dict[str, Any]] = []
        self._ids = itertools.count(1)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        response_id = f"resp_{next(self._ids)}"
        answered = any(
            isinstance(item, dict) and item.get("type") == "function_call_output"
            for item in body.get("input", [])
        )
        if answered:
            output = {
                "type": "message",
                "role": "assistant",
                "id": f"msg_{response_id}",
                "content": [{"type": "output_text", "text": "done"}],
            }
        else:
            output = self.call.item("call_1")
        events = [
            {"type": "response.created", "response": {"id": response_id}},
            {"type": "response.output_item.done", "item": output},
            _completed(response_id),
        ]
        return web.Response(text=_sse(events), content_type="text/event-stream")


@contextlib.asynccontextmanager
async def _fake_responses(call: FunctionCall) -> AsyncIterator[tuple[FakeResponses, str]]:
    fake = FakeResponses(call)
    app = web.Application()
    app.router.add_post("/v1/responses", fake.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield fake, f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


# -- the recording websocket proxy ------------------------------------------------------


class RecordingProxy:
    """Passes one harness's exec-server websocket through, keeping every JSON message."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.calls: list[dict[str, Any]] = []
        self.replies: list[dict[str, Any]] = []

    async def handle(self, client: ServerConnection) -> None:
        async with connect(self.upstream, max_size=None) as server:
            await asyncio.gather(
                self._pipe(client, server, self.calls),
                self._pipe(server, client, self.replies),
                return_exceptions=True,
            )

    @staticmethod
    async def _pipe(source: Any, sink: Any, log: list[dict[str, Any]]) -> None:
        try:
            async for message in source:
                with contextlib.suppress(ValueError):
                    log.append(json.loads(message))
                await sink.send(message)
        except ConnectionClosed:
            pass
        finally:
            await sink.close()


@contextlib.asynccontextmanager
async def _recording_proxy(upstream: str) -> AsyncIterator[tuple[RecordingProxy, str]]:
    proxy = RecordingProxy(upstream)
    async with serve(proxy.handle, "127.0.0.1", 0, max_size=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield proxy, f"ws://127.0.0.1:{port}"


# -- CODEX_HOME ------------------------------------------------------------------------


def write_codex_home(home: Path, model_base_url: str, environment: UrlEnvironment | None) -> None:
    (home / "config.toml").write_text(
        'model = "mock-model"\n'
        'model_provider = "mock"\n'
        'approval_policy = "never"\n'
        'sandbox_mode = "danger-full-access"\n'
        "\n"
        "[model_providers.mock]\n"
        'name = "mock"\n'
        f'base_url = "{model_base_url}"\n'
        'wire_api = "responses"\n'
        "requires_openai_auth = false\n"
        "supports_websockets = false\n"
    )
    if environment is not None:
        (home / "environments.toml").write_text(
            f'default = "{environment.environment_id}"\n'
            "include_local = true\n"
            "\n"
            "[[environments]]\n"
            f'id = "{environment.environment_id}"\n'
            f'url = "{environment.url}"\n'
            + (
                ""
                if environment.bearer is None
                else f'auth_bearer_token = "{environment.bearer}"\n'
            )
        )


# -- the app-server client ---------------------------------------------------------------


class AppServer:
    """`codex app-server` over stdio: newline-delimited JSON-RPC, no "jsonrpc" member."""

    def __init__(self, process: asyncio.subprocess.Process, stderr_path: Path) -> None:
        self.process = process
        self.stderr_path = stderr_path
        self.notifications: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, home: Path, cwd: str, extra_env: dict[str, str]) -> AppServer:
        env = {**os.environ, "CODEX_HOME": str(home), **extra_env}
        stderr_path = home / "app-server.stderr"
        stderr = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            process = await asyncio.create_subprocess_exec(
                codex_binary(),
                "app-server",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                env=env,
                cwd=cwd,
                limit=64 * 1024 * 1024,
            )
        finally:
            os.close(stderr)
        return cls(process, stderr_path)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            message = json.loads(line)
            if "id" in message and "method" in message:
                # The harness asks us something (an approval, say): we have no answers.
                await self._send(
                    {"id": message["id"], "error": {"code": -32601, "message": "not supported"}}
                )
            elif "id" in message:
                future = self._pending.pop(message["id"], None)
                if future is not None and not future.done():
                    future.set_result(message)
            else:
                await self.notifications.put(message)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError("codex app-server exited"))

    async def _send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message).encode() + b"\n")
        await self.process.stdin.drain()

    async def request(self, method: str, params: Any) -> Any:
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        await self._send({"id": request_id, "method": method, "params": params})
        reply = await future
        if "error" in reply:
            raise RuntimeError(f"app-server {method} failed: {reply['error']}")
        return reply["result"]

    async def notify(self, method: str, params: Any = None) -> None:
        message: dict[str, Any] = {"method": method}
        if params is not None:
            message["params"] = params
        await self._send(message)

    def stderr_tail(self) -> str:
        with contextlib.suppress(OSError), open(self.stderr_path, "rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - _STDERR_TAIL_BYTES))
            return file.read().decode("utf-8", "replace")
        return ""

    async def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, ValueError):
            await self._reader


async def _drive_turn(
    app: AppServer, environment_id: str, cwd: str
) -> tuple[str, list[dict[str, Any]]]:
    await app.request(
        "initialize",
        {
            "clientInfo": {"name": "codexexec-tests", "version": "0.0.1"},
            "capabilities": {"experimentalApi": True},
        },
    )
    await app.notify("initialized")
    thread = await app.request(
        "thread/start",
        {
            "environments": [{"environmentId": environment_id, "cwd": cwd}],
            "ephemeral": True,
            "approvalPolicy": "never",
            "sandbox": "danger-full-access",
        },
    )
    thread_id = thread["thread"]["id"]
    await app.request(
        "turn/start", {"threadId": thread_id, "input": [{"type": "text", "text": "run it"}]}
    )
    notifications = []
    while True:
        message = await app.notifications.get()
        notifications.append(message)
        if message.get("method") == "turn/completed":
            return message["params"]["turn"]["status"], notifications


async def run_codex_turn(
    environment: UrlEnvironment | NoiseEnvironment,
    command: str | FunctionCall,
    *,
    cwd: str = "/tmp",
    extra_env: dict[str, str] | None = None,
    timeout: float = TURN_TIMEOUT_SECONDS,
) -> TurnResult:
    """One harness turn on ``environment`` whose model makes one tool call: ``command`` run
    through `exec_command` (`bash -lc`), or any other FunctionCall (an MCP tool, say)."""
    call = exec_command(command) if isinstance(command, str) else command
    home = Path(tempfile.mkdtemp(prefix="codex-harness-", dir="/var/tmp"))
    env = dict(extra_env or {})
    proxy: RecordingProxy | None = None
    try:
        async with contextlib.AsyncExitStack() as stack:
            fake, model_url = await stack.enter_async_context(_fake_responses(call))
            url_environment: UrlEnvironment | None = None
            if isinstance(environment, UrlEnvironment):
                url_environment = environment
                if environment.record:
                    proxy, proxied = await stack.enter_async_context(
                        _recording_proxy(environment.url)
                    )
                    url_environment = UrlEnvironment(proxied, environment.environment_id)
                environment_id = environment.environment_id
            else:
                env.update(environment.env())
                environment_id = "remote"
            write_codex_home(home, model_url, url_environment)
            app = await AppServer.start(home, cwd, env)
            try:
                status, notifications = await asyncio.wait_for(
                    _drive_turn(app, environment_id, cwd), timeout
                )
            except (TimeoutError, RuntimeError, ConnectionError) as exc:
                raise AssertionError(f"{exc!r}; stderr tail:\n{app.stderr_tail()}") from exc
            finally:
                await app.stop()
            result = TurnResult(
                turn_status=status,
                commands=[],
                notifications=notifications,
                model_requests=fake.requests,
                exec_server_calls=list(proxy.calls) if proxy else [],
                exec_server_replies=list(proxy.replies) if proxy else [],
                stderr_tail=app.stderr_tail(),
            )
            result.commands = [_command(item) for item in result.items("commandExecution")]
            return result
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _command(item: dict[str, Any]) -> CommandExecution:
    return CommandExecution(
        command=item.get("command", ""),
        aggregated_output=item.get("aggregatedOutput"),
        exit_code=item.get("exitCode"),
        status=item.get("status", ""),
        item=item,
    )
