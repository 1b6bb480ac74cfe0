"""Password reset by e-mail: Django's tokens, our pages, a limit per address, off without mail."""

from __future__ import annotations

import re

import pytest
from django.core import mail
from django.test import Client

from tests.factories import make_user, make_volunteer

pytestmark = pytest.mark.django_db

OLD = "an old and long passphrase"
NEW = "a brand new long passphrase"


@pytest.fixture
def grace(settings):
    settings.PASSWORD_RESET_ENABLED = True
    return make_volunteer(user=make_user("grace", password=OLD), display_name="Grace")


def _reset_link(message: mail.EmailMessage) -> str:
    found = re.search(r"http://testserver(/password-reset/[^/\s]+/[^/\s]+/)", message.body)
    assert found, message.body
    return found.group(1)


def test_a_volunteer_resets_a_forgotten_password_by_mail(client, grace):
    assert 'href="/password-reset/"' in client.get("/login/").content.decode()

    response = client.post("/password-reset/", {"email": "GRACE@example.org"})

    assert response.status_code == 302
    assert response["Location"] == "/password-reset/sent/"
    (message,) = mail.outbox
    assert message.to == ["grace@example.org"]
    assert message.subject == "Your Strategy@Home password"
    assert "Hello grace" in message.body
    link = _reset_link(message)
    form = client.get(link, follow=True)  # Django moves the token into the session
    assert form.status_code == 200 and "Set the password" in form.content.decode()
    done = client.post(form.redirect_chain[-1][0], {"new_password1": NEW, "new_password2": NEW})
    assert done.status_code == 302 and done["Location"] == "/password-reset/done/"
    grace.user.refresh_from_db()
    assert grace.user.check_password(NEW)
    assert Client().post("/login/", {"username": "grace", "password": NEW}).status_code == 302
    # The link worked once.
    again = Client().get(link, follow=True).content.decode()
    assert "This link does not work" in again


def test_an_unknown_address_gets_the_same_answer_and_no_mail(client, grace):
    response = client.post("/password-reset/", {"email": "nobody@example.org"})

    assert (response.status_code, response["Location"]) == (302, "/password-reset/sent/")
    assert mail.outbox == []


def test_a_forged_or_altered_link_changes_nothing(client, grace):
    client.post("/password-reset/", {"email": "grace@example.org"})
    link = _reset_link(mail.outbox[0])
    altered = link[:-3] + ("a" if link[-3] != "a" else "b") + link[-2:]

    page = Client().get(altered, follow=True).content.decode()

    assert "This link does not work" in page
    grace.user.refresh_from_db()
    assert grace.user.check_password(OLD)


def test_reset_requests_are_limited_per_address(client, grace, settings):
    settings.JOIN_LIMIT = 2
    codes = [client.post("/password-reset/", {"email": "grace@example.org"}).status_code
             for _ in range(3)]

    assert codes == [302, 302, 429]
    assert len(mail.outbox) == 2  # nothing sent past the limit
    other = Client(REMOTE_ADDR="192.0.2.9").post("/password-reset/", {"email": "x@example.org"})
    assert other.status_code == 302


def test_without_a_mail_server_the_page_says_so_and_sends_nothing(client, grace, settings):
    settings.PASSWORD_RESET_ENABLED = False

    page = client.get("/password-reset/").content.decode()
    posted = client.post("/password-reset/", {"email": "grace@example.org"})

    assert "no mail server set up" in page
    assert "Send the link" not in page
    assert posted.status_code == 200 and mail.outbox == []
