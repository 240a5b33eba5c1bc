"""What a user waits for, per command, side by side with Codex 0.169.0 in one run (#17).

    .venv/bin/python bench/cli_bench.py [--runs 15]

Whole-process wall time, as a shell runs the command (median of --runs, after two warm-up
runs). Bytecode caching is on, as on any installed machine: a PYTHONDONTWRITEBYTECODE in
the calling environment is dropped, or every run would compile codexexec afresh. Output is
`exec -- head -c 256MiB /dev/zero` into a pipe that counts the bytes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import codex_binary  # noqa: E402

OUTPUT_BYTES = 256 * 1024 * 1024
TOKEN = "cli-bench-token"


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(extra)
    return env


def median_ms(argv: list[str], runs: int, env: dict[str, str]) -> float:
    samples = []
    for index in range(runs + 2):
        began = time.perf_counter()
        done = subprocess.run(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd="/tmp"
        )
        elapsed = time.perf_counter() - began
        if done.returncode != 0:
            raise RuntimeError(f"{argv} failed: {done.stderr.decode()[-300:]}")
        if index >= 2:
            samples.append(elapsed)
    return statistics.median(samples) * 1000


def output_seconds(argv: list[str], runs: int, env: dict[str, str]) -> float:
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        producer = subprocess.Popen(
            [*argv, "head", "-c", str(OUTPUT_BYTES), "/dev/zero"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd="/tmp",
        )
        assert producer.stdout is not None
        total = 0
        while chunk := producer.stdout.read1(1 << 20):
            total += len(chunk)
        producer.wait()
        samples.append(time.perf_counter() - began)
        assert total == OUTPUT_BYTES, total
    return statistics.median(samples)


def spawn(argv: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd="/tmp"
    )
    assert process.stdout is not None
    return process, process.stdout.readline().decode().strip()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    env = environment()
    cx = [sys.executable, "-m", "codexexec"]
    codex = codex_binary()
    home = tempfile.mkdtemp(prefix="codex-home-", dir="/var/tmp")
    codex_env = environment(CODEX_HOME=home)
    codex_sandbox = [codex, "sandbox", "-c", 'sandbox_mode="workspace-write"', "--"]
    tmp = Path(tempfile.mkdtemp())
    (tmp / "tokens").write_text(TOKEN + "\n")
    (tmp / "tokens").chmod(0o600)
    remote_env = environment(CODEXEXEC_REGISTRY_TOKEN=TOKEN)
    server, url = spawn([*cx, "serve", "--listen", "ws://127.0.0.1:0"], env)
    rendezvous, registry = spawn(
        [*cx, "rendezvous", "--token-file", str(tmp / "tokens"), "--db", str(tmp / "db")], env
    )
    executor = subprocess.Popen(
        [*cx, "serve", "--remote", registry, "--environment-id", "bench"],
        stderr=subprocess.DEVNULL,
        env=remote_env,
    )
    try:
        time.sleep(2)  # the executor registers
        rows = [
            ("`codexexec exec -- true` (default sandbox)", [*cx, "exec", "--", "true"], env),
            (
                "`codexexec exec --sandbox danger-full-access -- true`",
                [*cx, "exec", "--sandbox", "danger-full-access", "--", "true"],
                env,
            ),
            (
                "`codexexec exec --env ws://127.0.0.1:P -- true`",
                [*cx, "exec", "--env", url, "--", "true"],
                env,
            ),
            (
                "same through the rendezvous (Noise)",
                [*cx, "exec", "--env", f"bench@{registry}", "--", "true"],
                remote_env,
            ),
            ("`codexexec --help`", [*cx, "--help"], env),
            ("`codexexec exec --help`", [*cx, "exec", "--help"], env),
            ("`codexexec sandbox-check`", [*cx, "sandbox-check"], env),
            (
                '`codex sandbox -c sandbox_mode="workspace-write" -- true`',
                [*codex_sandbox, "true"],
                codex_env,
            ),
            ("`python -c pass` (the venv's interpreter)", [sys.executable, "-c", "pass"], env),
            (
                "`python -c 'import typer'` (the CLI's framework alone)",
                [sys.executable, "-c", "import typer"],
                env,
            ),
            (
                "`python -c 'import typer, asyncio'`",
                [sys.executable, "-c", "import typer, asyncio"],
                env,
            ),
        ]
        print("| command | median (ms) |")
        print("|---|---:|")
        measured = {}
        for label, argv, run_env in rows:
            measured[label] = median_ms(argv, args.runs, run_env)
            print(f"| {label} | {measured[label]:.0f} |", flush=True)
        codex_true = measured['`codex sandbox -c sandbox_mode="workspace-write" -- true`']
        print(
            f"\nexec -- true: {measured[rows[0][0]] / codex_true:.2f}× `codex sandbox` "
            f"(target ≤ 2.5×); danger-full-access: {measured[rows[1][0]] / codex_true:.2f}× "
            "(target ≤ 2×)"
        )
        # What no local exec can go below while it parses its options with typer and runs
        # an event loop: the interpreter starting and importing those two, nothing else.
        floor, both = measured[rows[-2][0]], measured[rows[-1][0]]  # the two import rows
        print(
            f"floor: importing typer alone {floor / codex_true:.2f}× `codex sandbox`, "
            f"typer and asyncio {both / codex_true:.2f}×"
        )
        ours = output_seconds([*cx, "exec", "--"], 3, env)
        theirs = output_seconds(codex_sandbox, 3, codex_env)
        bare = output_seconds([], 3, env)
        print(
            f"\nlocal output, 256 MiB into a pipe (median of 3): codexexec {ours:.2f} s "
            f"({OUTPUT_BYTES / ours / 1e9:.2f} GB/s), codex sandbox {theirs:.2f} s, bare pipe "
            f"{bare:.2f} s; codexexec / Codex {ours / theirs:.2f}× (target ≤ 2×)"
        )
    finally:
        for process in (executor, server, rendezvous):
            process.terminate()


if __name__ == "__main__":
    main()
