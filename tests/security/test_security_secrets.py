"""Account keys and host tokens: stored hashed, compared in constant time, revocable.

How (``apps.accounts.selectors``): a secret is 256 random bits (``secrets.token_urlsafe(32)``);
the database holds only its sha256. A call is authenticated by hashing what it presents and
looking the digest up (an indexed equality on the digest, so the time taken says nothing about
how much of a guess was right), then confirming with ``hmac.compare_digest``. An unsalted
sha256 is enough for a secret with 256 bits of entropy: there is no dictionary to try.

The plaintext is shown once: in the API's attach reply (the token) and on the account page
(the key), which it reaches in a signed cookie bound to the user, never the database (sessions
live there).
"""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from django.contrib.sessions.models import Session
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from apps.accounts import selectors
from apps.accounts.models import Host, Volunteer
from apps.accounts.services import new_secret
from apps.web.views_community import ACCOUNT_KEY_COOKIE
from tests.security.helpers import (
    ATTACH,
    HOST,
    HOST_INFO,
    PASSWORD,
    SCHEDULER,
    api,
    assert_error,
)

pytestmark = pytest.mark.django_db

JOIN = {"username": "grace", "email": "grace@example.org", "display_name": "Grace",
        "country": "", "password1": PASSWORD, "password2": PASSWORD}


def _database_text() -> str:
    """Every row of every table, as text, plus every session decoded."""
    chunks = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            chunks.extend(repr(row) for row in cursor.fetchall())
    chunks.extend(json.dumps(session.get_decoded(), default=str)
                  for session in Session.objects.all())
    return "\n".join(chunks)


def _shown_key(html: str) -> str:
    start = html.index('id="account-key-value">') + len('id="account-key-value">')
    return html[start:html.index("<", start)].strip()


def test_the_database_never_holds_a_plaintext_key_or_token(client):
    response = client.post("/join/", JOIN)
    assert response.status_code == 302
    cookie = client.cookies[ACCOUNT_KEY_COOKIE].value
    # Between the redirect and the page that shows it, the key is in the browser only.
    key = cookie.split(":", 1)[1].rsplit(":", 2)[0]
    assert len(key) >= 43 and key not in _database_text()
    assert _shown_key(client.get("/account/").content.decode()) == key
    assert key not in _database_text()

    client.post("/account/key/rotate/")
    rotated = _shown_key(client.get("/account/").content.decode())
    attach = api().post(ATTACH, {"account_key": rotated, "host": HOST_INFO}, format="json")
    token = attach.json()["token"]

    text = _database_text()
    for secret in (key, rotated, token):
        assert secret not in text
    volunteer = Volunteer.objects.get(user__username="grace")
    assert volunteer.account_key_hash == hashlib.sha256(rotated.encode()).hexdigest()
    assert Host.objects.get(pk=attach.json()["host_id"]).token_hash == hashlib.sha256(
        token.encode()).hexdigest()
    assert volunteer.account_key_hint == rotated[:6]  # six characters: a reminder, not a key


def test_the_one_time_key_cookie_is_signed_bound_to_its_user_and_kept_from_scripts(
        client, ada, bob, settings):
    settings.SESSION_COOKIE_SECURE = True
    client.force_login(ada.user)
    client.post("/account/key/rotate/")
    morsel = client.cookies[ACCOUNT_KEY_COOKIE]
    assert morsel["httponly"] and morsel["secure"] and morsel["samesite"] == "Strict"
    assert morsel["path"] == "/account/" and int(morsel["max-age"]) <= 600

    other = Client()  # bob's browser given ada's cookie: not shown
    other.force_login(bob.user)
    other.cookies[ACCOUNT_KEY_COOKIE] = morsel.value
    assert 'id="account-key-value"' not in other.get("/account/").content.decode()

    tampered = Client()
    tampered.force_login(ada.user)
    tampered.cookies[ACCOUNT_KEY_COOKIE] = morsel.value.replace(":", ":x", 1)
    assert 'id="account-key-value"' not in tampered.get("/account/").content.decode()


def test_secrets_are_256_random_bits_each_different():
    made = {new_secret() for _ in range(200)}
    assert len(made) == 200
    assert all(len(secret) == 43 and not secret.startswith("-") for secret in made)


# --- constant time -----------------------------------------------------------------------------


def test_a_token_is_looked_up_by_its_digest_never_its_plaintext(ada):
    digest = hashlib.sha256(ada.host.token.encode()).hexdigest()
    with CaptureQueriesContext(connection) as queries:
        assert api(ada.host).get(HOST).status_code == 200
    sql = " ".join(query["sql"] for query in queries.captured_queries)
    assert digest in sql
    assert ada.host.token not in sql


def test_an_account_key_is_looked_up_by_its_digest_never_its_plaintext(ada):
    digest = hashlib.sha256(ada.account_key.encode()).hexdigest()
    with CaptureQueriesContext(connection) as queries:
        response = api().post(ATTACH, {"account_key": ada.account_key, "host": HOST_INFO},
                              format="json")
    assert response.status_code == 201
    sql = " ".join(query["sql"] for query in queries.captured_queries)
    assert digest in sql
    assert ada.account_key not in sql


def test_the_final_comparison_is_hmac_compare_digest(ada, monkeypatch):
    seen = []
    real = hmac.compare_digest

    def spy(a, b):
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(selectors.hmac, "compare_digest", spy)
    api(ada.host).get(HOST)
    api().post(ATTACH, {"account_key": ada.account_key, "host": HOST_INFO}, format="json")

    token_digest = hashlib.sha256(ada.host.token.encode()).hexdigest()
    key_digest = hashlib.sha256(ada.account_key.encode()).hexdigest()
    assert (token_digest, token_digest) in seen
    assert (key_digest, key_digest) in seen


@pytest.mark.parametrize("secret", ["", "x" * 201, "x" * 100_000])
def test_nonsense_secrets_are_refused_before_any_lookup(ada, secret):
    with CaptureQueriesContext(connection) as queries:
        assert selectors.host_by_token(secret) is None
        assert selectors.volunteer_by_account_key(secret) is None
    assert queries.captured_queries == []


# --- revocation --------------------------------------------------------------------------------


def _token_works(host) -> bool:
    return api(host).get(HOST).status_code == 200


def _refused_everywhere(host, code: str) -> None:
    client = api(host)
    for response in (client.get(HOST), client.post(HOST, HOST_INFO, format="json"),
                     client.delete(HOST), client.post(SCHEDULER, {}, format="json"),
                     client.get(f"/api/v1/datasets/{'0' * 64}/")):
        assert_error(response, 401, code)


def test_a_rotated_key_stops_attaching_at_once_and_attached_hosts_keep_working(client, ada):
    old = ada.account_key
    client.force_login(ada.user)
    client.post("/account/key/rotate/")
    new = _shown_key(client.get("/account/").content.decode())

    refused = api().post(ATTACH, {"account_key": old, "host": HOST_INFO}, format="json")
    accepted = api().post(ATTACH, {"account_key": new, "host": HOST_INFO}, format="json")

    assert_error(refused, 403, "invalid_account_key")
    assert accepted.status_code == 201
    assert _token_works(ada.host)


def test_a_host_retired_on_the_web_loses_its_token_everywhere(client, ada):
    client.force_login(ada.user)
    client.post(f"/account/hosts/{ada.host.pk}/retire/")
    _refused_everywhere(ada.host, "host_retired")


def test_a_detached_host_loses_its_token_everywhere(ada):
    assert api(ada.host).delete(HOST).status_code == 204
    _refused_everywhere(ada.host, "host_retired")


def test_a_disabled_account_can_neither_attach_nor_use_its_tokens(ada):
    ada.user.is_active = False
    ada.user.save(update_fields=["is_active"])

    _refused_everywhere(ada.host, "authentication_failed")
    attach = api().post(ATTACH, {"account_key": ada.account_key, "host": HOST_INFO},
                        format="json")
    assert_error(attach, 403, "invalid_account_key")


def test_a_deleted_account_takes_its_tokens_with_it(ada):
    ada.user.delete()
    _refused_everywhere(ada.host, "authentication_failed")


def test_attaching_again_gives_a_new_token_and_the_old_one_stays_retired(ada):
    api(ada.host).delete(HOST)
    again = api().post(ATTACH, {"account_key": ada.account_key, "host": HOST_INFO},
                       format="json").json()
    assert again["token"] != ada.host.token
    assert again["host_id"] != ada.host.pk
    _refused_everywhere(ada.host, "host_retired")
