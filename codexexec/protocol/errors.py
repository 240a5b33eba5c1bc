"""The wire protocol's messages: malformed, invalid params, error replies.

rpc/ speaks these messages and shares this root."""

from __future__ import annotations


class ProtocolError(Exception):
    """The root of every error protocol/ raises."""
