"""Policy resolution, bwrap argv, and the denial heuristic, pinned without a server."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from codexexec.sandbox.denial import classify, is_likely_sandbox_denied, offending_path
from codexexec.sandbox.linux.bwrap import bwrap_argv
from codexexec.sandbox.plan import SandboxPlan, WritableRoot, resolve_plan
from codexexec.sandbox.policy import (
    SandboxPolicyError,
    legacy_profile,
    parse_context,
    sandbox_context_json,
)

# -- the heuristic: Codex's own pinned cases (denial.rs) ------------------------------


@pytest.mark.parametrize(
    ("sandbox", "code", "stdout", "stderr", "aggregated", "denied"),
    [
        ("linuxSeccomp", 1, "", "", "", False),
        ("linuxSeccomp", 1, "", "Operation not permitted", "", True),
        ("linuxSeccomp", 127, "", "sh: 1: foo: command not found", "", False),
        ("none", 1, "", "Permission denied", "", False),
        ("macosSeatbelt", 101, "", "", "Read-only file system", True),
        ("linuxSeccomp", 0, 'CODEX_NETWORK_POLICY_DECISION {"decision":"deny"}', "", "", False),
        ("linuxSeccomp", 159, "", "", "", True),
        ("macosSeatbelt", 159, "", "", "", False),
        ("linuxSeccomp", 2, "", "sh: 1: cannot create /etc/x: Read-only file system", "", True),
        ("linuxSeccomp", 2, "", "usage: foo", "", False),
        ("linuxSeccomp", 1, "LANDLOCK said no", "", "", True),
    ],
)
def test_codex_heuristic(
    sandbox: str, code: int, stdout: str, stderr: str, aggregated: str, denied: bool
) -> None:
    assert is_likely_sandbox_denied(sandbox, code, stdout, stderr, aggregated) is denied


def test_report_names_reason_path_and_backend() -> None:
    report = classify(
        "linuxSeccomp",
        "bubblewrap",
        1,
        "",
        "touch: cannot touch '/etc/x': Read-only file system\n",
        "",
    )
    assert report is not None
    assert (report.reason, report.path, report.backend) == (
        "read_only_file_system",
        "/etc/x",
        "bubblewrap",
    )
    sigsys = classify("linuxSeccomp", "bubblewrap", 159, "", "", "")
    assert sigsys is not None and sigsys.reason == "sigsys" and sigsys.path is None


@pytest.mark.parametrize(
    ("line", "path"),
    [
        ("bash: /etc/passwd: Permission denied", "/etc/passwd"),
        ("mkdir: cannot create directory ‘./.git/x’: Read-only file system", "./.git/x"),
        ("cp: cannot create regular file '../out': Operation not permitted", "../out"),
        ("error: Permission denied", None),
        ("connect: Operation not permitted", None),
    ],
)
def test_offending_path(line: str, path: str | None) -> None:
    assert offending_path((line,)) == path


def test_snippet_is_bounded() -> None:
    report = classify("linuxSeccomp", "bubblewrap", 1, "", "permission denied " * 100, "")
    assert report is not None and len(report.snippet) == 512


# -- resolving intent on this host -----------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / ".git").mkdir()
    (tmp_path / ".agents").mkdir()
    return tmp_path


def uri(path: Path | str) -> str:
    return f"file://{path}"


def test_workspace_write_plan(repo: Path) -> None:
    profile = legacy_profile("workspace-write")
    assert profile is not None
    plan = resolve_plan(
        parse_context(sandbox_context_json(profile, uri(repo), [uri(repo)])), str(repo)
    )
    assert plan.full_read and not plan.full_write and not plan.network_enabled
    roots = {r.path: r for r in plan.writable_roots}
    assert set(roots) >= {str(repo), "/tmp"}
    assert roots[str(repo)].read_only == [str(repo / ".git"), str(repo / ".agents")]
    assert roots[str(repo)].missing_protected == [str(repo / ".codex"), str(repo / ".aws")]
    # Every writable root masks the protected names it lacks, as Codex 0.169 does.
    assert {Path(p).name for p in roots["/tmp"].missing_protected} <= {
        ".git",
        ".agents",
        ".codex",
        ".aws",
    }


def test_worktree_protects_its_gitdir_and_the_common_dir(tmp_path: Path) -> None:
    main = tmp_path / "main"
    gitdir = main / ".git" / "worktrees" / "wt"
    gitdir.mkdir(parents=True)
    (gitdir / "commondir").write_text("../..\n")
    work = tmp_path / "wt"
    work.mkdir()
    (work / ".git").write_text(f"gitdir: {gitdir}\n")
    sub = work / "vendor" / "lib"
    (sub / ".git").mkdir(parents=True)
    (work / ".gitmodules").write_text('[submodule "lib"]\n\tpath = vendor/lib\n\tpath = ../x\n')
    profile = legacy_profile("workspace-write")
    assert profile is not None
    plan = resolve_plan(
        parse_context(sandbox_context_json(profile, uri(work), [uri(work)])), str(work)
    )
    root = next(r for r in plan.writable_roots if r.path == str(work))
    # Shallowest first, the order bwrap mounts them in.
    assert root.read_only == [
        str(work / ".git"),
        str(main / ".git"),
        str(work / ".gitmodules"),  # it names what runs as a submodule later
        str(gitdir),
        str(sub / ".git"),
    ]
    assert str(work / ".git") not in root.missing_protected


def test_symbolic_roots_bind_to_the_executor_roots(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    profile = legacy_profile("workspace-write")
    assert profile is not None
    context = sandbox_context_json(profile, uri(first), [uri(first), uri(second)])
    plan = resolve_plan(parse_context(context), str(first))
    assert {str(first), str(second)} <= {r.path for r in plan.writable_roots}


def test_deny_beats_write_for_the_same_path(repo: Path) -> None:
    context = {
        "permissions": {
            "type": "managed",
            "network": "restricted",
            "file_system": {
                "type": "restricted",
                "entries": [
                    {"path": {"type": "special", "value": {"kind": "root"}}, "access": "read"},
                    {"path": {"type": "path", "path": uri(repo)}, "access": "write"},
                    {"path": {"type": "path", "path": uri(repo)}, "access": "deny"},
                ],
            },
        }
    }
    plan = resolve_plan(parse_context(context), str(repo))
    assert plan.denied == [str(repo)] and plan.writable_roots == []


def test_read_entry_inside_a_writable_root_is_a_carve_out(repo: Path) -> None:
    (repo / "vendor").mkdir()
    context = {
        "permissions": {
            "type": "managed",
            "network": "restricted",
            "file_system": {
                "type": "restricted",
                "entries": [
                    {"path": {"type": "special", "value": {"kind": "root"}}, "access": "read"},
                    {"path": {"type": "path", "path": uri(repo)}, "access": "write"},
                    {"path": {"type": "path", "path": uri(repo / "vendor")}, "access": "read"},
                ],
            },
        }
    }
    plan = resolve_plan(parse_context(context), str(repo))
    assert str(repo / "vendor") in plan.writable_roots[0].read_only


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "missing field `permissions`"),
        (
            {"permissions": {"type": "managed", "file_system": {"type": "weird"}}},
            "unknown type `weird`",
        ),
        (
            {
                "permissions": {
                    "type": "managed",
                    "network": "sometimes",
                    "file_system": {"type": "unrestricted"},
                }
            },
            "unknown network policy",
        ),
        (
            {
                "permissions": {
                    "type": "managed",
                    "file_system": {
                        "type": "restricted",
                        "entries": [
                            {
                                "path": {
                                    "type": "special",
                                    "value": {"kind": "project_roots", "subpath": "../up"},
                                },
                                "access": "write",
                            }
                        ],
                    },
                }
            },
            "must stay inside the root",
        ),
    ],
)
def test_malformed_intent(raw: dict[str, object], message: str) -> None:
    with pytest.raises(SandboxPolicyError, match=message):
        parse_context(raw)


def test_unknown_special_kinds_are_ignored(repo: Path) -> None:
    context = {
        "permissions": {
            "type": "managed",
            "network": "restricted",
            "file_system": {
                "type": "restricted",
                "entries": [
                    {"path": {"type": "special", "value": {"kind": "root"}}, "access": "read"},
                    {
                        "path": {"type": "special", "value": {"kind": "from_the_future"}},
                        "access": "write",
                    },
                ],
            },
        }
    }
    plan = resolve_plan(parse_context(context), str(repo))
    assert plan.writable_roots == []


# -- the bwrap command line ------------------------------------------------------------


def test_bwrap_argv_snapshot(tmp_path: Path) -> None:
    work = tmp_path / f"w-{uuid.uuid4().hex[:4]}"
    (work / ".git").mkdir(parents=True)
    plan = SandboxPlan(
        full_read=True,
        readable_roots=["/"],
        full_write=False,
        denied=[],
        network_enabled=False,
        command_cwd=str(work),
        writable_roots=[
            WritableRoot("/tmp"),
            WritableRoot(str(work), [str(work / ".git")], [str(work / ".codex")]),
        ],
    )
    argv = bwrap_argv("/usr/bin/bwrap", plan, ["sh", "-c", "echo hi"], arg0=None, seccomp_fd=7)
    assert argv == [
        "/usr/bin/bwrap",
        "--die-with-parent",
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--bind",
        "/tmp",
        "/tmp",
        "--bind",
        str(work),
        str(work),
        "--ro-bind",
        str(work / ".git"),
        str(work / ".git"),
        "--perms",
        "555",
        "--tmpfs",
        str(work / ".codex"),
        "--remount-ro",
        str(work / ".codex"),
        "--unshare-user",
        "--unshare-pid",
        "--unshare-uts",
        "--unshare-ipc",
        "--cap-drop",
        "ALL",
        "--unshare-net",
        "--proc",
        "/proc",
        "--ro-bind",
        "/proc/sys",
        "/proc/sys",
        "--ro-bind-try",
        "/proc/sysrq-trigger",
        "/proc/sysrq-trigger",
        "--chdir",
        str(work),
        "--add-seccomp-fd",
        "7",
        "--",
        "sh",
        "-c",
        "echo hi",
    ]


def test_bwrap_argv_restricted_read_and_network_on(tmp_path: Path) -> None:
    plan = SandboxPlan(
        full_read=False,
        readable_roots=["/usr", str(tmp_path)],
        full_write=False,
        denied=[str(tmp_path)],
        network_enabled=True,
        command_cwd="/",
        writable_roots=[],
    )
    argv = bwrap_argv("bwrap", plan, ["true"], arg0="renamed", seccomp_fd=None)
    assert argv[:4] == ["bwrap", "--die-with-parent", "--tmpfs", "/"]
    assert argv[6:9] == ["--ro-bind", "/usr", "/usr"]
    assert "--unshare-net" not in argv and argv[-4:] == ["--argv0", "renamed", "--", "true"]
    assert ["--perms", "000", "--tmpfs", str(tmp_path), "--remount-ro", str(tmp_path)] == argv[
        argv.index("--perms") : argv.index("--perms") + 6
    ]
    assert os.path.isdir(tmp_path)


def test_loader_variables_are_held_back_from_the_launchers() -> None:
    from codexexec.sandbox.linux import loader_env

    launcher, held = loader_env.split(
        {
            "PATH": "/bin",
            "HOME": "/root",
            "LD_PRELOAD": "/w/evil.so",
            "LD_AUDIT": "/w/a.so",
            "GLIBC_TUNABLES": "glibc.malloc.check=3",
            "MALLOC_ARENA_MAX": "2",
            "GCONV_PATH": "/w",
            "LDFLAGS": "-L/opt",  # not the loader's: stays
        }
    )
    assert launcher == {"PATH": "/bin", "HOME": "/root", "LDFLAGS": "-L/opt"}
    assert set(held) == {
        "LD_PRELOAD",
        "LD_AUDIT",
        "GLIBC_TUNABLES",
        "MALLOC_ARENA_MAX",
        "GCONV_PATH",
    }
    # A NUL would split into extra bwrap arguments (`--bind / /…`) in --args: refused, and
    # the value (maybe a secret) is not quoted.
    from codexexec.sandbox.policy import SandboxPolicyError

    for env in ({"LD_X": "v\0--bind\0/\0/x"}, {"LD_\0X": "v"}, {"A=B": "v"}, {"": "v"}):
        with pytest.raises(SandboxPolicyError) as refused:
            loader_env.split(env)
        assert "--bind" not in str(refused.value)


def test_the_unconfined_stages_need_nothing_beyond_the_standard_library() -> None:
    """confine.py, netns_bridge.py and the warden run as `python -I -S FILE`: without
    site-packages, so nothing they import may need msgspec or any other installed package."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    modules = [
        "codexexec.sandbox.linux.confine",
        "codexexec.sandbox.linux.netns_bridge",
        "codexexec.sandbox.linux.seccomp",
        "codexexec.sandbox.linux.landlock",
        "codexexec.sandbox.linux.capabilities",
        "codexexec.server.warden",
    ]
    code = f"import sys; sys.path.insert(0, {str(root)!r}); " + "; ".join(
        f"import {name}" for name in modules
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
