"""Was a failed command blocked by the sandbox? Codex's heuristic, and a report that says why.

`is_likely_sandbox_denied` is Codex's `denial.rs` rule for rule (keywords over stderr,
stdout and the aggregated output, before the 2/126/127 quick reject, then SIGSYS on
Linux). The report goes further than Codex on Linux: a reason, the backend, the
offending path when the output names one, and a snippet.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

DENIAL_KEYWORDS = (
    "operation not permitted",
    "permission denied",
    "read-only file system",
    "seccomp",
    "sandbox",
    "landlock",
    "failed to write file",
)
_REASONS = {
    "operation not permitted": "operation_not_permitted",
    "permission denied": "permission_denied",
    "read-only file system": "read_only_file_system",
    "seccomp": "policy_denied",
    "sandbox": "policy_denied",
    "landlock": "policy_denied",
    "failed to write file": "failed_to_write_file",
}
# Under a managed network the namespace has no route but the proxy bridges, so a failed
# direct connection is the sandbox at work even when a tool hides the errno (curl does).
# codexexec extension; Codex's heuristic misses these.
MANAGED_NETWORK_FAILURES = (
    "couldn't connect to server",
    "failed to connect to",
    "connection refused",
    "network is unreachable",
)
# With no network at all, a tool's failure to reach a host or resolve a name is the sandbox
# at work too (codexexec extension: Codex reports `sandboxDenied: false`).
NO_NETWORK_FAILURES = (
    *MANAGED_NETWORK_FAILURES,
    "could not resolve host",
    "name or service not known",
    "temporary failure in name resolution",
    "no address associated with hostname",
)
QUICK_REJECT_EXIT_CODES = frozenset({2, 126, 127})
SIGSYS_EXIT_CODE = 128 + 31
SNIPPET_CHARS = 512
_PATH_MARKER = re.compile(
    r": (operation not permitted|permission denied|read-only file system)", re.IGNORECASE
)


class DenialReport(msgspec.Struct, frozen=True):
    reason: str
    backend: str
    path: str | None
    snippet: str

    def to_json(self) -> dict[str, Any]:
        return msgspec.structs.asdict(self)


def _keyword(sections: tuple[str, ...], keywords: tuple[str, ...] = DENIAL_KEYWORDS) -> str | None:
    for section in sections:
        lowered = section.lower()
        for keyword in keywords:
            if keyword in lowered:
                return keyword
    return None


def is_likely_sandbox_denied(
    sandbox_type: str, exit_code: int, stdout: str, stderr: str, aggregated: str
) -> bool:
    return classify(sandbox_type, "", exit_code, stdout, stderr, aggregated) is not None


def classify(
    sandbox_type: str,
    backend: str,
    exit_code: int,
    stdout: str,
    stderr: str,
    aggregated: str,
    *,
    managed_network: bool = False,
    network_off: bool = False,
    masks: tuple[str, ...] = (),
) -> DenialReport | None:
    """The denial report for a finished sandboxed command, or None if it was not denied.

    ``masks``: placeholders the sandbox created over protected names (a `.codex` that did
    not exist): creating one fails with "File exists", which is the sandbox's doing.
    """
    if sandbox_type == "none" or exit_code == 0:
        return None
    sections = (stderr, stdout, aggregated)
    keyword = _keyword(sections)
    masked = _masked_path(sections, masks)
    if keyword is not None:
        reason = _REASONS[keyword]
    elif masked is not None:
        return DenialReport("protected_path", backend, masked, _snippet(sections))
    elif managed_network and _keyword(sections, MANAGED_NETWORK_FAILURES):
        reason = "network_blocked"
    elif network_off and _keyword(sections, NO_NETWORK_FAILURES):
        return DenialReport("network_disabled", backend, None, _snippet(sections))
    elif exit_code in QUICK_REJECT_EXIT_CODES:
        return None
    elif sandbox_type == "linuxSeccomp" and exit_code == SIGSYS_EXIT_CODE:
        reason = "sigsys"
    else:
        return None
    return DenialReport(reason, backend, offending_path(sections), _snippet(sections))


def _masked_path(sections: tuple[str, ...], masks: tuple[str, ...]) -> str | None:
    """The placeholder a line reports as existing (`mkdir: cannot create directory
    '.codex': File exists`), by its name."""
    for section in sections:
        for line in section.splitlines():
            if "file exists" not in line.lower():
                continue
            for mask in masks:
                name = mask.rstrip("/").rsplit("/", 1)[-1]
                if re.search(rf"(^|[\s'\"`‘/]){re.escape(name)}([\s'\"`’:]|$)", line):
                    return mask
    return None


def offending_path(sections: tuple[str, ...]) -> str | None:
    """The path in the first `<path>: <denial>` line, e.g. `touch: cannot touch '/etc/x': …`."""
    for section in sections:
        for line in section.splitlines():
            match = _PATH_MARKER.search(line)
            if match is None:
                continue
            before = line[: match.start()].rsplit(": ", 1)[-1].strip()
            # Codex takes the whole text after the last ": "; tools often put the path
            # last and quoted ("cannot touch '/etc/x'"), so try the last word too.
            for candidate in (before, before.rsplit(" ", 1)[-1]):
                candidate = candidate.strip("'\"`‘’“”")
                if candidate.startswith(("/", "./", "../")):
                    return candidate
    return None


def _snippet(sections: tuple[str, ...]) -> str:
    for section in sections:
        if section.strip():
            return section.strip()[:SNIPPET_CHARS]
    return ""
