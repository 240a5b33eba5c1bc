"""Deny globs (`glob_pattern` entries): which existing paths a pattern hides.

Git-style patterns, as Codex reads them (docs/codex-0.169-observed.md §30): ``*`` and ``?``
stay inside one path component, ``**/`` matches zero or more directories (``**`` alone,
anything), ``[...]`` is a class (``[!...]`` negated). A relative pattern is taken under each
workspace root; ``~/`` under the user's home.

Like Codex on Linux the pattern is expanded once, when the command starts, into the paths
that exist then: a file created later under a matching name is not hidden. The walk starts
at the pattern's literal prefix, goes at most ``max_depth`` components below it when a
``glob_scan_max_depth`` is given, does not follow symlinks, and is bounded in entries
visited and matches kept; a directory that matches is hidden whole and not entered.
"""

from __future__ import annotations

import os
import re

import msgspec

from codexexec.sandbox.errors import SandboxError

# Codex refuses a pattern with more matches than this.
MAX_MATCHES = 8192
# Entries looked at per pattern before giving up (a pattern over a huge tree).
MAX_SCANNED = 200_000
_GLOB_CHARS = frozenset("*?[")


class GlobError(SandboxError, ValueError):
    """A pattern that cannot be expanded; the text says why."""


def translate(pattern: str) -> re.Pattern[str]:
    """The anchored regex for an absolute git-style ``pattern`` (pure)."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif char == "*":
            out.append("[^/]*")
            i += 1
        elif char == "?":
            out.append("[^/]")
            i += 1
        elif char == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1 : i + 2] in ("!", "]") else i + 1)
            if end == -1:  # an unclosed class is a literal `[`, as Codex takes it
                out.append(re.escape(char))
                i += 1
                continue
            body = pattern[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\").replace("/", "") + "]")
            i = end + 1
        else:
            out.append(re.escape(char))
            i += 1
    return re.compile("".join(out))


def literal_base(pattern: str) -> str:
    """The longest leading directory of ``pattern`` that holds no glob character."""
    parts = pattern.split("/")
    base: list[str] = []
    for part in parts[:-1]:
        if _GLOB_CHARS & set(part):
            break
        base.append(part)
    return "/".join(base) or "/"


class _Entry(msgspec.Struct, frozen=True):
    path: str
    is_dir: bool


def _children(directory: str) -> list[_Entry]:
    """One directory's entries, symlinks left out (a link could name anything: its target
    is not ours to hide, and following links could loop)."""
    found = []
    try:
        with os.scandir(directory) as entries:
            for item in entries:
                try:
                    if not item.is_symlink():
                        found.append(_Entry(item.path, item.is_dir(follow_symlinks=False)))
                except OSError:
                    continue
    except OSError:
        return []
    return found


def expand(pattern: str, max_depth: int | None) -> list[str]:
    """The existing paths an absolute ``pattern`` matches (I/O: it walks the tree)."""
    if not os.path.isabs(pattern):
        raise GlobError(f"glob pattern `{pattern}` is not absolute")
    regex = translate(pattern)
    base = literal_base(pattern)
    if "**" not in pattern:  # no deeper than the pattern's own components
        below = len([part for part in pattern[len(base) :].split("/") if part])
        max_depth = below if max_depth is None else min(max_depth, below)
    found: list[str] = []
    scanned = 0
    pending = [(base, 0)]
    while pending:
        directory, depth = pending.pop()
        if max_depth is not None and depth >= max_depth:
            continue
        for entry in _children(directory):
            scanned += 1
            if scanned > MAX_SCANNED:
                raise GlobError(
                    f"glob pattern `{pattern}` would scan more than {MAX_SCANNED} entries under "
                    f"`{base}`; narrow it or set glob_scan_max_depth"
                )
            if regex.fullmatch(entry.path):
                found.append(entry.path)  # a matching directory is hidden whole
                if len(found) > MAX_MATCHES:
                    raise GlobError(
                        f"glob pattern `{pattern}` matches more than {MAX_MATCHES} paths"
                    )
            elif entry.is_dir:
                pending.append((entry.path, depth + 1))
    return sorted(found)
