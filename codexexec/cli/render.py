"""Rendering a process's events: raw bytes to the terminal, or JSON Lines."""

from __future__ import annotations

import sys
from typing import Any

import msgspec

from codexexec.client.events import Closed, Exited, Output, OutputGap, ProcessEvent
from codexexec.protocol.base64_codec import encode_base64

_encode = msgspec.json.Encoder().encode


def emit_json(obj: dict[str, Any]) -> None:
    sys.stdout.buffer.write(_encode(obj) + b"\n")
    sys.stdout.buffer.flush()


def output_json(event: Output) -> dict[str, Any]:
    record: dict[str, Any] = {"type": "output", "seq": event.seq, "stream": event.stream}
    try:
        record["text"] = event.data.decode("utf-8")
    except UnicodeDecodeError:
        record["base64"] = encode_base64(event.data)
    return record


class EventRenderer:
    """Writes each event as it arrives; remembers how the process ended."""

    def __init__(self, *, json_mode: bool) -> None:
        self.json_mode = json_mode
        self.exited: Exited | None = None
        self.closed = False
        self.last_seq = 0

    def __call__(self, event: ProcessEvent) -> None:
        if isinstance(event, Output):
            self.last_seq = event.seq
            if self.json_mode:
                emit_json(output_json(event))
                return
            target = sys.stderr.buffer if event.stream == "stderr" else sys.stdout.buffer
            target.write(event.data)
            target.flush()
        elif isinstance(event, OutputGap):
            message = (
                f"output seq {event.first_missing}..{event.next_available - 1} "
                "was dropped by the server's retention limit"
            )
            if self.json_mode:
                emit_json(
                    {
                        "type": "gap",
                        "firstMissingSeq": event.first_missing,
                        "nextAvailableSeq": event.next_available,
                    }
                )
            else:
                sys.stderr.write(f"codexexec: warning: {message}\n")
        elif isinstance(event, Exited):
            self.exited = event
            if event.seq is not None:
                self.last_seq = event.seq
        elif isinstance(event, Closed):
            self.closed = True
            if event.seq is not None:
                self.last_seq = event.seq

    def result(self, **extra: Any) -> dict[str, Any]:
        exited = self.exited
        return {
            "type": "result",
            "exitCode": exited.exit_code if exited else None,
            "sandboxDenied": exited.sandbox_denied if exited else False,
            **extra,
        }
