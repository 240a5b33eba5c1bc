"""The rendezvous's HTTP endpoints (registry and relay upgrade) and its error middleware.

See ``service.py`` for the endpoints and routing rules.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web
from aiohttp.typedefs import Handler

from codexexec.protocol.registry import LEGACY_PROFILE as SECURITY_PROFILE_LEGACY
from codexexec.protocol.registry import NOISE_SUITES, STREAM_ID_HEADER
from codexexec.rendezvous.agent_auth import AgentKeys, is_agent_assertion
from codexexec.rendezvous.auth import (
    Principal,
    RequestRefused,
    Role,
    TokenTable,
)
from codexexec.rendezvous.bus_wire import BusRefused, BusUnavailable
from codexexec.rendezvous.errors import RendezvousError
from codexexec.rendezvous.events import event
from codexexec.rendezvous.links import RemoteExecutor
from codexexec.rendezvous.metrics import CONTENT_TYPE, RendezvousMetrics
from codexexec.rendezvous.options import (
    CLOSE_EXECUTOR_GONE,
    CLOSE_GOING_AWAY,
    RendezvousOptions,
)
from codexexec.rendezvous.peers import ExecutorPeer, HarnessPeer, Peer
from codexexec.rendezvous.relay import Relay
from codexexec.rendezvous.signing import (
    RelayRole,
    RelayTicket,
    RelayUrlSigner,
    SignatureError,
)
from codexexec.rendezvous.store import (
    AuthorizationLimit,
    Registration,
    RegistryStore,
    StoreUnavailable,
    ValidationOutcome,
    canonical_json,
)

_ENVIRONMENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,255}")
_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


class ApiError(RendezvousError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra: dict[str, str] = {}


# A hybrid key's JSON is about 1.7 KB; a harness key is kept with every authorization.
MAX_HARNESS_KEY_JSON_BYTES: Final = 4096


def error_response(
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    extra: dict[str, str] | None = None,
) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message, **(extra or {})}},
        status=status,
        headers=headers,
    )


# /healthz answers within this even when the store hangs.
HEALTH_STORE_TIMEOUT_SECONDS = 2.0


@dataclass
class RendezvousState:
    tokens: TokenTable
    store: RegistryStore
    signer: RelayUrlSigner
    relay: Relay
    options: RendezvousOptions
    metrics: RendezvousMetrics
    agents: AgentKeys | None = None
    bound_netloc: str = ""
    started: float = field(default_factory=time.monotonic)


STATE: Final = web.AppKey("rendezvous_state", RendezvousState)


def _state(request: web.Request) -> RendezvousState:
    return request.app[STATE]


def _environment_id(request: web.Request) -> str:
    environment_id = request.match_info.get("environment_id", "")
    if not _ENVIRONMENT_ID.fullmatch(environment_id):
        raise ApiError(
            400,
            "invalid_environment_id",
            "environment id must be 1-256 characters of [A-Za-z0-9._-]",
        )
    return environment_id


def _authenticate(request: web.Request, role: Role, environment_id: str) -> Principal:
    state = _state(request)
    authorization = request.headers.get("Authorization")
    if authorization is not None and is_agent_assertion(authorization):
        return _agents(state).authenticate(authorization, role, environment_id)
    return state.tokens.authenticate(authorization, role, environment_id)


def _agents(state: RendezvousState) -> AgentKeys:
    if state.agents is None:
        raise RequestRefused(
            401,
            "agent_identity_not_accepted",
            "this rendezvous admits no Agent Identity (it runs without --agent-keys)",
        )
    return state.agents


async def handle_task_register(request: web.Request) -> web.Response:
    agents = _agents(_state(request))
    body = await _json_body(request, optional=False)
    runtime_id = request.match_info.get("runtime_id", "")
    task_id = agents.register_task(runtime_id, body.get("timestamp"), body.get("signature"))
    event(logging.INFO, "agent.task_registered", agent=runtime_id)
    return web.json_response({"task_id": task_id})


async def _json_body(request: web.Request, *, optional: bool) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        if optional:
            return {}
        raise ApiError(400, "invalid_request", "request body must be a JSON object")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid_request", "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "request body must be a JSON object")
    return body


def _ws_base(request: web.Request) -> str:
    state = _state(request)
    public = state.options.public_url
    if public:
        parts = urlsplit(public)
        scheme = {"https": "wss", "wss": "wss"}.get(parts.scheme, "ws")
        return f"{scheme}://{parts.netloc}"
    host = request.headers.get("Host", "")
    if not _HOST.fullmatch(host):
        host = state.bound_netloc
    return f"{'wss' if request.secure else 'ws'}://{host}"


def _relay_url(
    request: web.Request, role: RelayRole, registration: Registration, subject: str = ""
) -> str:
    state = _state(request)
    ttl = (
        state.options.environment_url_ttl
        if role == "environment"
        else (state.options.harness_url_ttl)
    )
    return state.signer.sign(
        _ws_base(request),
        role,
        registration.environment_id,
        registration.registration_id,
        ttl,
        subject,
    )


async def handle_register(request: web.Request) -> web.Response:
    state = _state(request)
    environment_id = _environment_id(request)
    principal = _authenticate(request, "executor", environment_id)
    body = await _json_body(request, optional=True)
    profile = body.get("security_profile", SECURITY_PROFILE_LEGACY)
    key = body.get("executor_public_key")
    if profile in NOISE_SUITES:
        if not isinstance(key, dict) or key.get("suite") != NOISE_SUITES[profile]:
            raise ApiError(
                400,
                "invalid_request",
                f"{profile} needs an executor_public_key object of suite {NOISE_SUITES[profile]}",
            )
    elif profile == SECURITY_PROFILE_LEGACY:
        if key is not None:
            raise ApiError(
                400, "invalid_request", "the legacy profile takes no executor_public_key"
            )
    else:
        raise ApiError(
            400,
            "unsupported_security_profile",
            "security_profile must be one of "
            + ", ".join(repr(name) for name in (*NOISE_SUITES, SECURITY_PROFILE_LEGACY)),
        )
    registration = await state.store.register(environment_id, profile, key, principal.label)
    await state.relay.registered(environment_id, registration.registration_id)
    event(
        logging.INFO,
        "registry.register",
        outcome="ok",
        environment_id=environment_id,
        executor_registration_id=registration.registration_id,
        security_profile=profile,
        token=principal.label,
    )
    return web.json_response(
        {
            "environment_id": environment_id,
            "url": _relay_url(request, "environment", registration),
            "security_profile": profile,
            "executor_registration_id": registration.registration_id,
        }
    )


async def handle_connect(request: web.Request) -> web.Response:
    state = _state(request)
    environment_id = _environment_id(request)
    principal = _authenticate(request, "harness", environment_id)
    body = await _json_body(request, optional=True)
    registration = await state.store.current_registration(environment_id)
    if registration is None:
        raise ApiError(
            404,
            "environment_not_found",
            f"no executor has registered environment {environment_id!r}",
        )
    if await state.relay.locate(environment_id, registration.registration_id) is None:
        raise ApiError(
            409,
            "environment_offline",
            f"the executor for environment {environment_id!r} is not connected",
        )
    harness_key = body.get("harness_public_key")
    response: dict[str, Any] = {
        "environment_id": environment_id,
        # The credential rides in the signed URL: its failed handshakes are its own.
        "url": _relay_url(request, "harness", registration, principal.label),
        "security_profile": registration.security_profile,
        "executor_registration_id": registration.registration_id,
    }
    profile = registration.security_profile
    if profile in NOISE_SUITES:
        if not isinstance(harness_key, dict) or not harness_key:
            raise ApiError(
                400,
                "invalid_request",
                "harness_public_key (an object) is required for this environment",
            )
        if harness_key.get("suite") != NOISE_SUITES[profile]:
            raise _profile_mismatch(environment_id, profile)
        if len(canonical_json(harness_key).encode()) > MAX_HARNESS_KEY_JSON_BYTES:
            raise ApiError(400, "invalid_request", "harness_public_key is too large")
        response["executor_public_key"] = registration.executor_public_key
        try:
            response["harness_key_authorization"] = await state.store.issue_authorization(
                environment_id,
                registration.registration_id,
                harness_key,
                state.options.authorization_ttl,
                limit=state.options.max_authorizations,
            )
        except AuthorizationLimit:
            raise ApiError(
                429,
                "too_many_authorizations",
                f"too many unexpired harness authorizations for environment {environment_id!r}; "
                "retry later",
            ) from None
    elif harness_key is not None:
        raise _profile_mismatch(environment_id, profile)
    event(
        logging.INFO,
        "registry.connect",
        outcome="ok",
        environment_id=environment_id,
        executor_registration_id=registration.registration_id,
        security_profile=registration.security_profile,
        token=principal.label,
    )
    return web.json_response(response)


def _profile_mismatch(environment_id: str, profile: str) -> ApiError:
    """The harness offered a key for another profile; the error names the right one so a
    harness that speaks it can ask again (a codexexec extension of the error body)."""
    error = ApiError(
        409,
        "security_profile_mismatch",
        f"environment {environment_id!r} uses the {profile} security profile",
    )
    error.extra["security_profile"] = profile
    return error


async def handle_validate(request: web.Request) -> web.Response:
    state = _state(request)
    environment_id = _environment_id(request)
    principal = _authenticate(request, "executor", environment_id)
    body = await _json_body(request, optional=False)
    registration_id = body.get("executor_registration_id")
    harness_key = body.get("harness_public_key")
    authorization = body.get("harness_key_authorization")
    if (
        not isinstance(registration_id, str)
        or not isinstance(authorization, str)
        or not authorization
        or harness_key is None
    ):
        raise ApiError(
            400,
            "invalid_request",
            "expected executor_registration_id, harness_public_key and harness_key_authorization",
        )
    outcome = await state.store.consume_authorization(
        environment_id, registration_id, harness_key, authorization
    )
    valid = outcome == ValidationOutcome.VALID
    state.metrics.validations.labels(outcome).inc()
    event(
        logging.INFO if valid else logging.WARNING,
        "registry.validate",
        outcome=outcome,
        environment_id=environment_id,
        executor_registration_id=registration_id,
        stream_id=request.headers.get(STREAM_ID_HEADER, "-"),
        token=principal.label,
    )
    return web.json_response({"valid": valid})


async def handle_healthz(request: web.Request) -> web.Response:
    state = _state(request)
    relay = state.relay
    try:
        async with asyncio.timeout(HEALTH_STORE_TIMEOUT_SECONDS):
            await state.store.environment_count()
        store = "ok"
    except Exception as exc:  # any store failure is what this endpoint reports
        store = f"unavailable: {type(exc).__name__}"
    bus = "none" if relay.bus is None else relay.bus.status()
    healthy = store == "ok" and bus in ("ok", "none") and not relay.shutting_down
    return web.json_response(
        {
            "status": "stopping" if relay.shutting_down else "ok" if healthy else "degraded",
            "store": store,
            "bus": bus,
            "node": relay.node_id,
            "executors_online": len(relay.executors),
            "relay_sockets": len(relay.peers),
            "uptime_seconds": round(time.monotonic() - state.started, 3),
            "frames": relay.stats.as_json(),
        },
        status=200 if healthy else 503,
    )


async def handle_metrics(request: web.Request) -> web.Response:
    body = _state(request).metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def handle_relay(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    relay = state.relay
    if relay.shutting_down:
        raise ApiError(503, "shutting_down", "the rendezvous is shutting down")
    try:
        ticket = state.signer.verify(request.query.items())
    except SignatureError as error:
        event(logging.WARNING, "relay.upgrade_refused", reason=error.code, status=error.status)
        raise ApiError(error.status, error.code, error.message) from None
    registration = await state.store.current_registration(ticket.environment_id)
    if registration is None or registration.registration_id != ticket.registration_id:
        event(
            logging.WARNING,
            "relay.upgrade_refused",
            reason="registration_superseded",
            environment_id=ticket.environment_id,
            role=ticket.role,
        )
        raise ApiError(
            401,
            "registration_superseded",
            "this relay URL belongs to a registration that is no longer current",
        )
    executor: ExecutorPeer | RemoteExecutor | None = None
    if ticket.role == "harness":
        located = await relay.locate(ticket.environment_id, ticket.registration_id)
        if located is None:
            raise ApiError(
                409,
                "environment_offline",
                f"the executor for environment {ticket.environment_id!r} is not connected",
            )
        if isinstance(located, ExecutorPeer):
            executor = located
            if len(executor.harnesses) >= state.options.max_harness_sockets:
                raise ApiError(
                    429,
                    "too_many_relay_sockets",
                    f"environment {ticket.environment_id!r} has too many harness connections",
                )
        else:
            assert relay.bus is not None
            executor = await relay.bus.open_link(
                located, ticket.environment_id, ticket.registration_id, ticket.subject
            )
    try:
        return await _relay_socket(request, state, ticket, executor)
    finally:
        if isinstance(executor, RemoteExecutor) and executor.harness is None:
            executor.harness_gone()  # the upgrade failed: the link is not needed


async def _relay_socket(
    request: web.Request,
    state: RendezvousState,
    ticket: RelayTicket,
    executor: ExecutorPeer | RemoteExecutor | None,
) -> web.StreamResponse:
    relay = state.relay
    ws = web.WebSocketResponse(
        timeout=state.options.close_timeout,
        max_msg_size=state.options.max_message_bytes,
        heartbeat=state.options.heartbeat,
        compress=False,
        autoping=True,
    )
    await ws.prepare(request)
    peer: Peer
    if executor is None:
        peer = ExecutorPeer(relay, ws, request, ticket, relay.next_label("executor"))
        relay.attach_executor(peer)
        await relay.announce(peer)
    else:
        if executor.closing:  # it went away while we were upgrading
            await ws.close(code=CLOSE_EXECUTOR_GONE, message=b"executor disconnected")
            return ws
        label = executor.id if isinstance(executor, RemoteExecutor) else relay.next_label("harness")
        peer = HarnessPeer(relay, ws, request, executor, label, ticket.subject)
        if isinstance(executor, RemoteExecutor) and not executor.bind(peer):
            await ws.close(code=CLOSE_EXECUTOR_GONE, message=b"executor disconnected")
            return ws
        relay.attach_harness(peer)
    peer.start()
    event(
        logging.INFO,
        "relay.connected",
        peer=peer.label,
        role=ticket.role,
        environment_id=ticket.environment_id,
        executor_registration_id=ticket.registration_id,
    )
    outcome = "peer_close"
    try:
        async for message in ws:
            if message.type == WSMsgType.BINARY:
                if isinstance(peer, HarnessPeer):
                    await relay.from_harness(peer, message.data)
                else:
                    assert isinstance(peer, ExecutorPeer)
                    await relay.from_executor(peer, message.data)
            elif message.type == WSMsgType.TEXT:
                relay.drop_text(peer)
            elif message.type == WSMsgType.ERROR:
                outcome = "read_error"
                break
    finally:
        if isinstance(peer, HarnessPeer):
            await relay.detach_harness(peer)
            peer.finish(CLOSE_GOING_AWAY, "", drain=False)
        else:
            assert isinstance(peer, ExecutorPeer)
            relay.detach_executor(peer, CLOSE_GOING_AWAY, "")
        relay.peers.discard(peer)
        await peer.wait_closed()
        event(
            logging.INFO,
            "relay.disconnected",
            peer=peer.label,
            role=ticket.role,
            environment_id=ticket.environment_id,
            reason=outcome,
            close_code=ws.close_code,
        )
    return ws


@web.middleware
async def errors_and_access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except ApiError as error:
        status = error.status
        return error_response(error.status, error.code, error.message, extra=error.extra)
    except RequestRefused as error:
        status = error.status
        event(
            logging.WARNING,
            "registry.auth_refused",
            code=error.code,
            method=request.method,
            path=request.path,
            peer=request.remote or "-",
        )
        headers = {"WWW-Authenticate": 'Bearer realm="codexexec-rendezvous"'}
        return error_response(
            error.status, error.code, error.message, headers if error.status == 401 else None
        )
    except BusRefused as error:
        status = error.status
        return error_response(error.status, error.code, error.message)
    except BusUnavailable as error:
        status = 503
        event(logging.WARNING, "bus.unavailable", path=request.path, error=str(error))
        return error_response(503, "bus_unavailable", f"{error}; retry later")
    except StoreUnavailable as error:
        status = 503
        event(logging.ERROR, "registry.store_unavailable", path=request.path, error=str(error))
        return error_response(
            503, "store_unavailable", "the registry store is unavailable; retry later"
        )
    except web.HTTPException as error:
        status = error.status
        if error.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(
            error.status, "http_error"
        )
        return error_response(error.status, code, error.reason)
    except Exception as error:  # never leak internals (or request data) to the caller
        event(
            logging.ERROR,
            "http.internal_error",
            method=request.method,
            path=request.path,
            error=type(error).__name__,
        )
        return error_response(500, "internal_error", "internal rendezvous error")
    finally:
        event(
            logging.DEBUG,
            "http.request",
            method=request.method,
            path=request.path,
            status=status,
            ms=round((time.monotonic() - started) * 1000, 1),
            peer=request.remote or "-",
        )
