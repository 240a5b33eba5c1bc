"""The exec-server's own failures (a request's are RpcErrors)."""

from __future__ import annotations


class ServerError(Exception):
    """The root of every error server/ raises."""
