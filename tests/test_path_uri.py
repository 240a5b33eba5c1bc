"""Tests for codexexec.protocol.path_uri (PathUri, the wire identity of executor paths)."""

from __future__ import annotations

import base64
import copy
import dataclasses
import os
import pickle
from pathlib import PurePosixPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from codexexec.protocol.path_uri import InvalidPathUri, PathConvention, PathUri

POSIX = PathConvention.POSIX
WINDOWS = PathConvention.WINDOWS

posix_host_only = pytest.mark.skipif(os.name == "nt", reason="exercises a POSIX executor host")


def uri(text: str) -> PathUri:
    return PathUri.parse(text)


def opaque(payload: bytes) -> str:
    return "file:///%00/bad/path/" + base64.urlsafe_b64encode(payload).rstrip(b"=").decode()


@pytest.fixture
def windows_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend this process runs on a Windows executor."""
    monkeypatch.setattr(PathConvention, "native", classmethod(lambda cls: WINDOWS))


@pytest.fixture
def posix_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(PathConvention, "native", classmethod(lambda cls: POSIX))


# ---------------------------------------------------------------- spec examples


@posix_host_only
def test_posix_example_both_directions() -> None:
    path_uri = PathUri.from_host_native_path("/home/u/a b")
    assert path_uri.uri == "file:///home/u/a%20b"
    assert str(path_uri) == "file:///home/u/a%20b"
    assert path_uri.convention is POSIX
    assert uri("file:///home/u/a%20b").to_host_native_path() == "/home/u/a b"


def test_windows_drive_example_both_directions(windows_host: None) -> None:
    path_uri = PathUri.from_host_native_path("C:\\src\\x")
    assert path_uri.uri == "file:///C:/src/x"
    assert path_uri.convention is WINDOWS
    assert uri("file:///C:/src/x").to_host_native_path() == "C:\\src\\x"


def test_windows_unc_example_both_directions(windows_host: None) -> None:
    path_uri = PathUri.from_host_native_path("\\\\srv\\share\\f")
    assert path_uri.uri == "file://srv/share/f"
    assert path_uri.convention is WINDOWS
    assert uri("file://srv/share/f").to_host_native_path() == "\\\\srv\\share\\f"


def test_windows_conversion_with_explicit_convention_works_on_any_host() -> None:
    assert PathUri.from_native_path("C:/src/x", WINDOWS).uri == "file:///C:/src/x"
    assert PathUri.from_native_path("c:\\Src\\x\\", WINDOWS).uri == "file:///C:/Src/x"
    assert PathUri.from_native_path("C:\\", WINDOWS).uri == "file:///C:"
    assert PathUri.from_native_path("\\\\SRV\\share", WINDOWS).uri == "file://srv/share"
    assert PathUri.from_native_path("C:\\a b\\ü", WINDOWS).uri == "file:///C:/a%20b/%C3%BC"
    assert uri("file:///C:/src/x").inferred_native_path() == "C:\\src\\x"
    assert uri("file:///C:").inferred_native_path() == "C:\\"
    assert uri("file://srv/share/f").inferred_native_path() == "\\\\srv\\share\\f"


def test_windows_drive_root_round_trips_to_a_rooted_path(windows_host: None) -> None:
    root = PathUri.from_host_native_path("C:\\")
    assert root.uri == "file:///C:"
    assert root.to_host_native_path() == "C:\\"  # not the drive-relative "C:"
    assert root.to_host_native_bytes() == b"C:\\"


def test_posix_host_native_path_accepts_pathlike_and_bytes(posix_host: None) -> None:
    assert PathUri.from_host_native_path(PurePosixPath("/srv/data")).uri == "file:///srv/data"
    assert PathUri.from_host_native_path(b"/srv/data").uri == "file:///srv/data"


# ---------------------------------------------------------------- round trips


@posix_host_only
@pytest.mark.parametrize(
    ("native", "expected_uri"),
    [
        ("/", "file:///"),
        ("/home/u/a b", "file:///home/u/a%20b"),
        ("/tmp/100%", "file:///tmp/100%25"),
        ("/tmp/%41", "file:///tmp/%2541"),
        ("/tmp/a#b", "file:///tmp/a%23b"),
        ("/tmp/what?", "file:///tmp/what%3F"),
        ("/tmp/ünï/日本", "file:///tmp/%C3%BCn%C3%AF/%E6%97%A5%E6%9C%AC"),
        ("/tmp/back\\slash", "file:///tmp/back%5Cslash"),
        ("/tmp/a:b@c+d=e,f;g", "file:///tmp/a:b@c+d=e,f;g"),
        ('/tmp/"q" <x> {y} ^`', "file:///tmp/%22q%22%20%3Cx%3E%20%7By%7D%20%5E%60"),
        ("/tmp/tab\there", "file:///tmp/tab%09here"),
    ],
)
def test_round_trip_of_awkward_characters(native: str, expected_uri: str) -> None:
    path_uri = PathUri.from_host_native_path(native)
    assert path_uri.uri == expected_uri
    assert path_uri.to_host_native_path() == native
    reparsed = uri(path_uri.uri)
    assert reparsed == path_uri
    assert reparsed.to_host_native_path() == native


@posix_host_only
def test_non_utf8_bytes_round_trip_losslessly() -> None:
    raw = b"/data/\xff\xfe/caf\xe9"
    path_uri = PathUri.from_host_native_path(raw)
    assert path_uri.uri == "file:///data/%FF%FE/caf%E9"
    assert not path_uri.is_opaque
    assert path_uri.to_host_native_bytes() == raw
    assert uri(path_uri.uri).to_host_native_bytes() == raw
    # As str the undecodable bytes are surrogate escapes, exactly like os.fsdecode.
    assert path_uri.to_host_native_path() == os.fsdecode(raw)
    assert PathUri.from_host_native_path(os.fsdecode(raw)) == path_uri


@posix_host_only
def test_native_paths_are_normalized_lexically() -> None:
    assert PathUri.from_host_native_path("/a/./b//c/").uri == "file:///a/b/c"
    assert PathUri.from_host_native_path("/a/b/../c").uri == "file:///a/c"
    assert PathUri.from_host_native_path("/../../etc").uri == "file:///etc"
    assert PathUri.from_host_native_path("//double").uri == "file:///double"


# ---------------------------------------------------------------- parse / canonical form


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("file:///home/u/proj", "file:///home/u/proj"),
        ("file:///", "file:///"),
        ("file://localhost/etc/hosts", "file:///etc/hosts"),
        ("file://LocalHost/etc/hosts", "file:///etc/hosts"),
        ("file://localhost", "file:///"),
        ("FILE:///x", "file:///x"),
        ("file:/x/y", "file:///x/y"),
        ("file:///a/b/", "file:///a/b"),
        ("file:///a//b/./c", "file:///a/b/c"),
        ("file:///a/b/../c", "file:///a/c"),
        ("file:///a/%2e/%2E%2e/c", "file:///c"),
        ("file:///../..", "file:///"),
        ("file:///a%41%7e%2d", "file:///aA~-"),
        ("file:///%e2%82%ac", "file:///%E2%82%AC"),
        ("file:///a b/€", "file:///a%20b/%E2%82%AC"),
        ("file:///a\\b", "file:///a/b"),
        ("file:///c:/Src", "file:///C:/Src"),
        ("file:///C:/", "file:///C:"),
        ("file:///C:/../..", "file:///C:"),
        ("file://SRV.example/Share/x", "file://srv.example/Share/x"),
        ("file://srv/share/../..", "file://srv/share"),
    ],
)
def test_parse_canonicalizes(text: str, canonical: str) -> None:
    parsed = uri(text)
    assert parsed.uri == canonical
    assert uri(canonical) == parsed
    assert hash(uri(canonical)) == hash(parsed)


def test_localhost_normalizes_to_the_same_identity() -> None:
    assert uri("file://localhost/home/u") == uri("file:///home/u")
    assert {uri("file://localhost/home/u"), uri("file:///home/u")} == {uri("file:///home/u")}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file:///tmp/x?y=1", "must not have a query"),
        ("file:///tmp/x?", "must not have a query"),
        ("file:///tmp/x#frag", "must not have a fragment"),
        ("file:///tmp/x#", "must not have a fragment"),
        ("file://srv:445/share/x", "must not have a port"),
        ("file://user:pw@srv/share", "must not contain credentials"),
        ("file://user@srv/share", "must not contain credentials"),
        ("file://[::1]/share", "not supported"),
        ("file://bad host/share", "invalid host"),
        ("http://example.com/x", "unsupported URI scheme `http:`"),
        ("https:///x", "unsupported URI scheme `https:`"),
        ("codex:///x", "unsupported URI scheme"),
        ("/tmp", "expected a file URI, got native path `/tmp`"),
        ("C:\\x", "expected a file URI, got native path `C:\\x`"),
        ("c:/x", "expected a file URI, got native path `c:/x`"),
        ("\\\\srv\\share", "expected a file URI, got native path"),
        ("relative", "expected a file URI, got relative path `relative`"),
        ("./x", "expected a file URI, got relative path"),
        ("", "expected a file URI, got an empty string"),
        ("file:relative", "does not have an absolute path"),
        ("file:///%00", "encoded NUL"),
        ("file:///a%00b", "encoded NUL"),
        ("file:///tmp/%00/bad/path/L2E", "encoded NUL"),
        ("file:///%00/bad/path", "encoded NUL"),
        ("file:///%00/bad/path/L2E/extra", "encoded NUL"),
        ("file://srv/%00/bad/path/L2E", "encoded NUL"),
        ("file:///%00/bad/path/", "invalid base64url"),
        ("file:///%00/bad/path/L2E=", "invalid base64url"),
        ("file:///%00/bad/path/L2F", "invalid base64url"),  # non-canonical trailing bits
        ("file:///%00/bad/path/cmVs", "does not encode an absolute path"),  # b"rel"
        ("file:///a%zz", "invalid percent-escape"),
        ("file:///a%4", "invalid percent-escape"),
        ("file:///a\nb", "control character"),
        ("file://srv", "has no share name"),
        ("file://srv/", "has no share name"),
    ],
)
def test_parse_rejects(text: str, message: str) -> None:
    with pytest.raises(InvalidPathUri) as excinfo:
        uri(text)
    assert message in str(excinfo.value)
    assert isinstance(excinfo.value, ValueError)
    if text:
        assert f"`{text}`" in str(excinfo.value)  # the input is quoted for the user


def test_constructor_validates_like_parse() -> None:
    assert PathUri("file://localhost/a/") == uri("file:///a")
    assert PathUri("file://localhost/a/").uri == "file:///a"
    with pytest.raises(InvalidPathUri, match="native path"):
        PathUri("/tmp")
    with pytest.raises(InvalidPathUri, match="expected a file URI string"):
        PathUri(42)  # type: ignore[arg-type]


def test_pathuri_is_immutable_and_survives_pickle_and_copy() -> None:
    path_uri = uri("file:///srv/a%20b")
    with pytest.raises(dataclasses.FrozenInstanceError):
        path_uri.uri = "file:///elsewhere"  # type: ignore[misc]
    for clone in (
        pickle.loads(pickle.dumps(path_uri)),
        copy.copy(path_uri),
        copy.deepcopy(path_uri),
    ):
        assert clone == path_uri
        assert clone.basename == "a b"
        assert clone.parent() == uri("file:///srv")
    assert repr(path_uri) == "PathUri(uri='file:///srv/a%20b')"
    assert dataclasses.asdict(path_uri) == {"uri": "file:///srv/a%20b"}


# ---------------------------------------------------------------- conventions


@pytest.mark.parametrize(
    ("text", "convention"),
    [
        ("file:///home/u", POSIX),
        ("file:///", POSIX),
        ("file:///C:/src", WINDOWS),
        ("file:///C:", WINDOWS),
        ("file:///C:foo/bar", POSIX),  # not a drive segment
        ("file:///CD:/x", POSIX),
        ("file://srv/share", WINDOWS),
        (opaque(b"/a\x00b"), POSIX),
        (opaque("C:\\a\x00".encode("utf-16-le")), WINDOWS),
        (opaque("\\\\?\\C:\\x".encode("utf-16-le")), WINDOWS),
    ],
)
def test_convention_is_inferred_from_the_uri(text: str, convention: PathConvention) -> None:
    assert uri(text).convention is convention


@posix_host_only
@pytest.mark.parametrize("text", ["file:///C:/src/x", "file:///C:", "file://srv/share/f"])
def test_windows_uris_parse_but_are_never_projected_onto_a_posix_host(text: str) -> None:
    path_uri = uri(text)
    with pytest.raises(InvalidPathUri, match="is a windows path and is not valid on this posix"):
        path_uri.to_host_native_path()
    with pytest.raises(InvalidPathUri, match="windows path"):
        path_uri.to_host_native_bytes()


def test_posix_uris_are_never_projected_onto_a_windows_host(windows_host: None) -> None:
    with pytest.raises(InvalidPathUri, match="is a posix path and is not valid on this windows"):
        uri("file:///home/u").to_host_native_path()


@posix_host_only
def test_native_convention_on_linux_is_posix() -> None:
    assert PathConvention.native() is POSIX


@posix_host_only
def test_posix_path_that_looks_like_a_drive_stays_posix() -> None:
    # file:///C:/x would be read back as a Windows drive path, so use the opaque form.
    path_uri = PathUri.from_host_native_path("/C:/x")
    assert path_uri.is_opaque
    assert path_uri.convention is POSIX
    assert path_uri.to_host_native_path() == "/C:/x"
    assert PathUri.from_host_native_path("/C:x/y").uri == "file:///C:x/y"


def test_path_segments_split_by_convention() -> None:
    assert POSIX.path_segments("a\\b//c/") == ["a\\b", "c"]
    assert WINDOWS.path_segments("a\\b//c/") == ["a", "b", "c"]
    assert PathConvention("posix") is POSIX and WINDOWS.value == "windows"


# ---------------------------------------------------------------- relative and unrepresentable


@pytest.mark.parametrize("path", ["x", "", "./x", "../etc", b"rel", PurePosixPath("rel")])
def test_relative_paths_are_rejected(path: str | bytes | PurePosixPath) -> None:
    with pytest.raises(InvalidPathUri, match="is not absolute"):
        PathUri.from_native_path(path, POSIX)


@pytest.mark.parametrize("path", ["x\\y", "C:", "C:foo", "\\rooted", "/rooted"])
def test_relative_windows_paths_are_rejected(path: str) -> None:
    with pytest.raises(InvalidPathUri, match=r"path `.*` is not absolute"):
        PathUri.from_native_path(path, WINDOWS)


@posix_host_only
def test_relative_host_path_error_quotes_the_input() -> None:
    with pytest.raises(InvalidPathUri) as excinfo:
        PathUri.from_host_native_path("x")
    assert str(excinfo.value) == "path `x` is not absolute"


@posix_host_only
@pytest.mark.parametrize("raw", [b"/a\x00b", b"/\x00", b"/tmp/x\x00/../y"])
def test_nul_bytes_use_the_opaque_fallback(raw: bytes) -> None:
    path_uri = PathUri.from_host_native_path(raw)
    assert path_uri.is_opaque
    assert path_uri.uri == opaque(raw)
    assert path_uri.uri.startswith("file:///%00/bad/path/")
    assert path_uri.convention is POSIX
    assert path_uri.to_host_native_bytes() == raw  # the raw bytes come back unchanged
    assert path_uri.to_host_native_path() == os.fsdecode(raw)
    assert uri(path_uri.uri) == path_uri
    assert path_uri.inferred_native_path() == path_uri.uri


@pytest.mark.parametrize(
    "path",
    [
        "\\\\?\\C:\\very\\long",
        "\\\\.\\PhysicalDrive0",
        "//?/C:/x",
        "C:\\a\x00b",
        "\\\\localhost\\share\\x",  # would collapse to file:///share/x
        "\\\\bad host\\share",
        "\\\\srv",
        "C:\\lone\ud800surrogate",
    ],
)
def test_unrepresentable_windows_paths_use_utf16_opaque_fallback(path: str) -> None:
    path_uri = PathUri.from_native_path(path, WINDOWS)
    assert path_uri.is_opaque
    assert path_uri.convention is WINDOWS
    assert uri(path_uri.uri) == path_uri
    payload = base64.urlsafe_b64decode(path_uri.uri.rsplit("/", 1)[1] + "==")
    decoded = payload.decode("utf-16-le", "surrogatepass")
    assert decoded.startswith("\\\\") or decoded[1:2] == ":"


def test_opaque_windows_path_round_trips_on_a_windows_host(windows_host: None) -> None:
    path = "\\\\?\\C:\\very\\long"
    assert PathUri.from_host_native_path(path).to_host_native_path() == path


def test_opaque_uris_have_no_parent_basename_or_joins() -> None:
    bad = uri(opaque(b"/a\x00b"))
    assert bad.parent() is None
    assert bad.basename is None
    assert list(bad.ancestors()) == [bad]
    with pytest.raises(InvalidPathUri, match="opaque"):
        bad.join("x")
    assert bad.starts_with(bad)
    assert not bad.starts_with(uri("file:///"))
    assert not uri("file:///a").starts_with(bad)


# ---------------------------------------------------------------- parent / basename


@pytest.mark.parametrize(
    ("text", "parent", "basename"),
    [
        ("file:///home/u/a%20b", "file:///home/u", "a b"),
        ("file:///home", "file:///", "home"),
        ("file:///", None, None),
        ("file:///C:/src", "file:///C:", "src"),
        ("file:///C:", None, None),
        ("file://srv/share/dir", "file://srv/share", "dir"),
        ("file://srv/share", None, None),
        ("file:///a/%C3%BC%25", "file:///a", "ü%"),
        ("file:///a/%FF", "file:///a", "\udcff"),
    ],
)
def test_parent_and_basename(text: str, parent: str | None, basename: str | None) -> None:
    path_uri = uri(text)
    got = path_uri.parent()
    assert (got.uri if got is not None else None) == parent
    assert path_uri.basename == basename


def test_ancestors_walk_up_to_the_anchor() -> None:
    got = [a.uri for a in uri("file:///C:/a/b").ancestors()]
    assert got == ["file:///C:/a/b", "file:///C:/a", "file:///C:"]
    assert [a.uri for a in uri("file:///x").ancestors()] == ["file:///x", "file:///"]


# ---------------------------------------------------------------- join


@pytest.mark.parametrize(
    ("base", "text", "expected"),
    [
        ("file:///home/u", "proj/src", "file:///home/u/proj/src"),
        ("file:///home/u", "a b", "file:///home/u/a%20b"),
        ("file:///home/u", "./x//y/.", "file:///home/u/x/y"),
        ("file:///home/u", "", "file:///home/u"),
        ("file:///home/u", "..", "file:///home"),
        ("file:///home/u", "../../../../etc/passwd", "file:///etc/passwd"),
        ("file:///home/u", "/etc/hosts", "file:///etc/hosts"),
        ("file:///home/u", "100%?#x", "file:///home/u/100%25%3F%23x"),
        ("file:///home/u", "%2F", "file:///home/u/%252F"),
        ("file:///home/u", "a\\b", "file:///home/u/a%5Cb"),
        ("file:///", "..", "file:///"),
        ("file:///C:/src", "a\\b/c", "file:///C:/src/a/b/c"),
        ("file:///C:/src", "..\\..\\..\\Windows", "file:///C:/Windows"),
        ("file:///C:/src", "\\Windows", "file:///C:/Windows"),
        ("file:///C:/src", "D:\\other", "file:///D:/other"),
        ("file:///C:/src", "\\\\srv\\share\\x", "file://srv/share/x"),
        ("file://srv/share/dir", "..\\..\\..", "file://srv/share"),
        ("file://srv/share/dir", "/x", "file://srv/share/x"),
        ("file://srv/share/dir", "C:\\y", "file:///C:/y"),
    ],
)
def test_join(base: str, text: str, expected: str) -> None:
    assert uri(base).join(text).uri == expected


@pytest.mark.parametrize(
    ("base", "text", "message"),
    [
        ("file:///home/u", "a\x00b", "NUL"),
        ("file:///home/u", "/a\x00", "NUL"),
        ("file:///C:/src", "C:foo", "drive-relative"),
        ("file:///C:/src", "D:", "drive-relative"),
        ("file:///C:/src", "\\\\?\\C:\\x", "cannot be represented"),
        ("file:///", "C:", "Windows drive"),
        ("file:///home/u", "/C:/x", "cannot be represented"),
    ],
)
def test_join_rejects(base: str, text: str, message: str) -> None:
    with pytest.raises(InvalidPathUri, match=message):
        uri(base).join(text)


def test_join_result_stays_under_base_for_dotdot_attempts() -> None:
    root = uri("file:///C:")
    for attempt in ("..", "../..", "..\\..\\x", "a/../../.."):
        assert root.join(attempt).starts_with(root)


# ---------------------------------------------------------------- starts_with


@pytest.mark.parametrize(
    ("path", "base", "expected"),
    [
        ("file:///home/u/proj", "file:///home/u", True),
        ("file:///home/u", "file:///home/u", True),
        ("file:///home/u", "file:///", True),
        ("file:///home/user", "file:///home/u", False),  # segment-wise, not textual
        ("file:///home", "file:///home/u", False),
        ("file:///C:/src", "file:///", False),  # different conventions
        ("file:///C:/src/x", "file:///C:/src", True),
        ("file:///C:/src/x", "file:///D:/src", False),
        ("file://srv/share/x", "file://srv/share", True),
        ("file://srv/share/x", "file://other/share", False),
        ("file://srv/share/x", "file:///share", False),
        ("file:///home/u/a%2Fb", "file:///home/u", False),  # fails closed on encoded /
        ("file:///C:/src/a%5Cb", "file:///C:/src", False),  # fails closed on encoded \
        ("file:///src/a%5Cb", "file:///src", True),  # \ is an ordinary POSIX character
    ],
)
def test_starts_with(path: str, base: str, expected: bool) -> None:
    assert uri(path).starts_with(uri(base)) is expected


@posix_host_only
def test_encoded_separator_is_not_projected_onto_the_host() -> None:
    sneaky = uri("file:///home/u/..%2F..%2Fetc")
    assert sneaky.basename == "../../etc"
    with pytest.raises(InvalidPathUri, match="encoded `/`"):
        sneaky.to_host_native_path()


# ---------------------------------------------------------------- properties

_posix_segment = st.text(min_size=1).filter(lambda s: "/" not in s and "\x00" not in s)
_posix_segment = _posix_segment.filter(lambda s: s not in (".", ".."))
_byte_segment = st.binary(min_size=1).filter(lambda b: b"/" not in b and b"\x00" not in b)
_byte_segment = _byte_segment.filter(lambda b: b not in (b".", b".."))


@posix_host_only
@given(st.lists(_posix_segment, max_size=6))
def test_property_str_paths_round_trip(segments: list[str]) -> None:
    path = "/" + "/".join(segments)
    path_uri = PathUri.from_host_native_path(path)
    assert path_uri.to_host_native_path() == path
    assert uri(path_uri.uri) == path_uri
    assert uri(path_uri.uri).to_host_native_path() == path


@posix_host_only
@given(st.lists(_byte_segment, max_size=6))
def test_property_byte_paths_round_trip(segments: list[bytes]) -> None:
    raw = b"/" + b"/".join(segments)
    path_uri = PathUri.from_host_native_path(raw)
    assert path_uri.to_host_native_bytes() == raw
    assert uri(path_uri.uri).to_host_native_bytes() == raw
    if not path_uri.is_opaque:
        assert path_uri.basename == (
            segments[-1].decode("utf-8", "surrogateescape") if segments else None
        )


@given(st.text(alphabet="file:/\\%2eEfF0AaC.?# é\x00", max_size=24))
def test_property_parse_is_idempotent(text: str) -> None:
    try:
        parsed = uri(text)
    except InvalidPathUri:
        return
    assert uri(parsed.uri).uri == parsed.uri
    assert uri(parsed.uri).convention is parsed.convention


@given(st.lists(_posix_segment, max_size=5), st.lists(_posix_segment, max_size=3))
def test_property_join_child_starts_with_base(base: list[str], child: list[str]) -> None:
    base_uri = PathUri.from_native_path("/" + "/".join(base), POSIX)
    if base_uri.is_opaque:
        return
    try:
        joined = base_uri.join("/".join(child))
    except InvalidPathUri:
        return  # would name a Windows drive (only possible from the root)
    assert joined.starts_with(base_uri)
    assert len(joined.uri) >= len(base_uri.uri)
