"""Who may open what: every route the URL resolver knows, every form the site shows.

- Each route has a declared access rule (``RULES``); a route added without one fails
  ``test_every_route_has_an_access_rule``. Anonymous callers get the login page, a 401 in the
  error shape, or the page, as its rule says; every admin URL sends anyone but staff to the
  admin's login.
- A host never reads or changes another host's work; a volunteer never sees another's key and
  never retires another's host (404, the same answer as for a host that does not exist).
- Every form found on every page refuses a POST without its CSRF token (403) and accepts it
  with one; the API, which no browser session can call, needs none.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from html.parser import HTMLParser
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone

from apps.accounts.models import Host, Team, Volunteer
from apps.workunits.marketdata import dataset_create_synthetic
from apps.workunits.models import Result, Strategy
from apps.workunits.states import CampaignState, ServerState
from tests.factories import make_campaign, make_workunit
from tests.security.helpers import (
    DIGEST,
    HOST,
    HOST_INFO,
    PASSWORD,
    SCHEDULER,
    api,
    assert_error,
)
from worker_client.engine import Genome

pytestmark = pytest.mark.django_db

PUBLIC = "public"  # anyone: GET answers 200
LOGIN = "login"  # a volunteer's page: anonymous callers are sent to the login page
LOGIN_POST = "login+post"  # a volunteer's action (POST only)
HOST_TOKEN = "host token"  # the worker API: 401 without a host token
ACCOUNT_KEY = "account key"  # attach: the account key in the body
LOGOUT = "logout"  # POST only, harmless for anyone
API_NOT_FOUND = "api 404"  # any other path under /api/v1/: 404 in the error shape

RULES = {
    "healthz": PUBLIC, "api:schema": PUBLIC, "api:docs": PUBLIC,
    "api:attach": ACCOUNT_KEY, "api:host": HOST_TOKEN, "api:scheduler": HOST_TOKEN,
    "api:dataset": HOST_TOKEN, "api:not_found": API_NOT_FOUND,
    "home": PUBLIC, "join": PUBLIC, "login": PUBLIC, "logout": LOGOUT,
    "account": LOGIN, "password_change": LOGIN, "account_key_rotate": LOGIN_POST,
    "password_reset": PUBLIC, "password_reset_done": PUBLIC, "password_reset_confirm": PUBLIC,
    "password_reset_complete": PUBLIC,
    "host_retire": LOGIN_POST,
    "volunteer_detail": PUBLIC,
    "team_list": PUBLIC, "team_create": LOGIN, "team_leave": LOGIN_POST, "team_detail": PUBLIC,
    "team_join": LOGIN_POST,
    "leaderboard_users": PUBLIC, "leaderboard_teams": PUBLIC, "leaderboard_hosts": PUBLIC,
    "stats_users": PUBLIC, "stats_teams": PUBLIC, "stats_hosts": PUBLIC,
    "download": PUBLIC, "download_wheel": PUBLIC,
    "campaign_list": PUBLIC, "campaign_detail": PUBLIC, "campaign_strategies": PUBLIC,
    "strategy_list": PUBLIC, "strategy_detail": PUBLIC, "strategy_genome": PUBLIC,
    "server_status": PUBLIC,
}


def _routes() -> list[tuple[str, str | None, Any]]:
    """(route, name with namespace, pattern) for every URL pattern, admin's included."""
    found = []

    def walk(patterns: list[Any], prefix: str, namespace: str | None) -> None:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                inner = ":".join(n for n in (namespace, pattern.namespace) if n) or None
                walk(pattern.url_patterns, prefix + str(pattern.pattern), inner)
            elif isinstance(pattern, URLPattern):
                name = f"{namespace}:{pattern.name}" if namespace and pattern.name else \
                    pattern.name
                found.append((prefix + str(pattern.pattern), name, pattern))

    walk(get_resolver().url_patterns, "", None)
    return found


@pytest.fixture
def world(ada, bob, settings, tmp_path):
    """Rows for every URL argument: ada's team, host and result, a campaign, a strategy, a wheel
    to download."""
    settings.WORKER_WHEEL_DIR = tmp_path / "dist"
    settings.WORKER_WHEEL_DIR.mkdir()
    import worker_client

    wheel = f"strategy_worker-{worker_client.__version__}-py3-none-any.whl"
    (settings.WORKER_WHEEL_DIR / wheel).write_bytes(b"PK\x05\x06" + b"\0" * 18)
    team = Team.objects.create(name="Penguins", founder=ada.user)
    Volunteer.objects.filter(pk=ada.pk).update(team=team)
    campaign = make_campaign(dataset=dataset_create_synthetic(bars=1_200, seed=3),
                             state=CampaignState.ACTIVE)
    genome = Genome.sma_crossover(5, 20).to_dict()
    metrics = {"sharpe": 1.0, "total_return": 0.1, "n_trades": 3, "max_drawdown": 0.1,
               "return_mean": 0.0001, "return_std": 0.001, "return_skew": 0.0,
               "return_kurtosis": 3.0, "n_returns": 500}
    strategy = Strategy.objects.create(
        campaign=campaign, genome=genome, genome_hash="g1", fitness=1.0,
        description=Genome.from_dict(genome).describe(), in_sample=metrics,
        out_sample=metrics, out_sample_sharpe=1.0)
    workunit = make_workunit(campaign=campaign, replicas=1)
    replica = workunit.results.get()
    Result.objects.filter(pk=replica.pk).update(
        server_state=ServerState.IN_PROGRESS, host=ada.host, volunteer=ada,
        sent_time=timezone.now(), report_deadline=timezone.now() + timedelta(hours=1))
    replica.refresh_from_db()
    return {"team_id": team.pk, "host_id": ada.host.pk, "pk": campaign.pk,
            "sha256": campaign.dataset.sha256, "filename": wheel, "strategy": strategy.pk,
            "replica": replica, "campaign": campaign, "uidb64": "MQ", "token": "no-such-token",
            "volunteer_id": ada.pk}


def _url(name: str, pattern: Any, world: dict[str, Any]) -> str:
    kwargs = {key: world[key] for key in getattr(pattern.pattern, "converters", {})}
    kwargs.update({key: "no/such/endpoint" for key in pattern.pattern.regex.groupindex
                   if key not in kwargs})
    if name.startswith("strategy_") and "pk" in kwargs:
        kwargs["pk"] = world["strategy"]
    return reverse(name, kwargs=kwargs)


def test_every_route_has_an_access_rule():
    named = {name for route, name, _ in _routes() if not route.startswith("admin/")}
    assert named == set(RULES), ("routes without a rule: "
                                 f"{sorted(named - set(RULES))}; rules without a route: "
                                 f"{sorted(set(RULES) - named)}")


def test_anonymous_callers_get_what_each_rule_says(world, settings):
    settings.DEBUG = False
    client = Client()
    checked = 0
    for route, name, pattern in _routes():
        if route.startswith("admin/"):
            continue
        url = _url(name, pattern, world)
        rule = RULES[name]
        get = client.get(url)
        if get.streaming:  # a file download: read to its end, which closes the file
            b"".join(get.streaming_content)
        post = client.post(url, "{}", content_type="application/json") if name.startswith(
            "api:") else client.post(url)
        if rule == PUBLIC:
            assert get.status_code == 200, (url, get.status_code)
        elif rule in (LOGIN, LOGIN_POST):
            for response in (get, post):
                assert response.status_code == 302, (url, response.status_code)
                assert response["Location"] == f"/login/?next={url}", url
        elif rule == HOST_TOKEN:
            for response in (get, post):
                if response.status_code != 405:
                    assert_error(response, 401, "not_authenticated")
                    assert response["WWW-Authenticate"] == "Token"
        elif rule == ACCOUNT_KEY:
            assert_error(post, 400, "validation_error")
        elif rule == LOGOUT:
            assert get.status_code == 405 and post.status_code == 302, url
        elif rule == API_NOT_FOUND:
            for response in (get, post, client.post(url.rstrip("/"))):
                assert_error(response, 404, "not_found")
        checked += 1
    assert checked == len(RULES)


def test_a_logged_in_browser_session_cannot_call_the_worker_api(world, ada):
    client = Client()
    client.force_login(ada.user)
    for url in (HOST, SCHEDULER, f"/api/v1/datasets/{world['sha256']}/"):
        assert_error(client.get(url), 401, "not_authenticated")
        assert_error(client.post(url, {}, content_type="application/json"), 401)


# --- the admin: staff only ---------------------------------------------------------------------


def _admin_urls() -> list[str]:
    urls = []
    for route, name, pattern in _routes():
        if not route.startswith("admin/"):
            continue
        if name in (None, "admin:login"):
            continue
        regex = pattern.pattern.regex
        kwargs = {key: {"app_label": "accounts", "object_id": "1", "content_type_id": 1,
                        "url": "nowhere"}.get(key, "1") for key in regex.groupindex}
        if hasattr(pattern.pattern, "converters"):
            kwargs.update({key: {"content_type_id": 1}.get(key, "1")
                           for key in pattern.pattern.converters})
        urls.append(reverse(name, kwargs=kwargs))
    urls.append("/admin/no/such/page/")  # the catch-all
    return urls


def test_every_admin_url_sends_anyone_but_staff_to_the_admin_login(ada):
    urls = _admin_urls()
    assert len(urls) > 50  # the admin's own, and one set per registered model
    anonymous, volunteer = Client(), Client()
    volunteer.force_login(ada.user)
    for client in (anonymous, volunteer):
        for url in urls:
            response = client.get(url)
            assert response.status_code == 302, (url, response.status_code)
            if url == "/admin/logout/":  # Django's admin sends a non-staff logout to its index
                assert response["Location"] == "/admin/", url
            else:
                assert response["Location"].startswith("/admin/login/?next="), url


def test_a_logged_in_volunteer_is_not_let_into_the_admin(ada):
    client = Client()
    client.force_login(ada.user)

    index = client.get("/admin/", follow=True)

    assert index.redirect_chain == [("/admin/login/?next=/admin/", 302)]
    assert "not authorized to access this page" in index.content.decode()
    assert client.post("/admin/login/?next=/admin/",
                       {"username": "ada", "password": PASSWORD}).status_code == 200


def test_staff_get_in_and_the_admin_pages_work(db):
    staff = get_user_model().objects.create_superuser("root", "root@example.org", PASSWORD)
    client = Client()
    client.force_login(staff)
    assert client.get("/admin/").status_code == 200
    for model in ("accounts/host", "accounts/volunteer", "accounts/team", "workunits/result",
                  "workunits/workunit", "workunits/campaign"):
        assert client.get(f"/admin/{model}/").status_code == 200, model


def test_a_staff_member_without_permissions_sees_no_model(db):
    clerk = get_user_model().objects.create_user("clerk", password=PASSWORD, is_staff=True)
    client = Client()
    client.force_login(clerk)
    assert client.get("/admin/").status_code == 200
    assert client.get("/admin/accounts/host/").status_code == 403


# --- hosts and their work ----------------------------------------------------------------------


def _row(replica: Result) -> dict[str, Any]:
    return Result.objects.filter(pk=replica.pk).values(
        "host", "server_state", "outcome", "output", "acked_time", "fraction_done",
        "received_time").get()


def test_a_host_cannot_report_ack_heartbeat_or_abort_another_hosts_result(world, bob):
    replica = world["replica"]
    before = _row(replica)
    body = {"results": [{"result_id": replica.pk, "status": "success",
                         "output": {"digest": DIGEST}}],
            "acks": [replica.pk], "in_progress": [replica.pk],
            "progress": [{"result_id": replica.pk, "fraction_done": 0.9}]}

    response = api(bob.host).post(SCHEDULER, body, format="json")

    assert response.status_code == 200, response.content
    reply = response.json()
    assert reply["accepted"] == []
    assert reply["rejected"] == [{"result_id": replica.pk, "reason": "not_sent_to_this_host"}]
    assert _row(replica) == before


def test_an_error_report_for_another_hosts_result_changes_nothing_either(world, bob):
    replica = world["replica"]
    before = _row(replica)
    body = {"results": [{"result_id": replica.pk, "status": "error", "error": "boom"}]}
    response = api(bob.host).post(SCHEDULER, body, format="json")
    assert response.json()["rejected"][0]["reason"] == "not_sent_to_this_host"
    assert _row(replica) == before


def test_a_host_reads_only_its_own_status(world, ada, bob):
    ada_status = api(ada.host).get(HOST).json()
    bob_status = api(bob.host).get(HOST).json()
    assert (ada_status["host_id"], ada_status["in_progress"]) == (ada.host.pk, 1)
    assert (bob_status["host_id"], bob_status["in_progress"]) == (bob.host.pk, 0)


def test_a_host_updates_and_detaches_only_itself(world, ada, bob):
    replica = world["replica"]
    api(bob.host).post(HOST, {**HOST_INFO, "name": "bob-renamed"}, format="json")
    assert api(bob.host).delete(HOST).status_code == 204

    assert Host.objects.get(pk=ada.host.pk).name == "ada-rig"
    assert not Host.objects.get(pk=ada.host.pk).retired
    assert _row(replica)["server_state"] == ServerState.IN_PROGRESS
    assert api(ada.host).get(HOST).status_code == 200


# --- volunteers and their keys and hosts -------------------------------------------------------


def test_nobody_retires_someone_elses_host(world, ada, bob):
    client = Client()
    client.force_login(bob.user)
    missing = client.post(f"/account/hosts/{10**9}/retire/")

    response = client.post(f"/account/hosts/{ada.host.pk}/retire/")

    assert response.status_code == missing.status_code == 404
    assert not Host.objects.get(pk=ada.host.pk).retired
    assert api(ada.host).get(HOST).status_code == 200


def test_nobody_sees_another_volunteers_key_token_or_email(world, ada, bob, settings):
    """Every page bob (or an anonymous visitor) can open is searched for ada's secrets."""
    settings.DEBUG = False
    secrets = {"account key": ada.account_key, "key hint": ada.account_key_hint,
               "key hash": ada.account_key_hash, "host token": ada.host.token,
               "token hash": ada.host.token_hash, "email": ada.user.email}
    visitor, client = Client(), Client()
    client.force_login(bob.user)
    pages = 0
    for route, name, pattern in _routes():
        if route.startswith("admin/") or RULES[name] not in (PUBLIC, LOGIN):
            continue
        url = _url(name, pattern, world)
        for who in (visitor, client):
            response = who.get(url)
            body = b"".join(response.streaming_content) if response.streaming else \
                response.content
            text = body.decode("utf-8", "replace")
            for what, secret in secrets.items():
                assert secret not in text, f"{url} shows ada's {what}"
            pages += 1
    assert pages > 40


def test_a_volunteer_sees_only_their_own_key_hint_and_hosts(world, ada, bob):
    client = Client()
    client.force_login(bob.user)
    page = client.get("/account/").content.decode()
    assert bob.account_key_hint in page and bob.host.name in page
    assert ada.account_key_hint not in page and "ada-rig" not in page


# --- CSRF: every form --------------------------------------------------------------------------


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "form":
            self.forms.append({"method": (values.get("method") or "get").lower(),
                               "action": values.get("action"), "fields": {}})
        elif tag == "input" and self.forms and values.get("name"):
            self.forms[-1]["fields"][values["name"]] = values.get("value") or ""


def _post_forms(client: Client, pages: list[str]) -> dict[str, dict[str, str]]:
    """action URL → the hidden fields of each POST form found on those pages."""
    found: dict[str, dict[str, str]] = {}
    for page in pages:
        parser = _Forms()
        parser.feed(client.get(page).content.decode())
        for form in parser.forms:
            if form["method"] == "post":
                found.setdefault(form["action"] or page, form["fields"])
    return found


def _pages(world: dict[str, Any]) -> list[str]:
    return ["/", "/account/", "/account/password/", "/teams/", "/teams/new/",
            f"/teams/{world['team_id']}/", "/leaderboards/users/", "/campaigns/",
            f"/campaigns/{world['pk']}/", "/download/", "/status/"]


def test_every_form_refuses_a_post_without_its_csrf_token(world, ada, bob, settings):
    settings.PASSWORD_RESET_ENABLED = True
    walruses = Team.objects.create(name="Walruses")  # bob's: a leave form is shown
    Volunteer.objects.filter(pk=bob.pk).update(team=walruses)  # and Penguins', a join form
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(bob.user)
    forms = _post_forms(strict, _pages(world))
    anonymous = Client(enforce_csrf_checks=True)
    forms.update(_post_forms(anonymous, ["/login/", "/join/", "/password-reset/"]))
    assert {"/account/key/rotate/", "/logout/", "/teams/leave/", "/login/", "/join/",
            "/password-reset/",
            "/account/password/", "/teams/new/"} <= set(forms), sorted(forms)
    assert any(re.fullmatch(r"/teams/\d+/join/", url) for url in forms)
    assert any(re.fullmatch(r"/account/hosts/\d+/retire/", url) for url in forms)
    before = list(Volunteer.objects.values()), list(Host.objects.values("pk", "retired"))

    for action, fields in forms.items():
        assert "csrfmiddlewaretoken" in fields, f"the form posting to {action} has no token"
        client = anonymous if action in ("/login/", "/join/", "/password-reset/") else strict
        data = {k: v for k, v in fields.items() if k != "csrfmiddlewaretoken"}
        assert client.post(action, data).status_code == 403, action
        assert client.post(action, {**data, "csrfmiddlewaretoken": "x" * 64}).status_code \
            == 403, action

    assert (list(Volunteer.objects.values()),
            list(Host.objects.values("pk", "retired"))) == before
    assert strict.get("/account/").status_code == 200  # still logged in: logout was refused


def test_every_form_works_with_its_csrf_token(world, bob):
    team = Team.objects.create(name="Walruses")
    Volunteer.objects.filter(pk=bob.pk).update(team=team)
    client = Client(enforce_csrf_checks=True)
    client.force_login(bob.user)
    forms = _post_forms(client, _pages(world))
    order = sorted(forms, key=lambda url: url == "/logout/")  # logging out last
    for action in order:
        response = client.post(action, forms[action])
        assert response.status_code in (200, 302), (action, response.status_code)
    bob.refresh_from_db()
    assert Host.objects.get(pk=bob.host.pk).retired  # the retire form did its work
    assert bob.team_id == world["team_id"]  # left Walruses, joined Penguins
    anonymous = Client(enforce_csrf_checks=True)
    login = _post_forms(anonymous, ["/login/"])["/login/"]
    response = anonymous.post("/login/", {**login, "username": "bob", "password": PASSWORD})
    assert response.status_code == 302


def test_the_admin_login_form_needs_its_csrf_token(db):
    client = Client(enforce_csrf_checks=True)
    fields = _post_forms(client, ["/admin/login/"])
    assert list(fields) == ["/admin/login/"] or len(fields) == 1
    action, data = next(iter(fields.items()))
    assert client.post(action, {"username": "x", "password": "y"}).status_code == 403
    assert client.post(action, {**data, "username": "x", "password": "y"}).status_code == 200


def test_the_api_needs_no_csrf_token_because_no_cookie_authenticates_it(ada):
    client = Client(enforce_csrf_checks=True)
    response = client.post(SCHEDULER, json.dumps({}), content_type="application/json",
                           HTTP_AUTHORIZATION=f"Token {ada.host.token}")
    assert response.status_code == 200
