"""Carrying whole messages: connecting, listening, a connection ending."""

from __future__ import annotations


class TransportError(Exception):
    """The root of every error transport/ raises."""
