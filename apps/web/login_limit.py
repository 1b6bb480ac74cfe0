"""Failed logins, counted per client address and user name in Django's cache.

After ``LOGIN_FAILURE_LIMIT`` failures (default 5) for one user name from one address, further
attempts for that pair are refused without checking the password until
``LOGIN_FAILURE_WINDOW`` seconds (default 900) have passed since the last failure; a
successful login clears the count. The cache is the one the API's throttles use (the database
cache, or Redis when ``REDIS_URL`` is set), so every portal process sees the same counts.

Failures are counted from Django's ``user_login_failed`` signal, so every login form counts
(the site's and the admin's). The site's login view refuses a blocked pair itself (429);
``LoginLimitBackend``, listed first in ``AUTHENTICATION_BACKENDS``, refuses it for any other
form, the admin's included.

Counting is read-then-write: two failures at the same instant may count as one, which lets an
attacker a few extra guesses at most. The limiter makes guessing slow, not impossible.
"""

from __future__ import annotations

import hashlib
from typing import Any

from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.dispatch import receiver
from django.http import HttpRequest
from rest_framework.settings import api_settings

DEFAULT_LIMIT = 5
DEFAULT_WINDOW_SECONDS = 15 * 60


def failure_limit() -> int:
    return getattr(settings, "LOGIN_FAILURE_LIMIT", DEFAULT_LIMIT)


def failure_window() -> int:
    return getattr(settings, "LOGIN_FAILURE_WINDOW", DEFAULT_WINDOW_SECONDS)


def client_address(request: HttpRequest) -> str:
    """The caller's address: ``REMOTE_ADDR``, or, behind ``NUM_PROXIES`` reverse proxies (the
    API throttles' setting), the address the outermost one saw. ``X-Forwarded-For`` is never
    trusted further than that: anyone can send one."""
    remote = request.META.get("REMOTE_ADDR", "")
    proxies = api_settings.NUM_PROXIES or 0
    forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")
                 if part.strip()]
    if proxies > 0 and forwarded:
        return forwarded[-min(proxies, len(forwarded))]
    return remote


def _key(request: HttpRequest, username: str) -> str:
    who = f"{client_address(request)}\0{username.strip().lower()}"
    return "login-failures:" + hashlib.sha256(who.encode("utf-8", "replace")).hexdigest()


def login_blocked(request: HttpRequest, username: str) -> bool:
    return cache.get(_key(request, username), 0) >= failure_limit()


def login_failed(request: HttpRequest, username: str) -> None:
    key = _key(request, username)
    cache.set(key, cache.get(key, 0) + 1, failure_window())


def login_succeeded(request: HttpRequest, username: str) -> None:
    cache.delete(_key(request, username))


@receiver(user_login_failed, dispatch_uid="login_limit.count_failure")
def _count_failure(sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None,
                   **kwargs: Any) -> None:
    if request is not None:
        login_failed(request, str(credentials.get("username", ""))[:150])


@receiver(user_logged_in, dispatch_uid="login_limit.clear_failures")
def _clear_failures(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    if request is not None and hasattr(request, "META"):
        login_succeeded(request, user.get_username())


class LoginLimitBackend(ModelBackend):
    """Refuses a blocked address and user name before any other backend checks a password
    (``PermissionDenied`` stops ``authenticate``); otherwise lets the next backend decide.

    A ``ModelBackend`` for everything else (``get_user``, permissions), so that sessions it is
    first in line for (``force_login``) still find their user."""

    def authenticate(self, request: HttpRequest | None, username: str | None = None,
                     **credentials: Any) -> None:
        if request is not None and username and login_blocked(request, username):
            raise PermissionDenied("too many failed logins")
        return None
