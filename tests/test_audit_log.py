"""`serve --audit-log FILE`: what an operator can later read, and what must never be there."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

from aiohttp import web

from codexexec.protocol.path_uri import PathUri
from codexexec.sandbox.policy import legacy_profile, sandbox_context_json
from codexexec.server.audit import AuditLog
from tests.servers import start_server
from tests.wire import Wire

SECRET = "hunter2-env-value"
QUERY_TOKEN = "query-token-abc123"


def uri(path: Path | str) -> str:
    return str(PathUri.from_host_native_path(str(path)))


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_the_audit_log_records_who_did_what_and_how_it_ended(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    work = tmp_path / "w"
    work.mkdir()

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hi")

    app = web.Application()
    app.router.add_get("/hello", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    profile = legacy_profile("workspace-write")
    assert profile is not None
    try:
        with start_server("codexexec", extra_args=("--audit-log", str(log))) as server:
            wire = await Wire.open(server.url)
            await wire.initialize()
            await wire.start(
                "denied",
                ["sh", "-c", "echo out$((1+1))put; touch /etc/cx-audit-probe"],
                cwd=uri(work),
                env={"PATH": "/usr/bin:/bin", "SECRET_X": SECRET},
                sandbox=sandbox_context_json(profile, uri(work), [uri(work)]),
            )
            await wire.events_until_closed("denied")
            await wire.result(
                "fs/writeFile", {"path": uri(work / "f"), "dataBase64": "eA==", "sandbox": None}
            )
            await wire.request(
                "fs/writeFile",
                {"path": uri("/nonexistent/x"), "dataBase64": "eA==", "sandbox": None},
            )
            url = f"http://127.0.0.1:{port}/hello?token={QUERY_TOKEN}"
            await wire.result("http/request", {"method": "GET", "url": url, "requestId": "r1"})
            await wire.close()
    finally:
        await runner.cleanup()
    records = lines(log)
    text = log.read_text()
    assert SECRET not in text and QUERY_TOKEN not in text and "out2put" not in text
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    start, end = (r for r in records if r["event"].startswith("process."))
    assert start["event"] == "process.start" and start["argv"][0] == "sh"
    assert (
        start["cwd"] == str(work) and start["sandbox"] == "bubblewrap" and start["network"] == "off"
    )
    assert start["connection"] and start["session"] and start["peer"].startswith("127.0.0.1:")
    assert end["event"] == "process.end" and end["exitCode"] == 1
    assert end["denial"] == "read_only_file_system" and end["ms"] >= 0
    writes = [r for r in records if r["event"] == "fs.write"]
    assert writes[0]["path"] == str(work / "f") and "error" not in writes[0]
    assert writes[1]["path"] == "/nonexistent/x" and writes[1]["error"] < 0
    [http] = [r for r in records if r["event"] == "http.request"]
    assert http["url"] == f"http://127.0.0.1:{port}/hello" and http["status"] == 200


def test_the_log_rotates_by_size(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, max_bytes=400, keep=2)
    for index in range(30):
        log.write("process.start", {"index": index, "argv": ["x" * 40]})
    log.close()
    assert path.exists() and Path(f"{path}.1").exists() and Path(f"{path}.2").exists()
    assert not Path(f"{path}.3").exists()
    assert lines(path)[-1]["index"] == 29  # the newest lines are in the file itself
    assert all(len(line) <= 400 for line in path.read_text().splitlines())
