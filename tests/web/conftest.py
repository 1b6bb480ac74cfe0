"""Fixtures for the web pages, shared by the community and research suites.

Browser tests: ``browser_page`` is a Playwright page in Debian's headless chromium
(``/usr/bin/chromium``, never a browser Playwright downloads), whose relative URLs go to
``live_server``; ``screenshot("name")`` saves the page to
``var/test-artifacts/screenshots/name.png``. Both skip the test, saying why, when chromium or
playwright is missing.

    def test_something(browser_page, screenshot):
        browser_page.goto("/leaderboards/users/")
        screenshot("leaderboard")
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connections
from django.utils import timezone

from tests.factories import make_user, make_volunteer

PROJECT_DIR = Path(__file__).resolve().parents[2]
SCREENSHOT_DIR = PROJECT_DIR / "var" / "test-artifacts" / "screenshots"
CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
PASSWORD = "correct horse battery staple"


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    """Hashing a password costs ~0.3 s with the real hasher; these tests hash many."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def wheel_dir(settings, tmp_path) -> Path:
    """An empty wheel directory the download page reads (tests put wheels in it)."""
    directory = tmp_path / "dist"
    directory.mkdir()
    settings.WORKER_WHEEL_DIR = directory
    return directory


@pytest.fixture
def volunteer(db):
    """A volunteer who can log in with ``PASSWORD``; ``.account_key`` holds the raw key."""
    return make_volunteer(user=make_user("ada", password=PASSWORD), display_name="Ada")


@pytest.fixture
def volunteer_client(client, volunteer):
    """The test client, logged in as ``volunteer``."""
    client.force_login(volunteer.user)
    return client


# --- the browser ----------------------------------------------------------------------------


@pytest.fixture
def browser_page(live_server, monkeypatch) -> Iterator[Any]:
    """A Playwright page in headless Debian chromium, with ``live_server`` as its base URL."""
    if not CHROMIUM.exists():
        pytest.skip(f"no chromium at {CHROMIUM}: install Debian's package "
                    "(`apt-get install chromium`, which `make test` does as root)")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (the `test` extra)")
    # Playwright's sync API keeps an event loop on this thread; Django's ORM refuses to run
    # beside one unless told that this test thread really is synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            # Containers run as root with a small /dev/shm: chromium needs both flags there.
            args=["--no-sandbox", "--disable-dev-shm-usage"])
        context = browser.new_context(base_url=live_server.url,
                                      viewport={"width": 1280, "height": 900})
        context.set_default_timeout(15_000)
        page = context.new_page()
        try:
            yield page
        finally:
            context.close()
            browser.close()
            # Under Playwright's loop Django keeps this test's database connections apart from
            # the thread's usual ones; close them here, or PostgreSQL refuses to drop the test
            # database at the end ("being accessed by other users").
            connections.close_all()


@pytest.fixture
def screenshot(browser_page) -> Callable[..., Path]:
    """``screenshot(name, page=None, full_page=True)`` → the PNG saved as a test artifact."""
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)

    def take(name: str, page: Any = None, *, full_page: bool = True) -> Path:
        path = SCREENSHOT_DIR / f"{name}.png"
        (page or browser_page).screenshot(path=str(path), full_page=full_page)
        return path

    return take


# --- credit earned over days, through the real grant service ---------------------------------


@pytest.fixture
def earn_credit(settings, tmp_path) -> Callable[..., list]:
    """``earn_credit(volunteer=…, host=…, days=30, now=…)``: one valid replica a day, each
    granted by ``credit_grant`` at that day's time (the ledger row back-dated to match), so the
    volunteer's, team's and host's totals and RAC are exactly what production would hold."""
    from apps.credit.models import CreditGrant
    from apps.credit.services import credit_grant
    from apps.workunits.models import Result
    from apps.workunits.states import Outcome, ServerState, ValidateState
    from tests.factories import make_campaign, make_workunit

    settings.MEDIA_ROOT = tmp_path / "media"

    def earn(*, volunteer: Any, host: Any = None, days: int = 30, now: Any = None,
             cost: int = 20_000_000, every_days: int = 1) -> list:
        now = now or timezone.now()
        campaign = make_campaign()
        grants = []
        for day in range(days, 0, -every_days):
            when = now - timedelta(days=day, hours=1)
            workunit = make_workunit(campaign=campaign, replicas=1, cost=cost,
                                     credit=cost / 1e7)
            Result.objects.filter(workunit=workunit).update(
                host=host, volunteer=volunteer, server_state=ServerState.OVER,
                outcome=Outcome.SUCCESS, validate_state=ValidateState.VALID,
                sent_time=when - timedelta(hours=2), received_time=when,
                granted_credit=workunit.credit)
            grant = credit_grant(result=Result.objects.get(workunit=workunit), now=when)
            CreditGrant.objects.filter(pk=grant.pk).update(granted_at=when)
            grants.append(grant)
        return grants

    return earn


# --- many rows at once, for pagination and query-count tests ---------------------------------


@pytest.fixture
def bulk_volunteers(db) -> Callable[..., list]:
    """``bulk_volunteers(count, prefix="v", **fields)``: users and volunteers in two INSERTs;
    ``fields`` values may be callables of the row number (e.g. ``total_credit=float``)."""
    from django.contrib.auth import get_user_model

    from apps.accounts.models import Volunteer
    from tests.factories import sha256_hex

    def create(count: int, *, prefix: str = "v", **fields: Any) -> list:
        user_model = get_user_model()
        users = user_model.objects.bulk_create(
            [user_model(username=f"{prefix}{number}") for number in range(count)])
        return Volunteer.objects.bulk_create([
            Volunteer(user=user, account_key_hash=sha256_hex(user.username),
                      account_key_hint="bulk00",
                      **{"display_name": f"{prefix.title()} {number}",
                         **{name: value(number) if callable(value) else value
                            for name, value in fields.items()}})
            for number, user in enumerate(users)])

    return create
