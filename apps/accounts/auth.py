"""DRF authentication of worker calls by host token: ``Authorization: Token <token>``.

``request.user`` becomes the volunteer's Django user (loaded only if something reads it) and
``request.auth`` the ``Host``. ``authenticate_header`` makes DRF answer 401 (with
``WWW-Authenticate: Token``), not 403, when the header is missing or wrong.

Every worker call starts here, so the lookup is one statement that reads the host and whether
its owner's account is active, the same rules as ``selectors.host_by_token``: by the token's
sha256, confirmed with ``hmac.compare_digest``.
"""

from __future__ import annotations

import hmac
from typing import Any

from django.contrib.auth import get_user_model
from django.utils.functional import SimpleLazyObject
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.request import Request

from .models import Host, Volunteer
from .selectors import MAX_SECRET_LENGTH, secret_hash

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
        host = _host_by_token(token)
        if host is None:
            raise exceptions.AuthenticationFailed(
                "Invalid host token: attach this host again with your account key.")
        if host.retired:
            raise HostRetired()
        if not host.owner_is_active:
            raise exceptions.AuthenticationFailed("This account is disabled.")
        user_id = host.owner_user_id
        return SimpleLazyObject(lambda: get_user_model().objects.get(pk=user_id)), host

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


def _host_by_token(token: str) -> Host | None:
    """The host this token was issued to, or None; retired hosts too (the caller refuses them).

    The host carries ``owner_is_active`` and ``owner_user_id`` from its volunteer's user.
    """
    if not 0 < len(token) <= MAX_SECRET_LENGTH:
        return None
    digest = secret_hash(token)
    user_model = get_user_model()
    sql = (f"SELECT h.*, u.{user_model._meta.pk.column} AS owner_user_id, "
           f"u.is_active AS owner_is_active FROM {Host._meta.db_table} h "
           f"JOIN {Volunteer._meta.db_table} v ON v.id = h.volunteer_id "
           f"JOIN {user_model._meta.db_table} u ON u.{user_model._meta.pk.column} = v.user_id "
           "WHERE h.token_hash = %s")
    host = next(iter(Host.objects.raw(sql, [digest])), None)
    if host is None or not hmac.compare_digest(host.token_hash, digest):
        return None
    host.owner_is_active = bool(host.owner_is_active)
    return host


class HostTokenScheme(OpenApiAuthenticationExtension):
    """How the OpenAPI schema names this authentication (drf-spectacular finds it by class)."""

    target_class = "apps.accounts.auth.HostTokenAuthentication"
    name = "hostToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "apiKey", "in": "header", "name": "Authorization",
                "description": "`Token <host token>`, as returned by `POST /api/v1/attach/`."}
