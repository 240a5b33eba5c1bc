"""The Landlock fallback's in-between process: confine itself, then become the command.

    python -m codexexec.sandbox.linux.confine SPEC_JSON -- ARGV...

Landlock and seccomp apply to the calling thread and everything it execs, so this
process restricts itself and then execs the command. Any failure exits 126 with the
reason on stderr (the word "sandbox" in it lets the denial heuristic see it) rather
than running the command unconfined.
"""

from __future__ import annotations

import json
import os
import sys


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("codexexec sandbox: usage: confine SPEC -- ARGV...\n")
        os._exit(126)
    spec = json.loads(argv[0])
    command = argv[2:]
    try:
        from codexexec.sandbox.linux.landlock import apply_landlock
        from codexexec.sandbox.linux.seccomp import SeccompMode, apply_seccomp

        apply_landlock(
            read_roots=["/"],
            write_roots=spec["write_roots"],
            tcp_connect_ports=spec["tcp_connect_ports"],
        )
        if spec["seccomp"]:
            apply_seccomp(SeccompMode(spec["seccomp"]))
    except Exception as exc:  # fail closed, whatever went wrong
        sys.stderr.write(f"codexexec sandbox: cannot confine the command: {exc}\n")
        os._exit(126)
    program = command[0]
    args = [spec.get("argv0") or program, *command[1:]]
    try:
        os.execvp(program, args)
    except OSError as exc:
        sys.stderr.write(f"codexexec: {program}: {exc.strerror}\n")
        os._exit(127 if isinstance(exc, FileNotFoundError) else 126)


if __name__ == "__main__":
    main(sys.argv[1:])
