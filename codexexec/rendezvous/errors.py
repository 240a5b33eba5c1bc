"""The rendezvous: its HTTP API, its store and its bus."""

from __future__ import annotations


class RendezvousError(Exception):
    """The root of every error rendezvous/ raises."""
