"""URLs as logs, errors and audit records may show them: never the user info, query or
fragment, where passwords, tokens and signed capabilities ride."""

from __future__ import annotations

from urllib.parse import urlsplit


def origin(url: str) -> str:
    """scheme://host[:port]: nothing else of the URL."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable>"
    if not parts.scheme:
        return "(relative URL)"
    return f"{parts.scheme}://{_host_port(parts.hostname, url)}"


def without_secrets(url: str) -> str:
    """The origin and the path."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable>"
    return f"{origin(url)}{parts.path}" if parts.scheme else parts.path


def _host_port(hostname: str | None, url: str) -> str:
    host = hostname or ""
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    try:
        port = urlsplit(url).port
    except ValueError:
        port = None
    return f"{host}:{port}" if port else host
