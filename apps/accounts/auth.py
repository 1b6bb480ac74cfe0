"""DRF authentication of worker calls by host token: ``Authorization: Token <token>``.

``request.user`` becomes the volunteer's Django user and ``request.auth`` the ``Host``.
``authenticate_header`` makes DRF answer 401 (with ``WWW-Authenticate: Token``), not 403,
when the header is missing or wrong.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.request import Request

from .models import Host
from .selectors import host_by_token

KEYWORD = "Token"


class HostRetired(exceptions.AuthenticationFailed):
    default_detail = "This host was retired; attach it again with your account key."
    default_code = "host_retired"


class HostTokenAuthentication(BaseAuthentication):
    keyword = KEYWORD

    def authenticate(self, request: Request) -> tuple[Any, Host] | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword.lower().encode():
            return None  # not ours: the permission check answers 401
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed(
                "Invalid Authorization header: use 'Token <host token>'.")
        try:
            token = parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Invalid host token.") from None
        host = host_by_token(token)
        if host is None:
            raise exceptions.AuthenticationFailed(
                "Invalid host token: attach this host again with your account key.")
        if host.retired:
            raise HostRetired()
        if not host.volunteer.user.is_active:
            raise exceptions.AuthenticationFailed("This account is disabled.")
        return host.volunteer.user, host

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


class HostTokenScheme(OpenApiAuthenticationExtension):
    """How the OpenAPI schema names this authentication (drf-spectacular finds it by class)."""

    target_class = "apps.accounts.auth.HostTokenAuthentication"
    name = "hostToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "apiKey", "in": "header", "name": "Authorization",
                "description": "`Token <host token>`, as returned by `POST /api/v1/attach/`."}
