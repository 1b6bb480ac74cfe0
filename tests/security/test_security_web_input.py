"""Hostile input to the web forms and pages: names in any script, control and bidi characters,
NUL bytes, huge numbers in URLs and query strings, oversized posts.

A name shown to others (display name, team name and description, host name) may be in any
script and hold emoji; it may not hold control characters, lone surrogates or the invisible
formatting characters that reorder or hide the text around it (``apps.accounts.services.
public_text``). A refused form is shown again with the reason next to its field, and nothing
is stored; a page never answers 500.
"""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from apps.accounts.models import Team, Volunteer
from tests.factories import make_campaign
from tests.security.helpers import PASSWORD

pytestmark = pytest.mark.django_db

JOIN = {"username": "grace", "email": "grace@example.org", "display_name": "Grace",
        "country": "", "password1": PASSWORD, "password2": PASSWORD}
SCRIPTS = ["Ада Лавлейс 🖥️", "محمد الخوارزمي", "עדה", "👩🏽‍💻🚀", "東京チーム", "Zoë Æsir",
           "נגה and Ada"]
HOSTILE = {
    "rlo": ("evil\u202etxt.exe", "U+202E"),
    "isolate": ("a\u2067b", "U+2067"),
    "ansi": ("\x1b[2Jgone", "U+001B"),
    "zero-width": ("Ad\u200ba", "U+200B"),
    "bom": ("\ufeffAda", "U+FEFF"),
    "line-separator": ("a\u2028b", "U+2028"),
    "bell": ("ding\x07", "U+0007"),
}


def _errors(response, field: str) -> str:
    return " ".join(response.context["form"].errors.get(field, []))


@pytest.mark.parametrize("name", SCRIPTS)
def test_display_names_in_any_script_are_kept_exactly_and_shown_escaped(client, name):
    response = client.post("/join/", {**JOIN, "display_name": name})

    assert response.status_code == 302, response.context["form"].errors
    volunteer = Volunteer.objects.get(user__username="grace")
    assert volunteer.display_name == name
    board = client.get("/leaderboards/users/").content.decode()
    assert name in board


@pytest.mark.parametrize("key", sorted(HOSTILE))
def test_display_names_with_control_or_bidi_characters_are_refused(client, key):
    text, codepoint = HOSTILE[key]

    response = client.post("/join/", {**JOIN, "display_name": text})

    assert response.status_code == 200
    assert codepoint in _errors(response, "display_name")
    assert not get_user_model().objects.filter(username="grace").exists()


def test_a_nul_byte_in_any_join_field_is_refused_by_the_form(client):
    for field in ("username", "email", "display_name", "country", "password1"):
        response = client.post("/join/", {**JOIN, field: "a\x00b"})
        assert response.status_code == 200, field
        assert "Null characters are not allowed." in " ".join(
            e for errors in response.context["form"].errors.values() for e in errors), field
    assert not Volunteer.objects.exists()


def test_markup_in_a_name_is_shown_as_text(client):
    name = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    assert client.post("/join/", {**JOIN, "display_name": name}).status_code == 302

    for url in ("/leaderboards/users/", "/account/"):
        page = client.get(url).content.decode()
        assert "<script>alert" not in page and "<img src=x" not in page, url
        assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page, url


@pytest.mark.parametrize("name", SCRIPTS)
def test_team_names_in_any_script_are_kept(client, ada, name):
    client.force_login(ada.user)

    response = client.post("/teams/new/", {"name": name, "description": "Спасибо!\nThanks."})

    assert response.status_code == 302, response.context["form"].errors
    team = Team.objects.get()
    assert (team.name, team.description) == (" ".join(name.split()), "Спасибо!\nThanks.")
    assert team.name in client.get(f"/teams/{team.pk}/").content.decode()


@pytest.mark.parametrize("key", sorted(HOSTILE))
def test_team_names_with_control_or_bidi_characters_are_refused(client, ada, key):
    text, codepoint = HOSTILE[key]
    client.force_login(ada.user)

    response = client.post("/teams/new/", {"name": text})

    assert response.status_code == 200
    assert codepoint in _errors(response, "name")
    assert not Team.objects.exists()


@pytest.mark.parametrize("key", ["rlo", "isolate", "ansi", "zero-width", "bom", "bell"])
def test_team_descriptions_with_control_or_bidi_characters_are_refused(client, ada, key):
    text, codepoint = HOSTILE[key]
    client.force_login(ada.user)

    response = client.post("/teams/new/", {"name": "Penguins", "description": text})

    assert response.status_code == 200
    assert codepoint in _errors(response, "description")
    assert not Team.objects.exists()


def test_names_that_look_the_same_are_stored_the_same(client, ada):
    """NFC: "é" typed as one character or as "e" and a combining accent is one team name."""
    client.force_login(ada.user)
    assert client.post("/teams/new/", {"name": "Caf\u00e9"}).status_code == 302

    response = client.post("/teams/new/", {"name": "Cafe\u0301"})

    assert "There is already a team called" in _errors(response, "name")
    assert Team.objects.get().name == "Caf\u00e9"


# --- numbers in URLs and query strings ---------------------------------------------------------

BIG = [2**31, 2**63, 2**64, 2**70, 10**40]


@pytest.mark.parametrize("number", BIG)
@pytest.mark.parametrize("url", ["/teams/{}/", "/campaigns/{}/", "/campaigns/{}/strategies/",
                                 "/strategies/{}/", "/strategies/{}/genome.json"])
def test_ids_beyond_any_database_integer_are_404(client, url, number):
    assert client.get(url.format(number)).status_code == 404


@pytest.mark.parametrize("number", BIG)
def test_posting_to_huge_ids_is_404(client, ada, number):
    client.force_login(ada.user)
    for url in (f"/teams/{number}/join/", f"/account/hosts/{number}/retire/"):
        assert client.post(url).status_code == 404, url


@pytest.mark.parametrize("page", ["0", "-1", "1e9", str(2**70), "NaN", "Infinity", "x", "1.5",
                                  "\u0661", "%00", ""])
@pytest.mark.parametrize("url", ["/leaderboards/users/", "/leaderboards/teams/",
                                 "/leaderboards/hosts/", "/teams/", "/campaigns/",
                                 "/strategies/"])
def test_any_page_number_gives_a_page(client, url, page):
    make_campaign()
    assert client.get(url, {"page": page, "order": page, "q": page}).status_code == 200


@pytest.mark.parametrize("page", ["0", "-1", str(2**70), "NaN", "x"])
@pytest.mark.parametrize("kind", ["users", "teams", "hosts"])
def test_the_stats_export_answers_a_bad_page_with_404(client, kind, page):
    response = client.get(f"/stats/{kind}.json", {"page": page})
    assert response.status_code == 404
    assert "No such page" in response.json()["detail"]


def test_a_team_search_with_odd_characters_is_harmless(client):
    Team.objects.create(name="100% _real_ team")
    for query in ("%", "_", "\\", "'", '"', "100%", "\u202e", "x" * 500):
        assert client.get("/teams/", {"q": query}).status_code == 200, query


# --- oversized and over-numerous form posts ----------------------------------------------------


def test_an_oversized_form_post_is_a_400(client, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    response = client.post("/join/", {**JOIN, "display_name": "x" * 20_000})
    assert response.status_code == 400
    assert not Volunteer.objects.exists()


def test_a_form_post_with_too_many_fields_is_a_400(client):
    response = client.post("/join/", {**JOIN, **{f"f{i}": "1" for i in range(1_100)}})
    assert response.status_code == 400
    assert not Volunteer.objects.exists()


def test_a_login_with_a_huge_password_is_refused_quickly(client, ada):
    response = client.post("/login/", {"username": "ada", "password": "x" * 100_000})
    assert response.status_code == 200
    assert "_auth_user_id" not in client.session


def test_markup_in_a_host_name_is_shown_as_text(client, ada):
    from tests.security.helpers import HOST, HOST_INFO, api

    name = '<img src=x onerror=alert(1)>"\'&'
    assert api(ada.host).post(HOST, {**HOST_INFO, "name": name}, format="json").status_code \
        == 200
    client.force_login(ada.user)
    for url in ("/account/", "/leaderboards/hosts/", "/stats/hosts.json"):
        assert "<img src=x" not in client.get(url).content.decode(), url
    page = client.get("/account/").content.decode()
    assert "&lt;img src=x onerror=alert(1)&gt;&quot;&#x27;&amp;" in page


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/",
                                    "/\\evil.example", "javascript:alert(1)",
                                    "https:evil.example"])
def test_logging_in_never_redirects_off_the_site(client, ada, target):
    response = client.post(f"/login/?next={target}", {"username": "ada", "password": PASSWORD})
    assert response.status_code == 302
    assert response["Location"] == "/account/", response["Location"]


@pytest.mark.parametrize("url", ["/", "/login/", "/join/", "/teams/", "/leaderboards/users/",
                                 "/admin/login/"])
def test_no_page_may_be_framed(client, url):
    assert client.get(url)["X-Frame-Options"] == "DENY"
