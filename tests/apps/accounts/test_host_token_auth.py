"""HostTokenAuthentication: ``Authorization: Token <host token>``; 401, never 403."""

from __future__ import annotations

import pytest
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from apps.accounts.auth import HostRetired, HostTokenAuthentication
from tests.factories import make_host

pytestmark = pytest.mark.django_db


def authenticate(header: str | None):
    factory = APIRequestFactory()
    extra = {"HTTP_AUTHORIZATION": header} if header is not None else {}
    request = Request(factory.post("/api/v1/scheduler/", **extra))
    return HostTokenAuthentication().authenticate(request)


def test_a_valid_token_authenticates_the_host_and_its_volunteers_user():
    host = make_host()

    user, auth = authenticate(f"Token {host.token}")

    assert auth == host
    assert user == host.volunteer.user


def test_the_keyword_is_case_insensitive():
    host = make_host()

    assert authenticate(f"token {host.token}")[1] == host


@pytest.mark.parametrize("header", [None, "", "Bearer abc", "Basic dXNlcjpwdw=="])
def test_other_schemes_are_left_to_other_authenticators(header):
    assert authenticate(header) is None


@pytest.mark.parametrize("header", ["Token", "Token a b", "Token wrong", "Token \u00e9t\u00e9"])
def test_malformed_or_unknown_tokens_fail(header):
    make_host()

    with pytest.raises(exceptions.AuthenticationFailed):
        authenticate(header)


def test_retired_hosts_are_refused_with_their_own_code():
    host = make_host(retired=True)

    with pytest.raises(HostRetired) as refused:
        authenticate(f"Token {host.token}")

    assert refused.value.default_code == "host_retired"


def test_disabled_accounts_are_refused():
    host = make_host()
    host.volunteer.user.is_active = False
    host.volunteer.user.save(update_fields=["is_active"])

    with pytest.raises(exceptions.AuthenticationFailed):
        authenticate(f"Token {host.token}")


def test_the_challenge_makes_drf_answer_401():
    request = Request(APIRequestFactory().get("/"))

    assert HostTokenAuthentication().authenticate_header(request) == "Token"
