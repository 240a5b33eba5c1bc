"""environments.toml: Codex's validation table and texts, plus codexexec's registry entries."""

from __future__ import annotations

from pathlib import Path

import pytest

from codexexec.client import ExecServerError
from codexexec.environments.config import (
    EnvironmentConfigError,
    EnvironmentsConfig,
    RegistrySpec,
    StdioSpec,
    WebSocketSpec,
    config_path,
    load_config,
)
from codexexec.environments.manager import EnvironmentManager, _validate_snapshot

P = "exec-server protocol error: "


def load(tmp_path: Path, text: str, dialect: str = "codexexec") -> EnvironmentsConfig:
    path = tmp_path / "environments.toml"
    path.write_text(text)
    return load_config(path, dialect=dialect)  # type: ignore[arg-type]


def entry(body: str) -> str:
    return f"[[environments]]\n{body}\n"


LONG = "a" * 65

# (file body, Codex's message) - the reference's table, in the order Codex checks.
INVALID = [
    (entry('id = "local"\nurl = "ws://127.0.0.1:8765"'), "environment id `local` is reserved"),
    (entry('id = "None"\nurl = "ws://127.0.0.1:8765"'), "environment id `None` is reserved"),
    (entry('id = ""\nurl = "ws://127.0.0.1:8765"'), "environment id cannot be empty"),
    (
        entry('id = " devbox "\nurl = "ws://127.0.0.1:8765"'),
        "environment id ` devbox ` must not contain surrounding whitespace",
    ),
    (
        entry(f'id = "{LONG}"\nurl = "ws://127.0.0.1:8765"'),
        f"environment id `{LONG}` cannot be longer than 64 characters",
    ),
    (
        entry('id = "dev box"\nurl = "ws://127.0.0.1:8765"'),
        "environment id `dev box` must contain only ASCII letters, numbers, '-' or '_'",
    ),
    (
        entry('id = "devbox"\nurl = "http://127.0.0.1:8765"'),
        "environment url `http://127.0.0.1:8765` must use ws:// or wss://",
    ),
    (entry('id = "devbox"\nurl = "  "'), "environment url cannot be empty"),
    (
        entry('id = "devbox"\nurl = "ws://"'),
        "environment url `ws://` is invalid: HTTP format error: empty string",
    ),
    (
        entry('id = "devbox"\nurl = "ws://exa mple"'),
        "environment url `ws://exa mple` is invalid: HTTP format error: invalid uri character",
    ),
    (
        entry('id = "devbox"\nurl = "ws://127.0.0.1:8765"\nprogram = "codex"'),
        "environment `devbox` must set exactly one of url or program",
    ),
    (entry('id = "devbox"'), "environment `devbox` must set exactly one of url or program"),
    (entry('id = "devbox"\nprogram = " "'), "environment `devbox` program cannot be empty"),
    (
        entry('id = "devbox"\nargs = []'),
        "environment `devbox` args, env, and cwd require program",
    ),
    (
        entry('id = "ssh-dev"\nprogram = "ssh"\nconnect_timeout_sec = 1.0'),
        "environment `ssh-dev` connect_timeout_sec requires url",
    ),
    (
        entry('id = "d"\nprogram = "x"\nconnect_timeout_sec = 1\nauth_bearer_token = "t"'),
        "environment `d` auth_bearer_token requires url",
    ),
    (
        entry('id = "d"\nurl = "ws://10.0.0.1:1"\nauth_bearer_token = ""'),
        "exec-server WebSocket headers require wss:// or a loopback destination",
    ),
    (
        entry('id = "d"\nurl = "ws://127.0.0.1:1"\nauth_bearer_token = "a\\nb"'),
        "invalid value for exec-server WebSocket header `authorization`",
    ),
    (
        entry('id = "devbox"\nurl = "ws://127.0.0.1:1"') + entry('id = "devbox"\nprogram = "x"'),
        "environment id `devbox` is duplicated",
    ),
    ('default = "missing"\n', "default environment `missing` is not configured"),
    ('default = "local"\ninclude_local = false\n', "default environment `local` is not configured"),
    ('default = "  "\n', "default environment id cannot be empty"),
]


@pytest.mark.parametrize(("text", "message"), INVALID, ids=[m for _, m in INVALID])
def test_invalid_files_are_rejected_with_codexs_message(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(EnvironmentConfigError) as caught:
        load(tmp_path, text, dialect="codex")
    assert str(caught.value) == P + message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            "unknown = true\n",
            "unknown field `unknown`, expected one of `default`, `include_local`, `environments`",
        ),
        (
            entry('id = "devbox"\nurl = "ws://127.0.0.1:4512"\nunknown = true'),
            "unknown field `unknown`, expected one of `id`, `skills`, `url`, `auth_bearer_token`, "
            "`program`, `args`, `env`, `cwd`, `connect_timeout_sec`, `initialize_timeout_sec` "
            "in `environments`",
        ),
        (
            entry('id = "devbox"\nregistry = "http://127.0.0.1:1"'),
            "unknown field `registry`, expected one of `id`, `skills`, `url`, "
            "`auth_bearer_token`, `program`, `args`, `env`, `cwd`, `connect_timeout_sec`, "
            "`initialize_timeout_sec` in `environments`",
        ),
        ("default = [\n", "Invalid value (at end of document)"),  # Codex: its TOML parser's
        (entry('url = "ws://127.0.0.1:4512"'), "missing field `id` in `environments`"),
        (
            entry('id = 5\nurl = "ws://127.0.0.1:4512"'),
            "invalid type: integer `5`, expected a string in `environments.id`",
        ),
        (
            entry('id = "d"\nurl = "ws://127.0.0.1:1"\nargs = [1]'),
            "invalid type: integer `1`, expected a string in `environments.args`",
        ),
        (
            entry('id = "d"\nurl = "ws://127.0.0.1:1"\nconnect_timeout_sec = -1'),
            "cannot convert float seconds to Duration: value is negative "
            "in `environments.connect_timeout_sec`",
        ),
        (
            entry('id = "d"\nurl = "ws://127.0.0.1:1"\nconnect_timeout_sec = nan'),
            "cannot convert float seconds to Duration: value is either too big or NaN "
            "in `environments.connect_timeout_sec`",
        ),
        (
            entry('id = "d"\nurl = "ws://127.0.0.1:1"\nskills = 5'),
            "invalid type: integer `5`, expected struct ScopedSkillsConfig "
            "in `environments.skills`",
        ),
        (
            entry('id = "d"\nurl = "ws://127.0.0.1:1"\nskills = {x = 1}'),
            "unknown field `x`, expected `required` in `environments.skills`",
        ),
        (
            entry('id = "d"\nurl = "ws://127.0.0.1:1"\nskills = {required = "x"}'),
            'invalid type: string "x", expected a sequence in `environments.skills.required`',
        ),
    ],
)
def test_unparseable_files_name_the_file(tmp_path: Path, text: str, fragment: str) -> None:
    """Texts as Codex 0.169.0 prints them (its location line joined onto the message)."""
    with pytest.raises(EnvironmentConfigError) as caught:
        load(tmp_path, text, dialect="codex")
    message = str(caught.value)
    prefix = f"{P}failed to parse environment config `{tmp_path}/environments.toml`: "
    assert message.startswith(prefix)
    assert message.removeprefix(prefix) == fragment


def test_an_unreadable_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "environments.toml").mkdir()
    with pytest.raises(EnvironmentConfigError, match="failed to read environment config"):
        load_config(tmp_path / "environments.toml")


def test_codexs_example_file(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
default = "ssh-dev"
include_local = false

[[environments]]
id = "devbox"
url = " ws://127.0.0.1:4512 "
connect_timeout_sec = 12
initialize_timeout_sec = 34.0

[[environments]]
id = "ssh-dev"
program = " ssh "
args = ["dev", "codex exec-server --listen stdio"]
cwd = "workspace"
[environments.env]
CODEX_LOG = "debug"
""",
        dialect="codex",
    )
    assert config.default == "ssh-dev" and not config.include_local
    assert config.environments == (
        WebSocketSpec("devbox", "ws://127.0.0.1:4512", 12.0, 34.0),
        StdioSpec(
            "ssh-dev",
            "ssh",
            ("dev", "codex exec-server --listen stdio"),
            {"CODEX_LOG": "debug"},
            str(tmp_path / "workspace"),  # relative cwd: against the file's directory
        ),
    )


def test_defaults(tmp_path: Path) -> None:
    assert load(tmp_path, "").default == "local"
    assert load(tmp_path, 'default = "NONE"').default is None
    assert load(tmp_path, "include_local = false").default is None
    missing = load_config(tmp_path / "absent.toml")
    assert missing.default == "local" and missing.environments == () and missing.include_local


def test_registry_entries(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        entry('id = "devbox"\nregistry = "http://127.0.0.1:4444/"')
        + entry(
            'id = "prod"\nregistry = "https://rv.example"\nenvironment_id = "prod-7"\n'
            'token_file = "prod.token"\nconnect_timeout_sec = 3'
        )
        + entry('id = "ci"\nregistry = "https://rv.example"\ntoken_env = "CI_TOKEN"'),
    )
    assert config.environments == (
        RegistrySpec("devbox", "http://127.0.0.1:4444", "devbox"),
        RegistrySpec(
            "prod", "https://rv.example", "prod-7", None, str(tmp_path / "prod.token"), 3.0
        ),
        RegistrySpec("ci", "https://rv.example", "ci", "CI_TOKEN"),
    )
    assert config.environments[0].target == "devbox@http://127.0.0.1:4444"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            'id = "d"\nregistry = "ftp://x"',
            "environment `d` registry `ftp://x` must be an http:// or https:// URL",
        ),
        (
            'id = "d"\nregistry = "http://x"\nurl = "ws://x"',
            "environment `d` must set exactly one of url, program, or registry",
        ),
        (
            'id = "d"\nurl = "ws://x"\ntoken_env = "T"',
            "environment `d` environment_id, token_env, and token_file require registry",
        ),
        (
            'id = "d"\nregistry = "http://x"\ntoken_env = "T"\ntoken_file = "f"',
            "environment `d` must set at most one of token_env or token_file",
        ),
        (
            'id = "d"\nregistry = "http://x"\ntoken_env = "NOT A NAME"',
            "environment `d` token_env `NOT A NAME` is not a variable name",
        ),
        (
            'id = "d"\nregistry = "http://x"\nenvironment_id = "a b"',
            "environment `d` environment_id `a b` must be 1-64 ASCII letters, numbers, '-' or '_'",
        ),
    ],
)
def test_invalid_registry_entries(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(EnvironmentConfigError) as caught:
        load(tmp_path, entry(body))
    assert str(caught.value) == P + message


def test_the_file_lives_in_codexexec_home_or_the_platform_config_dir(tmp_path: Path) -> None:
    assert config_path({"CODEXEXEC_HOME": str(tmp_path)}) == tmp_path / "environments.toml"
    assert config_path({"XDG_CONFIG_HOME": str(tmp_path)}) == (
        tmp_path / "codexexec" / "environments.toml"
    )


@pytest.mark.parametrize(
    ("ids", "default", "message"),
    [
        ([""], None, "environment id cannot be empty"),
        (["local"], None, "environment id `local` is reserved for EnvironmentManager"),
        (["a", "a"], None, "environment id `a` is duplicated"),
        (["a"], "b", "default environment `b` is not configured"),
    ],
)
def test_snapshot_validation(ids: list[str], default: str | None, message: str) -> None:
    with pytest.raises(ExecServerError) as caught:
        _validate_snapshot(ids, default, True)
    assert str(caught.value) == P + message


async def test_manager_lookups_and_default_order() -> None:
    config = EnvironmentsConfig(
        default="devbox",
        environments=(
            StdioSpec("devbox", "/nonexistent"),
            StdioSpec("other", "/nonexistent"),
        ),
    )
    manager = EnvironmentManager.from_config(config)
    try:
        assert manager.default_environment_ids() == ["devbox", "local", "other"]
        assert manager.default_environment() is manager.get("devbox")
        assert manager.get("local") is manager.get("local") is not None
        assert manager.get("missing") is None
        with pytest.raises(ExecServerError, match="reserved for EnvironmentManager"):
            manager.upsert(StdioSpec("local", "x"))
        disabled = EnvironmentManager.from_config(EnvironmentsConfig(default=None))
        assert disabled.default_environment() is None and disabled.default_environment_ids() == []
        assert disabled.get("local") is not None
    finally:
        await manager.aclose()


def test_the_readme_example_loads(tmp_path: Path) -> None:
    import re

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    (example,) = re.findall(r"```toml\n(.*?)\n```", readme, re.S)
    config = load(tmp_path, example)
    assert [spec.kind for spec in config.environments] == ["registry", "stdio", "websocket"]
    assert config.default == "devbox"
