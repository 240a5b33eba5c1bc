"""`sandbox/globs.py`: the pattern language and the bounds of a walk."""

from __future__ import annotations

from pathlib import Path

import pytest

from codexexec.sandbox import globs


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/w/**/*.env", "/w/a.env", True),
        ("/w/**/*.env", "/w/x/y/a.env", True),
        ("/w/*.env", "/w/x/a.env", False),
        ("/w/?.env", "/w/a.env", True),
        ("/w/?.env", "/w/ab.env", False),
        ("/w/[!a]*.env", "/w/b.env", True),
        ("/w/[!a]*.env", "/w/a.env", False),
        ("/w/[ab].txt", "/w/b.txt", True),
        ("/w/[a", "/w/[a", True),  # an unclosed class is literal
        ("/w/**", "/w/x/y", True),
        ("/w/a.b", "/w/axb", False),  # `.` is literal
    ],
)
def test_patterns(pattern: str, path: str, matches: bool) -> None:
    assert bool(globs.translate(pattern).fullmatch(path)) is matches


def test_expansion_is_bounded_in_matches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for index in range(5):
        (tmp_path / f"{index}.env").write_text("")
    monkeypatch.setattr(globs, "MAX_MATCHES", 4)
    with pytest.raises(globs.GlobError, match="matches more than 4 paths"):
        globs.expand(f"{tmp_path}/*.env", None)


def test_expansion_is_bounded_in_entries_scanned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for index in range(20):
        (tmp_path / f"d{index}").mkdir()
    monkeypatch.setattr(globs, "MAX_SCANNED", 10)
    with pytest.raises(globs.GlobError, match="more than 10 entries"):
        globs.expand(f"{tmp_path}/**/*.env", None)


def test_symlinks_are_neither_matched_nor_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.env").write_text("")
    work = tmp_path / "work"
    work.mkdir()
    (work / "link").symlink_to(outside)
    (work / "l.env").symlink_to(outside / "x.env")
    (work / "real.env").write_text("")
    assert globs.expand(f"{work}/**/*.env", None) == [str(work / "real.env")]


def test_a_pattern_without_double_star_does_not_descend(tmp_path: Path) -> None:
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep" / "a.env").write_text("")
    (tmp_path / "b.env").write_text("")
    assert globs.expand(f"{tmp_path}/*.env", None) == [str(tmp_path / "b.env")]
