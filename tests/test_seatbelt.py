"""Seatbelt profile generation (pure text; runs anywhere, no sandbox-exec needed)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from codexexec.sandbox.macos.seatbelt import (
    SANDBOX_EXEC,
    SANDBOX_TYPE,
    SEATBELT_ENV,
    SeatbeltProfile,
    protected_names_regex,
    seatbelt_profile,
    seatbelt_regex_escape,
    wrap_command,
)
from codexexec.sandbox.plan import PROTECTED_METADATA_NAMES, SandboxPlan, WritableRoot

# Fictional macOS paths: absent on the Linux test host, so realpath leaves them alone.
PROJECT = "/Users/dev/project"
SCRATCH = "/Users/dev/scratch"

HEADERS = (
    "; ---- base ----",
    "; ---- file read ----",
    "; ---- file write ----",
    "; ---- denied paths ----",
    "; ---- network ----",
)

EXPECTED_BASE = """\
(version 1)
(deny default)

; ---- base ----
; Run and fork programs; signal and inspect only processes inside this sandbox.
(allow process-exec)
(allow process-fork)
(allow signal (target same-sandbox))
(allow process-info* (target same-sandbox))

; Discarding output into the null device is always fine.
(allow file-write-data
  (require-all (literal "/dev/null") (vnode-type CHARACTER-DEVICE)))

; Harmless system facts that runtimes probe at start-up.
(allow sysctl-read
  (sysctl-name "hw.activecpu")
  (sysctl-name "hw.logicalcpu")
  (sysctl-name "hw.logicalcpu_max")
  (sysctl-name "hw.memsize")
  (sysctl-name "hw.ncpu")
  (sysctl-name "hw.pagesize")
  (sysctl-name "hw.physicalcpu")
  (sysctl-name "hw.physicalcpu_max")
  (sysctl-name-prefix "hw.optional.")
  (sysctl-name "kern.argmax")
  (sysctl-name "kern.hostname")
  (sysctl-name "kern.maxfilesperproc")
  (sysctl-name "kern.maxproc")
  (sysctl-name "kern.osproductversion")
  (sysctl-name "kern.osrelease")
  (sysctl-name "kern.ostype")
  (sysctl-name "kern.osversion")
  (sysctl-name "kern.version")
  (sysctl-name-prefix "kern.proc.pid.")
  (sysctl-name "machdep.cpu.brand_string")
  (sysctl-name "sysctl.proc_cputype")
  (sysctl-name "vm.loadavg"))

; Terminals: open new pseudo-terminals, use the ones handed to us.
(allow pseudo-tty)
(allow file-read* file-write* file-ioctl (literal "/dev/ptmx"))
(allow file-read* file-write*
  (require-all (regex #"^/dev/ttys[0-9]+$") (extension "com.apple.sandbox.pty")))
(allow file-ioctl (regex #"^/dev/ttys[0-9]+$"))

; POSIX semaphores (Python multiprocessing locks).
(allow ipc-posix-sem)

"""

EXPECTED_READ_ONLY = (
    EXPECTED_BASE
    + """\
; ---- file read ----
(allow file-read*)

; ---- file write ----

; ---- denied paths ----

; ---- network ----
"""
)

NAMES_RE = (
    r"(\.[Gg][Ii][Tt]|\.[Aa][Gg][Ee][Nn][Tt][Ss]|\.[Cc][Oo][Dd][Ee][Xx]|\.[Aa][Ww][Ss])(/.*)?$"
)

EXPECTED_WORKSPACE_WRITE = (
    EXPECTED_BASE
    + """\
; ---- file read ----
(allow file-read*)

; ---- file write ----
(allow file-write*
  (require-all
    (subpath (param "WRITABLE_ROOT_0"))
    (require-not (literal (param "WRITABLE_ROOT_0_RO_0")))
    (require-not (subpath (param "WRITABLE_ROOT_0_RO_0")))
    (require-not (literal (param "WRITABLE_ROOT_0_RO_1")))
    (require-not (subpath (param "WRITABLE_ROOT_0_RO_1")))
    (require-not (regex #"^/Users/dev/project/"""
    + NAMES_RE
    + """"))))
(allow file-write*
  (require-all
    (subpath (param "WRITABLE_ROOT_1"))
    (require-not (regex #"^/Users/dev/scratch/"""
    + NAMES_RE
    + """"))))

; ---- denied paths ----

; ---- network ----
"""
)

EXPECTED_WORKSPACE_WRITE_PARAMS = {
    "WRITABLE_ROOT_0": PROJECT,
    "WRITABLE_ROOT_0_RO_0": f"{PROJECT}/.git",
    "WRITABLE_ROOT_0_RO_1": f"{PROJECT}/.codex",
    "WRITABLE_ROOT_1": SCRATCH,
}


def make_plan(
    *,
    full_read: bool = True,
    readable: list[str] | None = None,
    writable: list[WritableRoot] | None = None,
    full_write: bool = False,
    denied: list[str] | None = None,
    network: bool = False,
) -> SandboxPlan:
    return SandboxPlan(
        full_read,
        ["/"] if readable is None else readable,
        writable or [],
        full_write,
        denied or [],
        network,
        PROJECT,
    )


def read_only_plan() -> SandboxPlan:
    return make_plan()


def workspace_plan(*, denied: list[str] | None = None, network: bool = False) -> SandboxPlan:
    project = WritableRoot(
        PROJECT, read_only=[f"{PROJECT}/.git"], missing_protected=[f"{PROJECT}/.codex"]
    )
    return make_plan(writable=[project, WritableRoot(SCRATCH)], denied=denied, network=network)


# ---- small SBPL helpers for structural checks ----


def tokens(text: str) -> list[tuple[str, str]]:
    """(kind, value) for parens, strings and regex literals; comments and atoms skipped."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == ";":
            i = text.index("\n", i)
        elif ch in "()":
            out.append(("paren", ch))
            i += 1
        elif ch == '"' or text.startswith('#"', i):
            kind = "string" if ch == '"' else "regex"
            i += 1 if ch == '"' else 2
            start = i
            while text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            out.append((kind, text[start:i]))
            i += 1
        else:
            i += 1
    return out


def regex_literals(text: str) -> list[str]:
    return [value for kind, value in tokens(text) if kind == "regex"]


def without_regex_literals(text: str) -> str:
    return re.sub(r'#"(?:\\.|[^"\\])*"', '#""', text)


def referenced_params(text: str) -> list[str]:
    return re.findall(r'\(param "([A-Za-z0-9_]+)"\)', text)


def network_section(text: str) -> str:
    return text.split("; ---- network ----", 1)[1]


def assert_well_formed(profile: SeatbeltProfile) -> None:
    text = profile.text
    assert text.startswith("(version 1)\n(deny default)\n")
    depth = 0
    for kind, value in tokens(text):
        if kind == "paren":
            depth += 1 if value == "(" else -1
            assert depth >= 0
    assert depth == 0
    positions = [text.index(header) for header in HEADERS]
    assert positions == sorted(positions)
    for header in HEADERS:
        assert text.count(header) == 1
    # Every parameter used is defined, and every one defined is used.
    assert set(referenced_params(text)) == set(profile.params)
    # Host paths travel only as parameters, never in the text (regexes aside).
    bare = without_regex_literals(text)
    for value in profile.params.values():
        if value != "/":
            assert value not in bare


# ---- snapshots ----


def test_read_only_snapshot() -> None:
    profile = seatbelt_profile(read_only_plan())
    assert profile.text == EXPECTED_READ_ONLY
    assert profile.params == {}
    assert_well_formed(profile)


def test_workspace_write_snapshot() -> None:
    profile = seatbelt_profile(workspace_plan())
    assert profile.text == EXPECTED_WORKSPACE_WRITE
    assert profile.params == EXPECTED_WORKSPACE_WRITE_PARAMS
    assert list(profile.params) == list(EXPECTED_WORKSPACE_WRITE_PARAMS)
    assert_well_formed(profile)


def test_generation_is_deterministic() -> None:
    assert seatbelt_profile(workspace_plan()) == seatbelt_profile(workspace_plan())


# ---- file read ----


def test_restricted_read_one_clause_per_root() -> None:
    plan = make_plan(full_read=False, readable=["/usr", PROJECT, "/usr", SCRATCH])
    profile = seatbelt_profile(plan)
    assert "(allow file-read*)" not in profile.text
    for index in range(3):
        assert f'(allow file-read* (subpath (param "READABLE_ROOT_{index}")))' in profile.text
    assert profile.params == {
        "READABLE_ROOT_0": os.path.realpath("/usr"),
        "READABLE_ROOT_1": PROJECT,
        "READABLE_ROOT_2": SCRATCH,
    }
    assert_well_formed(profile)


def test_restricted_read_with_no_roots_allows_no_reads() -> None:
    profile = seatbelt_profile(make_plan(full_read=False, readable=[]))
    assert "file-read*" not in profile.text.split("; ---- file read ----", 1)[1]
    assert_well_formed(profile)


# ---- file write ----


def test_full_write_uses_root_regex() -> None:
    plan = make_plan(writable=[WritableRoot("/")], full_write=True)
    profile = seatbelt_profile(plan)
    assert '(allow file-write* (regex #"^/"))' in profile.text
    assert "WRITABLE_ROOT" not in profile.text
    assert profile.params == {}
    assert_well_formed(profile)


def test_read_only_plan_has_no_write_rules_beyond_dev_null() -> None:
    text = seatbelt_profile(read_only_plan()).text
    write_part = text.split("; ---- file write ----", 1)[1]
    assert "allow file-write" not in write_part


def test_every_carve_out_gets_literal_and_subpath() -> None:
    root = WritableRoot(
        PROJECT,
        read_only=[f"{PROJECT}/.git", f"{PROJECT}/docs"],
        missing_protected=[f"{PROJECT}/.codex"],
    )
    profile = seatbelt_profile(make_plan(writable=[root]))
    carve_outs = {k: v for k, v in profile.params.items() if "_RO_" in k}
    assert sorted(carve_outs.values()) == sorted([*root.read_only, *root.missing_protected])
    for key in carve_outs:
        assert f'(require-not (literal (param "{key}")))' in profile.text
        assert f'(require-not (subpath (param "{key}")))' in profile.text
    assert_well_formed(profile)


def test_protected_regex_blocks_names_in_any_case() -> None:
    pattern = re.compile(protected_names_regex(PROJECT))
    for name in PROTECTED_METADATA_NAMES:
        for spelled in (name, name.upper(), name.title()):
            assert pattern.match(f"{PROJECT}/{spelled}")
            assert pattern.match(f"{PROJECT}/{spelled}/config.toml")
        assert not pattern.match(f"{PROJECT}/{name}x")
        assert not pattern.match(f"{PROJECT}/sub/{name}")
        assert not pattern.match(f"{PROJECT}x/{name}")
    assert not pattern.match(f"{PROJECT}/src/main.py")


def test_protected_regex_for_filesystem_root() -> None:
    body = protected_names_regex("/")
    assert body.startswith("^/(")
    assert re.match(body, "/.git/HEAD") and not re.match(body, "//.git")


@pytest.mark.parametrize(
    "root",
    [
        "/Users/dev/my.project",
        "/Users/dev/c++ (old)/repo",
        '/Users/dev/say "hi"/x',
        "/Users/dev/it's here",
        "/Users/dev/a\\b",
        "/Users/dev/^all$ [the] {meta} a|b ?*",
    ],
)
def test_regex_escapes_root(root: str) -> None:
    profile = seatbelt_profile(make_plan(writable=[WritableRoot(root)]))
    (literal,) = [r for r in regex_literals(profile.text) if "[Gg]" in r]
    # The literal ends where it should: the root's quotes did not close it early.
    assert literal == protected_names_regex(root)
    # Every metacharacter in the root is escaped, so it matches only itself.
    pattern = re.compile(literal)
    assert pattern.match(f"{root}/.git")
    assert pattern.match(f"{root}/.codex/x")
    assert not pattern.match(f"{root}/other")
    # Swapping a punctuation character for a letter must break the match.
    for index, ch in enumerate(root):
        if not ch.isalnum() and ch != "/":
            mutated = root[:index] + "Q" + root[index + 1 :]
            assert not pattern.match(f"{mutated}/.git"), (root, index)
    # The parameter carries the raw path; the text carries it only inside the regex.
    assert profile.params["WRITABLE_ROOT_0"] == root
    assert root not in without_regex_literals(profile.text)
    assert_well_formed(profile)


def test_regex_escape_specific_characters() -> None:
    assert seatbelt_regex_escape("a.b+c(d) e\"f'g") == "a\\.b\\+c\\(d\\) e\\\"f'g"
    assert seatbelt_regex_escape("\\^$|?*[]{}") == "\\\\\\^\\$\\|\\?\\*\\[\\]\\{\\}"
    assert seatbelt_regex_escape("/plain/path_1-2") == "/plain/path_1-2"


def test_carve_out_under_another_writable_root_is_enforced_there() -> None:
    gitdir = f"{SCRATCH}/repos/project.git"
    project = WritableRoot(PROJECT, read_only=[f"{PROJECT}/.git", gitdir])
    profile = seatbelt_profile(make_plan(writable=[project, WritableRoot(SCRATCH)]))
    params = profile.params
    assert params["WRITABLE_ROOT_0_RO_0"] == f"{PROJECT}/.git"
    assert "WRITABLE_ROOT_0_RO_1" not in params  # outside root 0: it would never match there
    assert params["WRITABLE_ROOT_1_RO_0"] == gitdir
    assert_well_formed(profile)


def test_explicitly_writable_metadata_root_is_not_carved_out_of_itself() -> None:
    git = f"{PROJECT}/.git"
    project = WritableRoot(PROJECT, read_only=[git])
    profile = seatbelt_profile(make_plan(writable=[project, WritableRoot(git)]))
    assert profile.params["WRITABLE_ROOT_1"] == git
    assert not any(k.startswith("WRITABLE_ROOT_1_RO_") for k in profile.params)
    assert_well_formed(profile)


def test_paths_are_canonicalized(tmp_path: Path) -> None:
    real = tmp_path / "real"
    (real / ".git").mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(real)
    root = WritableRoot(str(link), read_only=[str(link / ".git")])
    plan = make_plan(
        full_read=False, readable=[str(link)], writable=[root], denied=[str(link / "secret")]
    )
    profile = seatbelt_profile(plan)
    canonical = os.path.realpath(real)
    assert profile.params["READABLE_ROOT_0"] == canonical
    assert profile.params["WRITABLE_ROOT_0"] == canonical
    assert profile.params["WRITABLE_ROOT_0_RO_0"] == os.path.join(canonical, ".git")
    assert profile.params["DENIED_PATH_0"] == os.path.join(canonical, "secret")
    assert regex_literals(profile.text)[-1] == protected_names_regex(canonical)
    assert str(link) not in profile.text
    assert_well_formed(profile)


# ---- denied paths ----


def test_denied_paths_block_read_and_write_after_allows() -> None:
    secret = f"{PROJECT}/secrets"
    profile = seatbelt_profile(workspace_plan(denied=[secret, "/Users/dev/.ssh", secret]))
    text = profile.text
    for index in range(2):
        read_rule = f'(deny file-read* (subpath (param "DENIED_PATH_{index}")))'
        write_rule = f'(deny file-write* (subpath (param "DENIED_PATH_{index}")))'
        assert text.count(read_rule) == 1 and text.count(write_rule) == 1
        # Later Seatbelt rules win, so the denials must come after the allows.
        assert text.index(read_rule) > text.rindex("(allow file-read*")
        assert text.index(write_rule) > text.rindex("(allow file-write*")
    assert profile.params["DENIED_PATH_0"] == secret
    assert profile.params["DENIED_PATH_1"] == "/Users/dev/.ssh"
    assert "DENIED_PATH_2" not in profile.params
    assert_well_formed(profile)


def test_denied_paths_apply_under_full_write() -> None:
    plan = make_plan(writable=[WritableRoot("/")], full_write=True, denied=["/Users/dev/.aws"])
    text = seatbelt_profile(plan).text
    assert text.index('(deny file-write* (subpath (param "DENIED_PATH_0")))') > text.index(
        '(allow file-write* (regex #"^/"))'
    )


# ---- network ----


def test_network_disabled_allows_nothing() -> None:
    text = seatbelt_profile(workspace_plan()).text
    assert network_section(text).strip() == ""
    for word in ("network-outbound", "network-inbound", "network-bind", "system-socket"):
        assert word not in text


def test_network_enabled() -> None:
    profile = seatbelt_profile(workspace_plan(network=True))
    section = network_section(profile.text)
    assert section.startswith("\n(allow network-outbound)\n(allow network-inbound)\n")
    assert "(allow system-socket (socket-domain AF_UNIX))" in section
    assert "(socket-domain AF_SYSTEM)" in section
    assert '(global-name "com.apple.trustd.agent")' in section
    assert "network-bind" not in section
    assert_well_formed(profile)


@pytest.mark.parametrize("network_enabled", [True, False])
def test_managed_network_allows_only_the_proxy_port(network_enabled: bool) -> None:
    profile = seatbelt_profile(workspace_plan(network=network_enabled), loopback_ports=[43117])
    text = profile.text
    assert '(allow network-outbound (remote ip "localhost:43117"))' in text
    assert "localhost:43117" in text
    assert "(allow network*)" not in text
    assert "(allow network-outbound)" not in text
    assert "(allow network-inbound)" not in text
    assert "localhost:*" not in text
    assert "network-bind" not in text
    assert "AF_UNIX" not in text
    assert len(re.findall(r"\(allow network-outbound", text)) == 1
    assert_well_formed(profile)


def test_managed_network_several_ports() -> None:
    text = seatbelt_profile(read_only_plan(), loopback_ports=(43117, 43118, 43117)).text
    rules = re.findall(r'\(allow network-outbound \(remote ip "localhost:(\d+)"\)\)', text)
    assert rules == ["43117", "43118"]


def test_managed_network_with_local_binding() -> None:
    text = seatbelt_profile(read_only_plan(), loopback_ports=[43117], allow_local_binding=True).text
    assert '(allow network-outbound (remote ip "localhost:43117"))' in text
    assert '(allow network-bind (local ip "localhost:*"))' in text
    assert '(allow network-inbound (local ip "localhost:*"))' in text
    assert "(allow network-outbound)" not in text
    assert '"*:*"' not in text


def test_local_binding_alone_does_not_open_network() -> None:
    text = seatbelt_profile(read_only_plan(), allow_local_binding=True).text
    assert "network-" not in text


@pytest.mark.parametrize("port", [0, 65536, -1, True])
def test_invalid_ports_are_refused(port: int) -> None:
    with pytest.raises(ValueError):
        seatbelt_profile(read_only_plan(), loopback_ports=[port])


# ---- invocation ----


def test_wrap_command_argv_shape() -> None:
    plan = workspace_plan(denied=[f"{PROJECT}/secrets"])
    argv = ["/bin/sh", "-c", "echo -DNOT_A_PARAM=1 -- hi"]
    wrapped = wrap_command(plan, argv)
    profile = seatbelt_profile(plan)
    assert wrapped[:3] == [SANDBOX_EXEC, "-p", profile.text]
    assert SANDBOX_EXEC == "/usr/bin/sandbox-exec"
    separator = wrapped.index("--")
    defines = wrapped[3:separator]
    assert defines == [f"-D{k}={v}" for k, v in profile.params.items()]
    assert all(d.startswith("-D") and "=" in d for d in defines)
    assert wrapped[separator + 1 :] == argv


def test_wrap_command_passes_network_context() -> None:
    wrapped = wrap_command(read_only_plan(), ["true"], loopback_ports=[43117])
    assert "localhost:43117" in wrapped[2]
    assert wrapped[3:] == ["--", "true"]


def test_constants() -> None:
    assert SANDBOX_TYPE == "macosSeatbelt"
    assert dict(SEATBELT_ENV) == {"CODEX_SANDBOX": "seatbelt"}
