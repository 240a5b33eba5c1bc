"""Render the escape suite's last results as the README's Markdown table.

.venv/bin/python -m pytest -q tests/escape && .venv/bin/python -m tests.escape.table
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

from tests.escape.probes import PROBES
from tests.escape.runners import RESULTS

COLUMNS = {
    "codexexec bwrap": ("codexexec-bwrap-root", "codexexec-bwrap-user"),
    "codexexec Landlock": ("codexexec-landlock-root", "codexexec-landlock-user"),
    "Codex 0.169.0": ("codex-root", "codex-user"),
}
SHORT = {"read-only": "ro", "workspace-write": "ww"}


def _cell(verdicts: dict[tuple[str, str], str]) -> str:
    """One cell: what happened under each (user, mode), folded where it is the same."""
    if not verdicts:
        return "not run"
    kinds: dict[str, list[str]] = defaultdict(list)
    for (runner, mode), verdict in sorted(verdicts.items()):
        user = runner.rsplit("-", 1)[1]
        kinds[verdict.split(":", 1)[0]].append(f"{SHORT[mode]} {user}")
    if set(kinds) == {"held"}:
        return "held"
    parts = []
    for kind in ("escaped", "refused", "held"):
        if kind in kinds:
            where = ", ".join(kinds[kind])
            parts.append(f"**ESCAPED** ({where})" if kind == "escaped" else f"{kind} ({where})")
    return "; ".join(parts)


def render() -> str:
    latest: dict[tuple[str, str, str], str] = {}
    for line in RESULTS.read_text().splitlines():
        row = json.loads(line)
        latest[(row["runner"], row["probe"], row["mode"])] = row["verdict"]
    lines = [
        "| probe | attack | " + " | ".join(COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for probe in PROBES:
        cells = []
        for runners in COLUMNS.values():
            found = {
                (runner, mode): verdict
                for (runner, name, mode), verdict in latest.items()
                if name == probe.name and runner in runners
            }
            cells.append(_cell(found))
        lines.append(f"| `{probe.name}` | {probe.attack} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render() + "\n")
