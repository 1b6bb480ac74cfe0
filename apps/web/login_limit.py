"""Failed logins, sign-ups and wrong old passwords, counted in Django's cache.

After ``LOGIN_FAILURE_LIMIT`` failures (default 5) for one user name from one address, further
attempts for that pair are refused without checking the password until
``LOGIN_FAILURE_WINDOW`` seconds (default 900) have passed since the last failure; a
successful login clears the count. The cache is the one the API's throttles use (the database
cache, or Redis when ``REDIS_URL`` is set), so every portal process sees the same counts.

Failures are counted from Django's ``user_login_failed`` signal, so every login form counts
(the site's and the admin's). The site's login view refuses a blocked pair itself (429);
``LoginLimitBackend``, listed first in ``AUTHENTICATION_BACKENDS``, refuses it for any other
form, the admin's included.

More counters use the same cache: sign-ups and password-reset requests per client address
(``JOIN_LIMIT`` attempts each, default 10, per ``JOIN_WINDOW`` seconds, default 3600: creating
accounts or mailing strangers by script is slow) and
wrong old passwords on the password-change form per user (the login limits: a stolen session
cannot guess its way to the password).

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


def failure_limit() -> int:
    return settings.LOGIN_FAILURE_LIMIT


def failure_window() -> int:
    return settings.LOGIN_FAILURE_WINDOW


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


def join_limit() -> int:
    return settings.JOIN_LIMIT


def join_window() -> int:
    return settings.JOIN_WINDOW


def _counter_key(kind: str, *parts: str) -> str:
    who = "\0".join(parts)
    return f"{kind}:" + hashlib.sha256(who.encode("utf-8", "replace")).hexdigest()


def _count(key: str, window: int) -> None:
    cache.set(key, cache.get(key, 0) + 1, window)


def _key(request: HttpRequest, username: str) -> str:
    return _counter_key("login-failures", client_address(request), username.strip().lower())


def login_blocked(request: HttpRequest, username: str) -> bool:
    return cache.get(_key(request, username), 0) >= failure_limit()


def login_failed(request: HttpRequest, username: str) -> None:
    _count(_key(request, username), failure_window())


def login_succeeded(request: HttpRequest, username: str) -> None:
    cache.delete(_key(request, username))


def address_blocked(request: HttpRequest, form: str) -> bool:
    """Has the caller's address used up its attempts at ``form`` ("join", "password-reset")?"""
    return cache.get(_counter_key(form, client_address(request)), 0) >= join_limit()


def address_attempted(request: HttpRequest, form: str) -> None:
    _count(_counter_key(form, client_address(request)), join_window())


def _password_key(user_id: int) -> str:
    return _counter_key("password-failures", str(user_id))


def password_change_blocked(user_id: int) -> bool:
    return cache.get(_password_key(user_id), 0) >= failure_limit()


def password_change_failed(user_id: int) -> None:
    _count(_password_key(user_id), failure_window())


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
