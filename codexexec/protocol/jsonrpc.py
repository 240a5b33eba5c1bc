"""The Codex JSON-RPC envelope: encoding, decoding and classification.

Codex omits the ``"jsonrpc": "2.0"`` member on output and ignores it on input; ids are
integers or strings and are echoed as received. Decoding is structural: a request has
``id`` and ``method``, a notification ``method`` only, a response ``id`` and ``result``,
an error ``id`` and ``error``.
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec

from codexexec.protocol import output_notification
from codexexec.protocol.errors import ProtocolError
from codexexec.protocol.limits import MAX_JSON_NESTING_DEPTH, MAX_JSON_VALUES_PER_MESSAGE

RequestId = int | str

INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
NOT_FOUND: Final = -32004
SESSION_ALREADY_ATTACHED: Final = -32010

# The id Codex uses when answering input it could not attribute to a request.
UNKNOWN_ID: Final = -1


class RpcError(ProtocolError):
    """A JSON-RPC error answer; raised by handlers, surfaced to callers."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def __repr__(self) -> str:
        return f"RpcError({self.code}, {self.message!r})"


class MalformedMessage(ProtocolError):
    """Input that is not a JSON-RPC message; answered with id -1, connection kept."""


class Request(msgspec.Struct):
    id: RequestId
    method: str
    params: Any


class Notification(msgspec.Struct):
    method: str
    params: Any


class Response(msgspec.Struct):
    id: RequestId
    result: Any


class ErrorResponse(msgspec.Struct):
    id: RequestId
    code: int
    message: str
    data: Any


Message = Request | Notification | Response | ErrorResponse

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()
encode_json = _encoder.encode


def encode_request(request_id: RequestId, method: str, params: Any) -> bytes:
    if params is None:
        return _encoder.encode({"id": request_id, "method": method})
    return _encoder.encode({"id": request_id, "method": method, "params": params})


def encode_notification(method: str, params: Any) -> bytes:
    if params is None:
        return _encoder.encode({"method": method})
    return _encoder.encode({"method": method, "params": params})


def encode_response(request_id: RequestId, result: Any) -> bytes:
    return _encoder.encode({"id": request_id, "result": result})


def encode_error(request_id: RequestId, code: int, message: str, data: Any = None) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    # Codex writes `error` before `id`; keep the same bytes.
    return _encoder.encode({"error": error, "id": request_id})


def decode_json(raw: bytes | str) -> Any:
    """Parse one transport message, enforcing Codex's JSON nesting and value-count limits.

    The limits are checked on the decoded value (its containers only), not by scanning the
    bytes first: an output notification is megabytes of one string, and two scans of it
    cost more than everything else on the local output path (issue #17). The byte scan that
    reproduces serde_json's error position runs only once a limit is known to be hit.
    """
    data = raw.encode() if isinstance(raw, str) else raw
    try:
        value = _decoder.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        if data.count(b"[") + data.count(b"{") >= MAX_JSON_NESTING_DEPTH:
            _check_nesting(data)
        raise MalformedMessage(str(exc)) from None
    # A value takes at least two bytes, and a level a bracket: a message short enough, or
    # with few brackets (counted at C speed), cannot exceed either limit and skips the walk.
    if len(data) > MAX_JSON_VALUES_PER_MESSAGE or (
        data.count(b"[") + data.count(b"{") >= MAX_JSON_NESTING_DEPTH
    ):
        too_deep, too_many = _exceeds_limits(value)
        if too_deep or too_many:
            # Codex checks the nesting first: a message both too deep and too big gets
            # the depth error (the scan raises it only when it applies).
            _check_nesting(data)
        if too_many:
            raise MalformedMessage(
                f"JSON-RPC message exceeds the limit of {MAX_JSON_VALUES_PER_MESSAGE} JSON values"
            )
    return value


_STRUCTURE = re.compile(rb'[\[\]{}"\\]')


def _check_nesting(data: bytes) -> None:
    """Reject nesting deeper than serde_json's recursion limit, before decoding."""
    depth = 0
    in_string = False
    skip_until = -1
    for match in _STRUCTURE.finditer(data):
        position = match.start()
        if position <= skip_until:
            continue
        char = data[position]
        if in_string:
            if char == 0x5C:  # backslash escapes the next byte
                skip_until = position + 1
            elif char == 0x22:
                in_string = False
        elif char == 0x22:
            in_string = True
        elif char in (0x5B, 0x7B):
            depth += 1
            if depth >= MAX_JSON_NESTING_DEPTH:
                line = data.count(b"\n", 0, position) + 1
                column = position - (data.rfind(b"\n", 0, position) + 1) + 1
                raise MalformedMessage(f"recursion limit exceeded at line {line} column {column}")
        elif char in (0x5D, 0x7D):
            depth -= 1


def _exceeds_limits(value: Any) -> tuple[bool, bool]:
    """(nested MAX_JSON_NESTING_DEPTH deep, more than MAX_JSON_VALUES_PER_MESSAGE values).
    Only containers are walked; scalars are counted by their container's length, so a
    message of many strings costs no more than its few objects."""
    remaining = MAX_JSON_VALUES_PER_MESSAGE - 1  # the top-level value
    too_deep = False
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        item, depth = stack.pop()
        if depth >= MAX_JSON_NESTING_DEPTH:
            too_deep = True
        children = item.values() if isinstance(item, dict) else item
        remaining -= len(children)
        if remaining < 0:
            return too_deep, True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return too_deep, False


def parse_message(raw: bytes | str | output_notification.OutputMessage) -> Message | list[Any]:
    """One transport message: a message, or a batch's raw entries (see ``classify``).

    ``process/output`` in the server's own layout skips JSON (``output_notification.py``):
    its ``chunk`` param then holds the decoded bytes rather than base64 text (msgspec
    encodes bytes back to the same base64, so a relaying keeper sends what it got).
    """
    if isinstance(raw, output_notification.OutputMessage):  # from an in-process server
        params = {
            "processId": raw.process_id,
            "seq": raw.seq,
            "stream": raw.stream,
            "chunk": raw.data,
        }
        return Notification("process/output", params)
    if isinstance(raw, bytes):
        fields = output_notification.decode(raw)
        if fields is not None:
            process_id, seq, stream, data = fields
            params = {"processId": process_id, "seq": seq, "stream": stream, "chunk": data}
            return Notification("process/output", params)
    value = decode_json(raw)
    return value if isinstance(value, list) else classify(value)


def classify(value: Any) -> Message:
    """Turn one decoded JSON object into a message, or raise MalformedMessage."""
    if not isinstance(value, dict):
        raise MalformedMessage("expected a JSON-RPC object")
    method = value.get("method")
    has_id = "id" in value
    if method is not None:
        if not isinstance(method, str):
            raise MalformedMessage("`method` must be a string")
        if has_id:
            return Request(_request_id(value["id"]), method, value.get("params"))
        return Notification(method, value.get("params"))
    if has_id:
        if "result" in value:
            return Response(_request_id(value["id"]), value["result"])
        error = value.get("error")
        if isinstance(error, dict):
            code = error.get("code")
            message = error.get("message")
            if isinstance(code, int) and isinstance(message, str):
                return ErrorResponse(_request_id(value["id"]), code, message, error.get("data"))
    raise MalformedMessage("expected a JSON-RPC request, notification, response or error")


def _request_id(value: Any) -> RequestId:
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        return value
    raise MalformedMessage(f"JSON-RPC id must be an integer or a string, got {_json_kind(value)}")


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
