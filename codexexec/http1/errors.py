"""The root of http1/'s errors."""

from __future__ import annotations


class Http1Error(Exception):
    """The root of every error http1/ raises: a message that breaks HTTP/1.1's rules."""
