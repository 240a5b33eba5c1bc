"""The managed network: its policy, its proxies and their upstreams."""

from __future__ import annotations


class NetworkError(Exception):
    """The root of every error network/ raises."""
