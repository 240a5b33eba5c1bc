"""Rotating executor credentials (`serve --remote … --executor-credential-stdin`), issue #16
part 3: the frame format Codex 0.169.0 reads (docs/codex-0.169-observed.md §32), checked
the same way for both executors — codexexec's and the real Codex binary — against a real
`codexexec rendezvous`.

What a provisioning parent relies on: the first frame registers; a new frame is what the
next `/validate` and the next registration sign with; an expired credential admits no
harness until a fresh frame comes; live streams carry on through a rotation; a bad frame
ends the executor with Codex's words; closing the pipe ends it quietly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.auth_helpers import clean_env, jwt
from tests.servers import codex_binary, codexexec_command

ENV_ID = "rotdev"
HARNESS = "tok-harness-rotation-0001"
TOKEN_A = "tok-executor-rotation-A01"
TOKEN_B = "tok-executor-rotation-B02"


def frame(token: str, expires_at: float, environment_id: str = ENV_ID) -> bytes:
    body = {
        "version": 1,
        "environment_id": environment_id,
        "token": token,
        "expires_at": int(expires_at),
    }
    return json.dumps(body).encode() + b"\n"


# --- the frame and the credential, pure ------------------------------------------------


def test_frame_fields_and_checks_follow_codex() -> None:
    from codexexec.remote.auth import rotating as r

    now = 1_800_000_000.0
    good = r.parse_frame(frame("tok", now + 60), ENV_ID, now)
    assert (good.token, good.expires_at) == ("tok", int(now + 60))
    assert "tok" not in repr(good)
    invalid = [
        b"tok\n",
        b"\n",
        b'{"version":2,"environment_id":"rotdev","token":"t","expires_at":4102444800}\n',
        b'{"version":true,"environment_id":"rotdev","token":"t","expires_at":4102444800}\n',
        b'{"version":1,"environment_id":"rotdev","token":"","expires_at":4102444800}\n',
        b'{"version":1,"environment_id":"rotdev","token":" t","expires_at":4102444800}\n',
        b'{"version":1,"environment_id":"rotdev","token":"t","expires_at":4102444800.5}\n',
        b'{"version":1,"environment_id":"rotdev","token":"t","expires_at":"2100-01-01"}\n',
        b'{"version":1,"environment_id":"rotdev","token":"t","expires_at":-1}\n',
        b'{"version":1,"environment_id":"rotdev","token":"t","expires_at":4102444800,"x":1}\n',
        b'{"environment_id":"rotdev","token":"t","expires_at":4102444800}\n',
        b'{"version":1,"environment_id":"rotdev","token":"t","expires_at":4102444800,'
        b'"token":"u"}\n',
        b'{"version":1,"environment_id":"rotdev","token":"t","expires_at":18446744073709551616}\n',
        b"[" * 5000 + b"]" * 5000 + b"\n",
        '{"version":1,"environment_id":"rotdev","token":"t","expires_at":4102444800}\n'.encode(
            "utf-16"
        ),
    ]
    for line in invalid:
        with pytest.raises(r.CredentialFrameError, match=f"^{r.INVALID}$"):
            r.parse_frame(line, ENV_ID, now)
    with pytest.raises(r.CredentialFrameError, match=r.OTHER_ENVIRONMENT):
        r.parse_frame(frame("t", now + 60, "other"), ENV_ID, now)
    with pytest.raises(r.CredentialFrameError, match=r.EXPIRED):
        r.parse_frame(frame("t", now), ENV_ID, now)  # expiring now is expired
    r.parse_frame(frame("t", now + 1), ENV_ID, now)
    padded = frame("t", now + 60)
    fits = b" " * (r.MAX_FRAME_BYTES - len(padded)) + padded
    assert len(fits) == r.MAX_FRAME_BYTES
    r.parse_frame(fits, ENV_ID, now)
    with pytest.raises(r.CredentialFrameError, match=r.TOO_LARGE):
        r.parse_frame(b" " + fits, ENV_ID, now)
    crlf = padded[:-1] + b"\r\n"
    r.parse_frame(crlf, ENV_ID, now)


def test_credential_expires_on_the_clock_and_rotates() -> None:
    import asyncio

    from codexexec.remote.auth import rotating as r
    from codexexec.remote.auth.base import CredentialUnavailable

    now = [1_800_000_000.0]
    credential = r.RotatingCredential(ENV_ID, clock=lambda: now[0])
    with pytest.raises(CredentialUnavailable, match=r.UNAVAILABLE):
        asyncio.run(credential.headers())
    credential.accept(frame("first", now[0] + 10))
    assert asyncio.run(credential.headers()) == {"Authorization": "Bearer first"}
    now[0] += 10
    with pytest.raises(CredentialUnavailable, match=r.EXPIRED):
        asyncio.run(credential.headers())
    credential.accept(frame("second", now[0] + 10))
    assert asyncio.run(credential.headers()) == {"Authorization": "Bearer second"}
    assert credential.rotations == 1


def test_pipe_feed_waits_for_the_first_frame_and_reads_rotations() -> None:
    import asyncio

    from codexexec.remote.auth import rotating as r
    from codexexec.remote.auth.credential_pipe import feed

    async def scenario() -> None:
        silent_read, silent_write = os.pipe()
        with pytest.raises(r.CredentialFrameError, match=r.INITIAL_TIMEOUT):
            await feed(r.RotatingCredential(ENV_ID), silent_read, initial_wait=0.3)
        os.close(silent_write)

        read_end, write_end = os.pipe()
        os.write(write_end, frame("one", time.time() + 60)[:20])  # half a frame
        os.write(write_end, frame("one", time.time() + 60)[20:])
        credential = r.RotatingCredential(ENV_ID)
        task = await feed(credential, read_end, initial_wait=5)
        assert (await credential.headers())["Authorization"] == "Bearer one"
        os.write(write_end, frame("two", time.time() + 60))
        for _ in range(100):
            if credential.rotations:
                break
            await asyncio.sleep(0.02)
        assert (await credential.headers())["Authorization"] == "Bearer two"
        os.close(write_end)
        await asyncio.wait_for(task, 5)  # the pipe closed: the feed ends quietly
        os.close(read_end)

        read_end, write_end = os.pipe()
        os.close(write_end)
        with pytest.raises(r.CredentialFrameError, match=r.PIPE_CLOSED):
            await feed(r.RotatingCredential(ENV_ID), read_end)
        os.close(read_end)

        read_end, write_end = os.pipe()
        threading.Thread(
            target=os.write, args=(write_end, b"x" * (r.MAX_FRAME_BYTES + 10)), daemon=True
        ).start()
        with pytest.raises(r.CredentialFrameError, match=r.TOO_LARGE):
            await feed(r.RotatingCredential(ENV_ID), read_end)
        os.close(write_end)
        os.close(read_end)

    asyncio.run(scenario())


def test_chatgpt_token_on_stdin_is_checked_as_codex_does() -> None:
    import io

    from codexexec.remote.auth.base import AuthError
    from codexexec.remote.auth.bearer import chatgpt_bearer_from_stdin

    claims = {"exp": 4102444800, "https://api.openai.com/auth": {"chatgpt_account_id": "acc1"}}
    token = jwt(claims)

    def read(text: str, url: str = "https://registry.example", account: str | None = None):  # type: ignore[no-untyped-def]
        return chatgpt_bearer_from_stdin(io.BytesIO(text.encode()), url, account)

    for url in ("http://registry.example", "https://u:p@registry.example", "https://r.example/#x"):
        with pytest.raises(AuthError, match="must use HTTPS without userinfo or fragments"):
            read(token + "\n", url)
    with pytest.raises(AuthError, match=r"^invalid ChatGPT access token$"):
        read("abc\n")
    with pytest.raises(AuthError, match="does not match the token"):
        read(token + "\n", account="acc2")
    with pytest.raises(AuthError, match="supply --chatgpt-account-id"):
        read(jwt({"exp": 4102444800}) + "\n")
    import asyncio

    headers = asyncio.run(read(token + "\n").headers())
    assert headers["Authorization"] == f"Bearer {token}"
    assert headers["ChatGPT-Account-ID"] == "acc1"
    headers = asyncio.run(read(jwt({}) + "\n", account="acc9").headers())
    assert headers["ChatGPT-Account-ID"] == "acc9"


# --- the flags, both executors -----------------------------------------------------------

KINDS = ["codexexec", "codex"]


def executor_argv(kind: str, registry: str, *flags: str) -> list[str]:
    base = ["--remote", registry, "--environment-id", ENV_ID, *flags]
    if kind == "codex":
        return [codex_binary(), "exec-server", *base]
    return codexexec_command("serve", *base)


def executor_env(kind: str, home: Path) -> dict[str, str]:
    return clean_env(CODEX_HOME=str(home)) if kind == "codex" else clean_env()


@pytest.fixture
def home() -> Iterator[Path]:
    # Codex refuses a CODEX_HOME under /tmp.
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="codex-home-") as path:
        yield Path(path)


@pytest.mark.parametrize("kind", KINDS)
def test_credential_flags_conflict_as_in_codex(kind: str, home: Path) -> None:
    cases = [
        (
            ["--executor-credential-stdin", "--registration-bearer-stdin"],
            "cannot be used with",
        ),
        (["--chatgpt-token-stdin", "--executor-credential-stdin"], "cannot be used with"),
        (["--chatgpt-account-id", "acc"], "required arguments were not provided"),
    ]
    for flags, text in cases:
        run = subprocess.run(
            executor_argv(kind, "http://127.0.0.1:9", *flags),
            input=b"",
            capture_output=True,
            env=executor_env(kind, home),
            timeout=30,
        )
        assert run.returncode == 2, (flags, run.stderr)
        assert text in run.stderr.decode(), (flags, run.stderr)
        assert "--chatgpt-token-stdin" in run.stderr.decode() or "stdin" in run.stderr.decode()


@pytest.mark.parametrize("kind", KINDS)
def test_bad_frames_end_the_executor_with_codex_words(kind: str, home: Path) -> None:
    from codexexec.remote.auth import rotating as r

    cases = [
        (b"not json\n", r.INVALID),
        (frame(TOKEN_A, time.time() + 600, "elsewhere"), r.OTHER_ENVIRONMENT),
        (frame(TOKEN_A, time.time() - 1), r.EXPIRED),
        (b" " * r.MAX_FRAME_BYTES + b"\n", r.TOO_LARGE),
        (b"", r.PIPE_CLOSED),
    ]
    for data, text in cases:
        run = subprocess.run(
            executor_argv(kind, "http://127.0.0.1:9", "--executor-credential-stdin"),
            input=data,
            capture_output=True,
            env=executor_env(kind, home),
            timeout=30,
        )
        assert run.returncode != 0
        assert text in run.stderr.decode(), (text, run.stderr[-500:])


# --- against a real rendezvous ---------------------------------------------------------


@dataclass
class Rendezvous:
    process: subprocess.Popen[bytes]
    url: str

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_rendezvous(tmp: Path, tokens: list[str], db: str, listen: str) -> Rendezvous:
    token_file = tmp / "tokens"
    token_file.write_text("".join(f"{t} executor {ENV_ID}\n" for t in tokens) + f"{HARNESS}\n")
    token_file.chmod(0o600)
    process = subprocess.Popen(
        codexexec_command(
            "rendezvous", "--listen", listen, "--token-file", str(token_file), "--db", db
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=clean_env(CODEXEXEC_HOME=str(tmp / "state")),
    )
    assert process.stdout is not None
    url = process.stdout.readline().decode().strip()
    assert url.startswith("http://127.0.0.1:"), url
    return Rendezvous(process, url)


def harness_exec(url: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        codexexec_command("exec", "--registry", url, "--env", ENV_ID, "--", *argv),
        capture_output=True,
        text=True,
        env=clean_env(CODEXEXEC_REGISTRY_TOKEN=HARNESS),
        timeout=timeout,
    )


def exec_until_ok(url: str, text: str, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        run = harness_exec(url, "echo", text)
        if run.returncode == 0:
            assert run.stdout == f"{text}\n"
            return
        assert time.monotonic() < deadline, run.stderr
        time.sleep(0.5)


@pytest.mark.parametrize("kind", KINDS)
def test_rotation_mid_session_against_the_rendezvous(kind: str, home: Path, tmp_path: Path) -> None:
    rendezvous = start_rendezvous(
        tmp_path, [TOKEN_A, TOKEN_B], str(tmp_path / "one.sqlite3"), "http://127.0.0.1:0"
    )
    executor = subprocess.Popen(
        executor_argv(kind, rendezvous.url, "--executor-credential-stdin"),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=executor_env(kind, home),
    )
    assert executor.stdin is not None and executor.stderr is not None
    try:
        executor.stdin.write(frame(TOKEN_A, time.time() + 3600))
        executor.stdin.flush()
        exec_until_ok(rendezvous.url, "first", within=30)

        # A stream that outlives the rotation.
        live = subprocess.Popen(
            codexexec_command(
                "exec",
                "--registry",
                rendezvous.url,
                "--env",
                ENV_ID,
                "--",
                "sh",
                "-c",
                "echo started; sleep 3; echo finished",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(CODEXEXEC_REGISTRY_TOKEN=HARNESS),
        )
        assert live.stdout is not None
        assert live.stdout.readline() == "started\n"
        executor.stdin.write(frame(TOKEN_B, time.time() + 3600))
        executor.stdin.flush()
        out, err = live.communicate(timeout=60)
        assert live.returncode == 0, err
        assert out == "finished\n"

        # A new rendezvous that knows only the rotated token, with a fresh registry: the
        # executor's old relay URL is refused, so it registers again, and every /validate
        # after that must carry the new credential too.
        port = rendezvous.url.rsplit(":", 1)[1]
        rendezvous.stop()
        rendezvous = start_rendezvous(
            tmp_path, [TOKEN_B], str(tmp_path / "two.sqlite3"), f"http://127.0.0.1:{port}"
        )
        exec_until_ok(rendezvous.url, "after-rotation", within=90)

        # Expired without a successor: no harness gets in; a fresh frame lets them in again.
        executor.stdin.write(frame(TOKEN_B, time.time() + 2))
        executor.stdin.flush()
        time.sleep(3)
        refused = harness_exec(rendezvous.url, "echo", "never")
        assert refused.returncode != 0
        assert "never" not in refused.stdout
        assert executor.poll() is None  # still waiting for a credential, not gone
        executor.stdin.write(frame(TOKEN_B, time.time() + 3600))
        executor.stdin.flush()
        exec_until_ok(rendezvous.url, "renewed", within=30)

        # The parent closes the pipe: the executor ends, cleanly.
        executor.stdin.close()
        assert executor.wait(30) == 0
        leaked = executor.stderr.read().decode()
        for secret in (TOKEN_A, TOKEN_B):
            assert secret not in leaked
    finally:
        if executor.poll() is None:
            executor.kill()
            executor.wait()
        rendezvous.stop()
