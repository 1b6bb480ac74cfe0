"""The volunteer's path in a real browser (headless Debian chromium) against the live portal:
join, read the account key and the attach command once, browse the leaderboards and find
oneself, found a team, download the worker. Screenshots go to var/test-artifacts/screenshots/.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.accounts.models import Volunteer
from apps.accounts.selectors import volunteer_by_account_key
from tests.factories import make_campaign, make_host, make_user, make_volunteer, sha256_hex
from tests.web.conftest import PASSWORD
from worker_client import __version__

pytestmark = pytest.mark.slow

KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]{43}$")


@pytest.fixture
def crowd(db) -> list[Volunteer]:
    """120 volunteers with credit, so a newcomer (no credit) lands on the leaderboard's 3rd page."""
    now = timezone.now()
    crowd = []
    for number in range(120):
        volunteer = make_volunteer(display_name=f"Volunteer {number:03d}",
                                   total_credit=1000.0 - number, rac=50.0 + number % 7,
                                   rac_time=now - timedelta(hours=number))
        crowd.append(volunteer)
        if number < 60:
            make_host(volunteer=volunteer, total_credit=500.0 - number, speed=4e7 + number)
    return crowd


def test_join_shows_the_account_key_once_with_the_attach_command(
        browser_page, screenshot, live_server, settings, tmp_path, crowd):
    settings.MEDIA_ROOT = tmp_path / "media"
    make_campaign(name="BTC 5m momentum", strategies_tried=48_000, epochs_done=12,
                  best_fitness=1.234)
    page = browser_page

    page.goto("/")
    assert page.locator("h1").inner_text().startswith("Lend your computer")
    assert page.locator("#figures .figure").count() == 5
    screenshot("home")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    screenshot("home-phone")
    page.set_viewport_size({"width": 1280, "height": 900})

    page.get_by_role("link", name="Join and lend your computer").click()
    page.wait_for_url("**/join/")
    page.fill("#id_username", "grace")
    page.fill("#id_email", "grace@example.org")
    page.fill("#id_display_name", "Grace H.")
    page.fill("#id_password1", "short")
    page.fill("#id_password2", "different")
    page.get_by_role("button", name="Create my account").click()
    assert page.locator(".errorlist").first.is_visible()
    screenshot("join-errors")
    page.fill("#id_password1", PASSWORD)
    page.fill("#id_password2", PASSWORD)
    page.get_by_role("button", name="Create my account").click()

    page.wait_for_url("**/account/")
    account_key = page.locator("#account-key-value").inner_text().strip()
    assert KEY_PATTERN.match(account_key)
    attach = page.locator("#attach-command").inner_text().strip()
    assert attach == (f"strategy-worker attach --server {live_server.url} "
                      f"--account-key {account_key}")
    assert volunteer_by_account_key(account_key).display_name == "Grace H."
    screenshot("account-key")

    page.reload()  # shown once: now only the hint
    assert page.locator("#account-key-value").count() == 0
    assert account_key not in page.content()
    assert f"{account_key[:6]}…" in page.locator("#account-key").inner_text()
    screenshot("account")

    page.get_by_role("link", name="Leaderboards").click()
    page.wait_for_url("**/leaderboards/users/")
    assert page.locator("#leaderboard tbody tr").count() == 50
    assert page.locator("#leaderboard tbody tr").first.locator("td").first.inner_text() == "1"
    screenshot("leaderboard-users")
    page.set_viewport_size({"width": 390, "height": 844})
    screenshot("leaderboard-users-phone", full_page=False)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.locator("#find-me").click()
    page.wait_for_url(re.compile(r".*page=3#me$"))
    me = page.locator("tr.me")
    assert me.count() == 1
    assert "Grace H." in me.inner_text()
    assert me.locator("td").first.inner_text() == "121"
    screenshot("leaderboard-find-me", full_page=False)

    page.get_by_role("link", name="Recent average credit").click()
    assert "order=rac" in page.url
    page.get_by_role("link", name="Computers", exact=True).click()
    page.wait_for_url(re.compile(r".*/leaderboards/hosts/\?order=rac$"))
    assert page.locator("#leaderboard tbody tr").count() == 50
    screenshot("leaderboard-hosts")


def test_a_volunteer_founds_a_team_and_finds_it_on_the_leaderboard(
        browser_page, screenshot, crowd):
    make_volunteer(user=make_user("linus", password=PASSWORD), display_name="Linus")
    page = browser_page
    page.goto("/login/")
    page.fill("#id_username", "linus")
    page.fill("#id_password", PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/account/")

    page.goto("/teams/new/")
    screenshot("team-create")
    page.fill("#id_name", "Penguins")
    page.fill("#id_description", "Backtesting on every spare core since 2024.")
    page.get_by_role("button", name="Found the team").click()
    page.wait_for_url(re.compile(r".*/teams/\d+/$"))
    assert "You founded Penguins" in page.locator(".messages").inner_text()
    assert "Linus" in page.locator("tr.me").inner_text()
    screenshot("team")

    page.goto("/leaderboards/teams/")
    page.locator("#find-me").click()
    assert "Penguins" in page.locator("tr.me").inner_text()
    screenshot("leaderboard-teams")

    page.goto("/teams/")
    screenshot("teams")

    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(re.compile(r".*/$"))
    assert page.get_by_role("link", name="Log in").is_visible()


def test_download_page_gives_the_install_and_attach_commands(
        browser_page, screenshot, live_server, wheel_dir):
    (wheel_dir / f"strategy_worker-{__version__}-py3-none-any.whl").write_bytes(b"PK\x03\x04 wheel")
    page = browser_page
    page.goto("/download/")
    wheel_url = f"{live_server.url}/download/strategy_worker-{__version__}-py3-none-any.whl"
    assert page.locator("#install-pipx").inner_text().strip() == f"pipx install {wheel_url}"
    assert page.locator("#wheel-sha256").inner_text() == sha256_hex(b"PK\x03\x04 wheel")
    screenshot("download")
    response = page.request.get(wheel_url)
    assert response.ok
    assert response.body() == b"PK\x03\x04 wheel"


def test_a_returning_volunteer_sees_hosts_and_credit_charts(browser_page, screenshot,
                                                            earn_credit):
    volunteer = make_volunteer(user=make_user("marie", password=PASSWORD),
                               display_name="Marie", country="FR")
    now = timezone.now()
    rig = make_host(volunteer=volunteer, name="lab-rig", os="Linux", arch="x86_64",
                    cpu_count=32, speed=2.4e8, n_valid=40, n_invalid=1,
                    last_contact=now - timedelta(minutes=3))
    make_host(volunteer=volunteer, name="old-laptop", os="Darwin", arch="arm64", cpu_count=8,
              speed=9e7, retired=True, last_contact=now - timedelta(days=40))
    earn_credit(volunteer=volunteer, host=rig, days=45, every_days=1)
    page = browser_page
    page.goto("/login/?next=/account/")
    screenshot("login")
    page.fill("#id_username", "marie")
    page.fill("#id_password", PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/account/")

    # The charts are drawn: a visible line with real extent, not just an element.
    for chart in ("#credit-chart", "#rac-chart"):
        line = page.locator(f"{chart} polyline.series")
        box = line.bounding_box()
        assert box and box["width"] > 200 and box["height"] > 20, chart
    assert page.locator("#hosts tbody tr").count() == 2
    assert page.locator("#hosts tbody tr").first.get_by_role("button", name="Retire").count() == 1
    screenshot("account-with-credit")

    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#hosts tbody tr").first.get_by_role("button", name="Retire").click()
    page.wait_for_load_state()
    assert "lab-rig is retired" in page.locator(".messages").inner_text()

    page.goto("/account/password/")
    screenshot("password-change")
