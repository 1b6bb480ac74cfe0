"""Registration, account keys and hosts: secrets shown once, stored only as hashes."""

from __future__ import annotations

import hashlib

import pytest
from django.contrib.auth import get_user_model

from apps.accounts.models import Host, Volunteer
from apps.accounts.selectors import host_by_token, volunteer_by_account_key
from apps.accounts.services import (
    account_key_rotate,
    host_attach,
    host_retire,
    host_update,
    new_secret,
    volunteer_register,
)
from apps.common.errors import ApplicationError
from tests.factories import make_host, make_volunteer

pytestmark = pytest.mark.django_db

PASSWORD = "a-long-and-unusual-passphrase"
HOST_INFO = {"name": "rig", "os": "Linux", "arch": "x86_64", "python_version": "3.11.7",
             "numba_version": "0.60.0", "cpu_count": 8, "memory_mb": 16000,
             "client_version": "0.1.0", "speed": 1e6}


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def register(username="ada", **fields):
    fields = {"email": f"{username}@example.org", "password": PASSWORD,
              "display_name": username.title(), **fields}
    return volunteer_register(username=username, **fields)


def stored_text(model) -> str:
    return repr(list(model.objects.values()))


# --- registration and account keys -------------------------------------------------------------


def test_registration_returns_the_account_key_once_and_stores_its_hash():
    volunteer, account_key = register(country="de")

    assert len(account_key) >= 40
    assert volunteer.account_key_hash == sha256(account_key)
    assert volunteer.account_key_hint == account_key[:6]
    assert account_key not in stored_text(Volunteer)
    assert volunteer.country == "DE"
    user = volunteer.user
    assert user.check_password(PASSWORD) and PASSWORD not in user.password
    assert volunteer_by_account_key(account_key) == volunteer


def test_each_registration_gets_its_own_key():
    _, first = register("ada")
    _, second = register("grace")

    assert first != second


@pytest.mark.parametrize(("fields", "code"), [
    ({"password": "123"}, "invalid_password"),
    ({"password": "password"}, "invalid_password"),
    ({"email": "not-an-address"}, "invalid_account"),
    ({"country": "Germany"}, "invalid_country"),
])
def test_registration_refuses_bad_details(fields, code):
    with pytest.raises(ApplicationError) as refused:
        register(**fields)

    assert refused.value.extra["code"] == code
    assert not get_user_model().objects.exists()


def test_user_names_are_unique_regardless_of_case():
    register("ada")

    with pytest.raises(ApplicationError) as refused:
        register("ADA", email="other@example.org")

    assert refused.value.extra == {"code": "username_taken", "status": 409}


def test_rotating_the_key_retires_the_old_one_but_not_the_hosts():
    volunteer, old_key = register()
    host, token = host_attach(account_key=old_key, info=HOST_INFO)

    new_key = account_key_rotate(volunteer=volunteer)

    assert new_key != old_key
    assert volunteer_by_account_key(old_key) is None
    assert volunteer_by_account_key(new_key) == volunteer
    assert Volunteer.objects.get(pk=volunteer.pk).account_key_hash == sha256(new_key)
    assert host_by_token(token) == host


def test_a_rotation_racing_another_is_refused():
    volunteer, _ = register()
    stale = Volunteer.objects.get(pk=volunteer.pk)
    account_key_rotate(volunteer=volunteer)

    with pytest.raises(ApplicationError) as refused:
        account_key_rotate(volunteer=stale)

    assert refused.value.extra["code"] == "conflict"


@pytest.mark.parametrize("key", ["", "x" * 10_000, None, 42])
def test_lookups_of_nonsense_keys_find_nothing(key):
    make_volunteer()

    assert volunteer_by_account_key(key) is None
    assert host_by_token(key) is None


def test_an_inactive_users_key_does_not_work():
    volunteer = make_volunteer()
    volunteer.user.is_active = False
    volunteer.user.save(update_fields=["is_active"])

    assert volunteer_by_account_key(volunteer.account_key) is None


# --- hosts -------------------------------------------------------------------------------------


def test_attaching_returns_a_token_once_and_stores_its_hash():
    volunteer = make_volunteer()

    host, token = host_attach(account_key=volunteer.account_key, info=HOST_INFO)

    assert host.volunteer == volunteer
    assert host.token_hash == sha256(token)
    assert token not in stored_text(Host)
    assert host_by_token(token) == host
    assert (host.name, host.cpu_count, host.speed, host.client_version) == (
        "rig", 8, 1e6, "0.1.0")
    assert host.last_contact is not None


def test_every_attach_makes_a_new_host_with_its_own_token():
    volunteer = make_volunteer()

    first = host_attach(account_key=volunteer.account_key, info=HOST_INFO)
    second = host_attach(account_key=volunteer.account_key, info=HOST_INFO)

    assert first[0].pk != second[0].pk and first[1] != second[1]


def test_attaching_with_a_wrong_key_is_refused():
    make_volunteer()

    with pytest.raises(ApplicationError) as refused:
        host_attach(account_key="wrong", info=HOST_INFO)

    assert refused.value.extra == {"code": "invalid_account_key", "status": 403}
    assert not Host.objects.exists()


def test_attaching_refuses_fields_a_host_does_not_have():
    volunteer = make_volunteer()

    with pytest.raises(ApplicationError) as refused:
        host_attach(account_key=volunteer.account_key, info={**HOST_INFO, "retired": True})

    assert refused.value.extra["fields"] == ["retired"]


def test_host_update_changes_only_what_the_host_reports():
    host = make_host(consecutive_valid=12)

    host_update(host=host, info={"speed": 3.5e6, "client_version": "0.2.0"})

    host.refresh_from_db()
    assert (host.speed, host.client_version, host.consecutive_valid) == (3.5e6, "0.2.0", 12)


def test_retiring_a_host_is_a_one_way_move():
    host = make_host()

    host_retire(host=host)

    assert Host.objects.get(pk=host.pk).retired
    with pytest.raises(ApplicationError) as refused:
        host_retire(host=Host.objects.get(pk=host.pk))
    assert refused.value.extra["code"] == "host_retired"


def test_secrets_never_start_with_a_dash_that_a_command_line_would_misread(monkeypatch):
    drawn = iter(["-looks-like-an-option", "fine-key"])
    monkeypatch.setattr("apps.accounts.services.secrets.token_urlsafe", lambda n: next(drawn))

    assert new_secret() == "fine-key"
