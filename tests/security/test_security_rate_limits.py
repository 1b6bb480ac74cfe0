"""Attaching and logging in are rate-limited, and the limits hold with the portal's real cache.

Tests elsewhere run with Django's in-process cache; here the counts live where production keeps
them without Redis: ``portal.cache.DatabaseCache`` (shared by every portal process).
"""

from __future__ import annotations

import json
import time

import pytest
from django.core.cache import cache, caches
from django.core.management import call_command
from django.test import Client

from apps.accounts.models import Host
from tests.security.helpers import ATTACH, HOST_INFO, PASSWORD, SCHEDULER, api, assert_error

pytestmark = pytest.mark.django_db

REAL_CACHE = {"default": {"BACKEND": "portal.cache.DatabaseCache", "LOCATION": "cache_table"}}


@pytest.fixture
def real_cache(settings):
    settings.CACHES = REAL_CACHE
    call_command("createcachetable", verbosity=0)
    cache.clear()
    yield cache
    cache.clear()


def _attach(account_key: str, **extra: str):
    return api().post(ATTACH, data=json.dumps({"account_key": account_key, "host": HOST_INFO}),
                      content_type="application/json", **extra)


def _rate(settings, scope: str) -> int:
    return int(settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"][scope].split("/")[0])


# --- attach ------------------------------------------------------------------------------------


def test_attach_is_throttled_at_its_production_rate_with_the_real_cache(real_cache, settings,
                                                                        ada):
    assert type(caches["default"]).__module__ == "portal.cache"
    allowed = _rate(settings, "attach")  # 20/hour unless THROTTLE_ATTACH says otherwise

    answers = [_attach(ada.account_key if i % 2 else "wrong").status_code
               for i in range(allowed)]
    throttled = _attach(ada.account_key)

    assert set(answers) == {201, 403}
    error = assert_error(throttled, 429, "throttled")
    assert 0 < int(throttled["Retry-After"]) <= 3600
    assert error["detail"]["retry_after"] > 0
    assert Host.objects.filter(volunteer=ada).count() == 1 + allowed // 2  # none past the limit
    other_address = _attach(ada.account_key, REMOTE_ADDR="192.0.2.7")
    assert other_address.status_code == 201  # counted per client address


def test_a_forged_forwarded_for_header_does_not_escape_the_attach_throttle(settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {
        **settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "attach": "2/hour"}}

    codes = [_attach("wrong", HTTP_X_FORWARDED_FOR=f"198.51.100.{i}").status_code
             for i in range(4)]

    assert codes == [403, 403, 429, 429]


def test_the_scheduler_throttle_counts_per_host_with_the_real_cache(real_cache, settings, ada,
                                                                    bob):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {
        **settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "scheduler": "3/minute"}}

    codes = [api(ada.host).post(SCHEDULER, {}, format="json").status_code for _ in range(4)]

    assert codes == [200, 200, 200, 429]
    assert api(bob.host).post(SCHEDULER, {}, format="json").status_code == 200


# --- web login ---------------------------------------------------------------------------------


def _login(client, username: str, password: str, **extra: str):
    return client.post("/login/", {"username": username, "password": password}, **extra)


def _logged_in(client) -> bool:
    return "_auth_user_id" in client.session


def test_logins_are_limited_per_address_and_user_name(real_cache, client, ada, bob, settings):
    settings.LOGIN_FAILURE_LIMIT = 3

    failures = [_login(client, "ada", "guess").status_code for _ in range(3)]
    blocked = _login(client, "ada", PASSWORD)  # even the right password: not checked

    assert failures == [200, 200, 200]
    assert blocked.status_code == 429
    assert int(blocked["Retry-After"]) == 900
    assert "Too many failed logins" in blocked.content.decode()
    assert "Please enter a correct username" not in blocked.content.decode()
    assert not _logged_in(client)
    # The same name from another address, and another name from this one, are not blocked.
    assert _login(client, "ada", PASSWORD, REMOTE_ADDR="192.0.2.9").status_code == 302
    client.logout()
    assert _login(client, "bob", PASSWORD).status_code == 302


def test_the_user_name_is_counted_whatever_its_case(real_cache, client, ada, settings):
    settings.LOGIN_FAILURE_LIMIT = 2
    _login(client, "ada", "guess")
    _login(client, " ADA", "guess")
    assert _login(client, "Ada", PASSWORD).status_code == 429


def test_a_successful_login_clears_the_count(real_cache, client, ada, settings):
    settings.LOGIN_FAILURE_LIMIT = 3
    _login(client, "ada", "guess")
    _login(client, "ada", "guess")
    assert _login(client, "ada", PASSWORD).status_code == 302
    client.logout()

    codes = [_login(client, "ada", "guess").status_code for _ in range(3)]

    assert codes == [200, 200, 200]  # three fresh failures allowed again
    assert _login(client, "ada", PASSWORD).status_code == 429


def test_the_block_ends_when_the_window_has_passed(real_cache, client, ada, settings):
    settings.LOGIN_FAILURE_LIMIT = 1
    settings.LOGIN_FAILURE_WINDOW = 2  # the database cache keeps expiry times to the second
    _login(client, "ada", "guess")
    assert _login(client, "ada", PASSWORD).status_code == 429

    time.sleep(3.1)

    assert _login(client, "ada", PASSWORD).status_code == 302


def test_a_forged_forwarded_for_header_does_not_escape_the_login_limit(real_cache, client, ada,
                                                                       settings):
    settings.LOGIN_FAILURE_LIMIT = 2
    for i in range(2):
        _login(client, "ada", "guess", HTTP_X_FORWARDED_FOR=f"198.51.100.{i}")

    response = _login(client, "ada", PASSWORD, HTTP_X_FORWARDED_FOR="198.51.100.99")

    assert response.status_code == 429


def test_behind_a_declared_proxy_the_address_it_saw_counts(real_cache, client, ada, settings):
    settings.LOGIN_FAILURE_LIMIT = 2
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    proxy = {"REMOTE_ADDR": "10.0.0.1"}
    for _ in range(2):
        _login(client, "ada", "guess", HTTP_X_FORWARDED_FOR="spoofed, 203.0.113.5", **proxy)

    blocked = _login(client, "ada", PASSWORD, HTTP_X_FORWARDED_FOR="203.0.113.5", **proxy)
    other = _login(client, "ada", PASSWORD, HTTP_X_FORWARDED_FOR="203.0.113.6", **proxy)

    assert (blocked.status_code, other.status_code) == (429, 302)


# --- the admin's login -------------------------------------------------------------------------

LIMITED_BACKENDS = ["apps.web.login_limit.LoginLimitBackend",
                    "django.contrib.auth.backends.ModelBackend"]


def _staff_login(client, password: str):
    return client.post("/admin/login/?next=/admin/", {"username": "root", "password": password})


@pytest.fixture
def staff(db):
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_superuser("root", "root@example.org", PASSWORD)


def test_with_the_limiting_backend_the_admin_login_is_limited_too(real_cache, client, staff,
                                                                  settings):
    settings.AUTHENTICATION_BACKENDS = LIMITED_BACKENDS
    settings.LOGIN_FAILURE_LIMIT = 3
    for _ in range(3):
        assert _staff_login(client, "guess").status_code == 200

    blocked = _staff_login(client, PASSWORD)

    assert blocked.status_code == 200  # the admin's own form, showing its refusal
    assert not _logged_in(client)
    assert _staff_login(Client(REMOTE_ADDR="192.0.2.1"), PASSWORD).status_code == 302


def test_the_admin_login_is_limited_as_configured(real_cache, client, staff, settings):
    settings.LOGIN_FAILURE_LIMIT = 3
    for _ in range(3):
        _staff_login(client, "guess")
    _staff_login(client, PASSWORD)
    assert not _logged_in(client)


# --- sign-ups and password changes -------------------------------------------------------------


def _join(client, n: int, **extra: str):
    return client.post("/join/", {
        "username": f"bot{n}", "email": f"bot{n}@example.org", "display_name": f"Bot {n}",
        "country": "", "password1": PASSWORD, "password2": PASSWORD}, **extra)


def test_sign_ups_are_limited_per_address(real_cache, settings):
    settings.JOIN_LIMIT = 3
    from apps.accounts.models import Volunteer

    codes = [_join(Client(), n).status_code for n in range(3)]
    blocked = _join(Client(), 3)

    assert codes == [302, 302, 302]
    assert blocked.status_code == 429
    assert int(blocked["Retry-After"]) == 3600
    assert "Too many sign-ups from your address" in blocked.content.decode()
    assert not Volunteer.objects.filter(user__username="bot3").exists()  # nothing created
    assert _join(Client(REMOTE_ADDR="192.0.2.9"), 4).status_code == 302  # counted per address


def test_refused_sign_ups_count_too(real_cache, client, ada, settings):
    """Trying taken names tells which exist: every attempt counts, not only the ones that work."""
    settings.JOIN_LIMIT = 2
    taken = {"username": "ada", "email": "x@example.org", "display_name": "X", "country": "",
             "password1": PASSWORD, "password2": PASSWORD}

    codes = [client.post("/join/", taken).status_code for _ in range(3)]

    assert codes == [200, 200, 429]


def _change_password(client, old: str):
    return client.post("/account/password/", {
        "old_password": old, "new_password1": "a new and long passphrase",
        "new_password2": "a new and long passphrase"})


def test_wrong_old_passwords_are_limited_per_user(real_cache, client, ada, settings):
    settings.LOGIN_FAILURE_LIMIT = 3
    client.force_login(ada.user)

    wrong = [_change_password(client, "guess").status_code for _ in range(3)]
    blocked = _change_password(client, PASSWORD)  # even the right one: not checked

    assert wrong == [200, 200, 200]
    assert blocked.status_code == 429
    assert "Too many wrong passwords" in blocked.content.decode()
    ada.user.refresh_from_db()
    assert ada.user.check_password(PASSWORD)  # unchanged
    # A mistyped new password (its two copies differ) is not a guess of the old one.
    settings.LOGIN_FAILURE_LIMIT = 4
    typo = client.post("/account/password/", {"old_password": PASSWORD,
                                               "new_password1": "one long passphrase",
                                               "new_password2": "another long passphrase"})
    assert typo.status_code == 200
    assert _change_password(client, PASSWORD).status_code == 302
