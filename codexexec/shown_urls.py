"""URLs as logs, errors and audit records may show them: never the user info, query or
fragment, where passwords, tokens and signed capabilities ride."""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit


def origin(url: str) -> str:
    """scheme://host[:port]: nothing else of the URL."""
    parts = _split(url)
    if parts is None:
        return "<unparseable>"
    return _origin(parts)


def without_secrets(url: str) -> str:
    """The origin and the path."""
    parts = _split(url)
    if parts is None:
        return "<unparseable>"
    return f"{_origin(parts)}{parts.path}" if parts.scheme else parts.path


def _split(url: str) -> SplitResult | None:
    try:
        return urlsplit(url)
    except ValueError:
        return None


def _origin(parts: SplitResult) -> str:
    if not parts.scheme:
        return "(relative URL)"
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{host}:{port}" if port else f"{parts.scheme}://{host}"
