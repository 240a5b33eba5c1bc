"""`transport/ws_auth.py` on its own: time passed in, so the clock-skew edges are exact."""

from __future__ import annotations

import pytest

from codexexec.transport.ws_auth import (
    EXPIRED_JWT,
    INVALID_HEADER,
    INVALID_JWT,
    JWT_NOT_YET_VALID,
    SignedBearer,
    WsAuthArgs,
    WsAuthError,
    authorize,
    capability_token,
    check_jwt,
    configure,
)
from tests.test_behaviour_ws_auth import SECRET, jwt

POLICY = SignedBearer(SECRET.encode(), None, None, 30)


def test_expiry_and_not_before_are_exact_to_the_second_with_the_skew() -> None:
    token = jwt({"exp": 1000, "nbf": 900})
    assert check_jwt(POLICY, token, 1030) is None
    assert check_jwt(POLICY, token, 1031) == EXPIRED_JWT
    assert check_jwt(POLICY, token, 870) is None
    assert check_jwt(POLICY, token, 869) == JWT_NOT_YET_VALID
    assert authorize(POLICY, f"Bearer {token}", 1030.9) is None  # whole seconds, as Codex


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": True},
        {"exp": 2**63},
        {"exp": 10, "nbf": "5"},
        {"exp": 10, "iss": 3},
        {"exp": 10, "aud": [1]},
    ],
)
def test_claims_of_the_wrong_type_are_an_invalid_jwt(claims: dict[str, object]) -> None:
    assert check_jwt(POLICY, jwt(claims), 0) == INVALID_JWT


def test_headers_that_are_not_a_plain_bearer_are_refused_before_any_check() -> None:
    policy = capability_token("t")
    assert authorize(policy, "Bearer t\u00e9", 0) == INVALID_HEADER
    assert authorize(policy, "Bearer " + "t" * 20000, 0) == INVALID_HEADER
    assert authorize(policy, "Bearer t", 0) is None


def test_a_jwt_with_padding_or_foreign_characters_is_invalid() -> None:
    head, body, signature = jwt({"exp": 10**9}).split(".")
    assert check_jwt(POLICY, f"{head}.{body}.{signature}", 0) is None
    assert check_jwt(POLICY, f"{head}=.{body}.{signature}", 0) == INVALID_JWT
    assert check_jwt(POLICY, f"{head}.{body}!.{signature}", 0) == INVALID_JWT


def test_the_secret_never_shows_in_a_repr() -> None:
    assert SECRET not in repr(POLICY)


def test_flags_are_checked_and_trimmed() -> None:
    settings = configure(
        WsAuthArgs("signed-bearer-token", shared_secret_file="/s", issuer=" i ", audience="  ")
    )
    assert settings is not None and (settings.issuer, settings.audience) == ("i", None)
    assert settings.max_clock_skew_seconds == 30
    assert configure(WsAuthArgs()) is None
    with pytest.raises(WsAuthError, match="64-character hex"):
        configure(WsAuthArgs("capability-token", token_sha256="zz" * 32))
