"""The pure rules behind http/request and environmentConfig/read: URL parsing, headers,
redirect hops, and the TOML text of a config layer."""

from __future__ import annotations

import datetime
import tomllib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from codexexec.protocol import messages as m
from codexexec.server import toml_writer
from codexexec.server.http_wire import (
    MAX_REDIRECTS,
    HttpCall,
    InvalidRequest,
    RedirectError,
    follow_redirect,
    parse_url,
    request_headers,
    response_headers,
    with_url_credentials,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "http://127.0.0.1:5/sp ace?a=b c&d=é#frag",
            "http://127.0.0.1:5/sp%20ace?a=b%20c&d=%C3%A9",
        ),
        (" HTTP://Example.COM:80/a/./b/../c?x ", "http://example.com/a/c?x"),
        ("https://example.com:443", "https://example.com/"),
        ("http://[::1]:8080/x", "http://[::1]:8080/x"),
        ("https://bücher.de/", "https://xn--bcher-kva.de/"),
        ("http:example.com/x", "http://example.com/x"),
        ("http://h/x?q='\"<>", "http://h/x?q=%27%22%3C%3E"),
        ("http://h/a\\b", "http://h/a/b"),
    ],
)
def test_urls_are_normalised_as_a_whatwg_parser_would(text: str, expected: str) -> None:
    assert str(parse_url(text)) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "http/request url is invalid: relative URL without a base"),
        ("example.com/x", "http/request url is invalid: relative URL without a base"),
        ("http://", "http/request url is invalid: empty host"),
        ("http://a:99999/", "http/request url is invalid: invalid port number"),
        ("http://a:x/", "http/request url is invalid: invalid port number"),
        ("http://a b/", "http/request url is invalid: invalid domain character"),
        ("http://[::zz]/", "http/request url is invalid: invalid IPv6 address"),
        ("ws://h/", "http/request only supports http and https URLs, got ws"),
    ],
)
def test_bad_urls_are_refused_in_codex_words(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_url(text)
    assert str(info.value) == message


def test_user_info_becomes_basic_authorization_unless_one_is_given() -> None:
    url = parse_url("http://us%40er:p:w@h/")
    assert (url.username, url.password, str(url)) == ("us@er", "p:w", "http://h/")
    assert with_url_credentials([], url) == [("authorization", "Basic dXNAZXI6cDp3")]
    own = [("authorization", "Bearer t")]
    assert with_url_credentials(own, url) == own


def test_request_headers_keep_order_and_take_values_from_the_executor() -> None:
    headers = [
        m.HttpHeader("X-A", "1"),
        m.HttpHeader("x-a", "2"),
        m.HttpHeader("Authorization", "Bearer ", "TOKEN"),
        m.HttpHeader("X-Tab", "a\tb é"),
    ]
    resolved = request_headers(headers, {"TOKEN": "s3cret"})
    assert resolved == [
        ("x-a", "1"),
        ("x-a", "2"),
        ("authorization", "Bearer s3cret"),
        ("x-tab", "a\tb é"),
    ]
    for bad in ("a\rb", "a\nb", "a\x00b", "a\x7fb"):
        with pytest.raises(InvalidRequest, match="header value is invalid for X"):
            request_headers([m.HttpHeader("X", bad)], {})
    with pytest.raises(InvalidRequest) as info:
        request_headers([m.HttpHeader("X", "", "TOKEN")], {"TOKEN": "evil\r\nHost: x"})
    assert "evil" not in str(info.value)  # a secret never appears in an error
    for bad_name in ("", "X Y", "X:", "X\r\nY", "é"):
        with pytest.raises(InvalidRequest, match="header name is invalid"):
            request_headers([m.HttpHeader(bad_name, "v")], {})


def test_response_headers_drop_values_that_are_not_visible_ascii() -> None:
    raw = ((b"X-A", b"1"), (b"X-Bin", b"\xff"), (b"X-U", b"caf\xc3\xa9"), (b"X-Tab", b"a\tb"))
    assert response_headers(raw) == [
        {"name": "x-a", "value": "1"},
        {"name": "x-tab", "value": "a\tb"},
    ]


def _call(method: str = "POST", url: str = "http://h/start?q") -> HttpCall:
    headers = [
        ("content-type", "text/plain"),
        ("authorization", "a"),
        ("cookie", "c"),
        ("referer", "mine"),
        ("x-custom", "1"),
    ]
    return HttpCall(method, parse_url(url), headers, b"body")


def test_see_other_turns_into_a_bodyless_get_with_the_same_credentials() -> None:
    hop = follow_redirect(_call(), 303, "/next#frag")
    assert (hop.method, str(hop.url), hop.body, hop.redirects) == ("GET", "http://h/next", None, 1)
    assert hop.headers == [
        ("authorization", "a"),
        ("cookie", "c"),
        ("x-custom", "1"),
        ("referer", "http://h/start?q"),
    ]
    assert follow_redirect(_call("HEAD"), 302, "/n").method == "HEAD"
    kept = follow_redirect(_call(), 307, "/n")
    assert (kept.method, kept.body) == ("POST", b"body")
    assert ("content-type", "text/plain") in kept.headers


def test_a_redirect_to_another_origin_drops_credentials() -> None:
    hop = follow_redirect(_call(), 308, "http://other:8080/x")
    assert hop.headers == [
        ("content-type", "text/plain"),
        ("x-custom", "1"),
        ("referer", "http://h/"),
    ]
    downgrade = follow_redirect(_call(url="https://h/s"), 302, "http://h/x")
    assert not any(name == "referer" for name, _ in downgrade.headers)


def test_redirect_limits_and_schemes() -> None:
    call = _call()
    for _ in range(MAX_REDIRECTS):
        call = follow_redirect(call, 302, "/again")
    with pytest.raises(RedirectError, match=r"^too many redirects$"):
        follow_redirect(call, 302, "/again")
    with pytest.raises(RedirectError, match=r"^redirect target uses unsupported URL scheme: ftp$"):
        follow_redirect(_call(), 302, "ftp://h/x")


# -- TOML ------------------------------------------------------------------------------

_keys = st.text(min_size=1, max_size=8)
_scalars = (
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.datetimes(timezones=st.just(datetime.UTC) | st.none()).map(
        lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)
    )
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3),
    max_leaves=12,
)


@given(st.dictionaries(_keys, _values, max_size=5))
def test_toml_text_reads_back_as_the_same_document(document: dict[str, Any]) -> None:
    assert tomllib.loads(toml_writer.dumps(document)) == document


def test_toml_layout_matches_codex() -> None:
    document = tomllib.loads(
        'weird = 1979-05-27T07:32:00Z\n[s]\nurl = "u"\nh = { "X-Key" = "v" }\nn = 2.5\n'
    )
    assert toml_writer.dumps(document) == (
        'weird = 1979-05-27T07:32:00Z\n\n[s]\nurl = "u"\nn = 2.5\n\n[s.h]\nX-Key = "v"\n'
    )
