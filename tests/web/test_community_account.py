"""Joining, logging in and out, the account page: the key shown once, rotation, hosts, credit."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from apps.accounts.models import Host, Volunteer
from apps.accounts.selectors import volunteer_by_account_key
from apps.web.views_community import ACCOUNT_KEY_COOKIE
from apps.workunits.models import Result
from apps.workunits.states import Outcome, ServerState, ValidateState
from tests.factories import make_host, make_volunteer, make_workunit, sha256_hex
from tests.web.conftest import PASSWORD

pytestmark = pytest.mark.django_db

JOIN = {"username": "grace", "email": "grace@example.org", "display_name": "Grace H.",
        "country": "gb", "password1": PASSWORD, "password2": PASSWORD}


def _shown_key(html: str) -> str | None:
    match = re.search(r'id="account-key-value">([^<]+)<', html)
    return match.group(1).strip() if match else None


# --- joining --------------------------------------------------------------------------------


def test_join_creates_the_volunteer_logs_in_and_shows_the_key_once(client):
    response = client.post("/join/", JOIN)
    assert response.status_code == 302
    assert response["Location"] == "/account/"
    volunteer = Volunteer.objects.select_related("user").get(user__username="grace")
    assert (volunteer.display_name, volunteer.country) == ("Grace H.", "GB")
    assert volunteer.user.check_password(PASSWORD)

    page = client.get("/account/").content.decode()
    key = _shown_key(page)
    assert key and volunteer_by_account_key(key) == volunteer
    assert (f"strategy-worker attach --server http://testserver --account-key {key}") in page
    assert "Welcome, Grace H.!" in page

    again = client.get("/account/").content.decode()
    assert _shown_key(again) is None
    assert key not in again
    assert f"{volunteer.account_key_hint}…" in again
    assert "--account-key YOUR_ACCOUNT_KEY" in again


def test_the_account_page_is_never_cached(volunteer_client):
    response = volunteer_client.get("/account/")
    assert "no-store" in response["Cache-Control"]


@pytest.mark.parametrize(("changes", "field", "message"), [
    ({"password2": "something else"}, "password2", "The two passwords differ."),
    ({"password1": "123", "password2": "123"}, "password1", "too short"),
    ({"email": "not an address"}, "email", "Enter a valid email address."),
    ({"country": "Germany"}, "country", "at most 2 characters"),
    ({"country": "1x"}, "country", "two-letter ISO 3166 code"),
    ({"username": "bad name!"}, None, "Enter a valid username"),
])
def test_join_explains_what_is_wrong(client, changes, field, message):
    response = client.post("/join/", {**JOIN, **changes})
    assert response.status_code == 200
    form = response.context["form"]
    errors = " ".join(form.errors.get(field or "__all__", []))
    assert message in errors
    assert message.replace("'", "&#x27;") in response.content.decode()
    assert not Volunteer.objects.exists()


def test_join_refuses_a_taken_username_whatever_its_case(client, volunteer):
    response = client.post("/join/", {**JOIN, "username": "ADA"})
    assert "The user name 'ADA' is taken." in response.context["form"].errors["username"]
    assert Volunteer.objects.count() == 1


def test_join_sends_a_logged_in_volunteer_to_their_account(volunteer_client):
    response = volunteer_client.get("/join/")
    assert response.status_code == 302
    assert response["Location"] == "/account/"


def test_forms_refuse_posts_without_the_csrf_token(volunteer):
    client = Client(enforce_csrf_checks=True)
    assert client.post("/join/", JOIN).status_code == 403
    client.force_login(volunteer.user)
    host = make_host(volunteer=volunteer)
    for url in ("/account/key/rotate/", f"/account/hosts/{host.pk}/retire/", "/teams/leave/",
                "/logout/"):
        assert client.post(url).status_code == 403, url
    host.refresh_from_db()
    assert not host.retired


def test_every_form_carries_the_csrf_token(volunteer_client, volunteer):
    make_host(volunteer=volunteer)
    for url in ("/account/", "/account/password/", "/teams/new/", "/teams/"):
        html = volunteer_client.get(url).content.decode()
        forms = html.count('method="post"')
        assert forms and html.count('name="csrfmiddlewaretoken"') == forms, url


# --- logging in and out, password --------------------------------------------------------------


def test_login_and_logout(client, volunteer):
    assert client.get("/login/").status_code == 200
    bad = client.post("/login/", {"username": "ada", "password": "wrong"})
    assert bad.status_code == 200
    assert "Please enter a correct username and password" in bad.content.decode()

    response = client.post("/login/", {"username": "ada", "password": PASSWORD})
    assert response["Location"] == "/account/"
    assert client.get("/account/").status_code == 200

    assert client.get("/logout/").status_code == 405  # logging out takes a POST
    response = client.post("/logout/")
    assert response["Location"] == "/"
    assert client.get("/account/")["Location"] == "/login/?next=/account/"


def test_password_change(client, volunteer):
    client.force_login(volunteer.user)
    response = client.post("/account/password/", {
        "old_password": "wrong", "new_password1": "a new long passphrase",
        "new_password2": "a new long passphrase"})
    assert "Your old password was entered incorrectly" in response.content.decode()
    response = client.post("/account/password/", {
        "old_password": PASSWORD, "new_password1": "a new long passphrase",
        "new_password2": "a new long passphrase"})
    assert response["Location"] == "/account/"
    volunteer.user.refresh_from_db()
    assert volunteer.user.check_password("a new long passphrase")
    assert client.get("/account/").status_code == 200  # still logged in


def test_pages_that_need_a_login_send_anonymous_visitors_to_it(client):
    for url in ("/account/", "/account/password/", "/teams/new/"):
        assert client.get(url)["Location"] == f"/login/?next={url}", url


def test_a_user_without_volunteer_profile_is_told_so(client):
    staff = get_user_model().objects.create_user("root", password=PASSWORD)
    client.force_login(staff)
    response = client.get("/account/")
    assert response.status_code == 200
    assert "No volunteer profile" in response.content.decode()
    assert client.post("/account/key/rotate/").status_code == 404


# --- account key and hosts -----------------------------------------------------------------


def test_rotating_the_key_shows_the_new_one_once_and_retires_the_old(volunteer_client,
                                                                     volunteer):
    old_key = volunteer.account_key
    response = volunteer_client.post("/account/key/rotate/")
    assert response["Location"] == "/account/"
    new_key = _shown_key(volunteer_client.get("/account/").content.decode())
    assert new_key and new_key != old_key
    assert volunteer_by_account_key(new_key) == volunteer
    assert volunteer_by_account_key(old_key) is None
    assert _shown_key(volunteer_client.get("/account/").content.decode()) is None
    assert not volunteer_client.cookies[ACCOUNT_KEY_COOKIE].value  # deleted once shown


def test_rotating_takes_a_post(volunteer_client, volunteer):
    assert volunteer_client.get("/account/key/rotate/").status_code == 405
    volunteer.refresh_from_db()
    assert volunteer.account_key_hash == sha256_hex(volunteer.account_key)


def test_the_account_page_lists_hosts_with_their_results(volunteer_client, volunteer, settings,
                                                         tmp_path):
    settings.MEDIA_ROOT = tmp_path
    now = timezone.now()
    host = make_host(volunteer=volunteer, name="garage-box", os="Linux", arch="aarch64",
                     cpu_count=8, speed=61_500_000, n_valid=12, n_invalid=1, total_credit=3.5,
                     last_contact=now - timedelta(minutes=5))
    workunit = make_workunit(replicas=3)
    results = list(workunit.results.all())
    Result.objects.filter(pk=results[0].pk).update(host=host, server_state=ServerState.OVER,
                                                   outcome=Outcome.SUCCESS,
                                                   validate_state=ValidateState.INIT)
    Result.objects.filter(pk=results[1].pk).update(host=host,
                                                   server_state=ServerState.IN_PROGRESS)
    make_host(volunteer=volunteer, name="old-laptop", retired=True)
    make_host(name="someone-elses")

    response = volunteer_client.get("/account/")
    rows = list(response.context["hosts"])
    assert [row.name for row in rows] == ["garage-box", "old-laptop"]
    assert (rows[0].n_pending, rows[0].n_in_progress) == (1, 1)
    html = response.content.decode()
    assert "Linux · aarch64" in html
    assert "61.5M/s" in html
    assert html.count(">Retire</button>") == 1  # not for the retired host


def test_retiring_a_host(volunteer_client, volunteer):
    host = make_host(volunteer=volunteer)
    response = volunteer_client.post(f"/account/hosts/{host.pk}/retire/")
    assert response["Location"] == "/account/"
    host.refresh_from_db()
    assert host.retired
    again = volunteer_client.post(f"/account/hosts/{host.pk}/retire/", follow=True)
    assert "This host is already retired." in again.content.decode()


def test_nobody_retires_someone_elses_host(volunteer_client):
    other = make_host()
    assert volunteer_client.post(f"/account/hosts/{other.pk}/retire/").status_code == 404
    assert volunteer_client.post("/account/hosts/999999/retire/").status_code == 404
    assert not Host.objects.get(pk=other.pk).retired


def test_the_account_page_charts_credit_from_the_ledger(volunteer_client, volunteer,
                                                        earn_credit):
    host = make_host(volunteer=volunteer)
    earn_credit(volunteer=volunteer, host=host, days=10)
    response = volunteer_client.get("/account/")
    html = response.content.decode()
    assert response.context["history_points"] == 11  # ten days with credit, and today
    assert html.count('class="series"') == 2  # total credit and RAC, drawn
    assert "20.00" in html  # ten work units of 2 credit each


def test_the_account_page_query_count_does_not_grow_with_hosts(
        volunteer_client, volunteer, earn_credit, django_assert_max_num_queries):
    hosts = [make_host(volunteer=volunteer) for _ in range(3)]
    earn_credit(volunteer=volunteer, host=hosts[0], days=60)
    Host.objects.bulk_create([
        Host(volunteer=volunteer, name=f"rack-{number}", token_hash=sha256_hex(f"t{number}"),
             total_credit=number) for number in range(120)])
    make_volunteer()  # someone else's rows do not show
    # session, user, volunteer + team, host count, host page, credit history
    with django_assert_max_num_queries(6):
        response = volunteer_client.get("/account/")
    assert len(response.context["hosts"].object_list) == 50
    assert response.context["hosts"].paginator.count == 123
