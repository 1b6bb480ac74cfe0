"""Home, the worker download, and the base template's frame."""

from __future__ import annotations

import hashlib
from datetime import date, timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from apps.web.svg_charts import format_number, line_chart
from apps.workunits.models import Result
from apps.workunits.states import CampaignState, Outcome, ServerState
from tests.factories import make_campaign, make_host, make_volunteer, make_workunit
from worker_client import __version__

pytestmark = pytest.mark.django_db

WHEEL = f"strategy_worker-{__version__}-py3-none-any.whl"


# --- home -----------------------------------------------------------------------------------


def test_home_shows_live_figures_and_current_campaigns(client, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    now = timezone.now()
    volunteer = make_volunteer()
    make_host(volunteer=volunteer, last_contact=now - timedelta(hours=2))
    make_host(volunteer=volunteer, last_contact=now - timedelta(days=2))  # not active
    make_host(volunteer=volunteer, last_contact=now, retired=True)  # not active
    running = make_campaign(name="Running", strategies_tried=1_000, epochs_done=3, islands=2,
                            budget_epochs=5)
    make_campaign(name="Paused", state=CampaignState.PAUSED, strategies_tried=500)
    make_campaign(name="Done", state=CampaignState.FINISHED, strategies_tried=250)
    make_campaign(name="Draft", state=CampaignState.DRAFT)
    # 3 successes reported in the last hour at 36 M candle-evaluations each: 30 k/s.
    workunit = make_workunit(campaign=running, cost=36_000_000, replicas=5)
    results = list(workunit.results.order_by("pk"))
    for result in results[:3]:
        Result.objects.filter(pk=result.pk).update(
            outcome=Outcome.SUCCESS, server_state=ServerState.OVER,
            received_time=now - timedelta(minutes=30))
    Result.objects.filter(pk=results[3].pk).update(  # too old to count
        outcome=Outcome.SUCCESS, server_state=ServerState.OVER,
        received_time=now - timedelta(hours=2))
    Result.objects.filter(pk=results[4].pk).update(server_state=ServerState.IN_PROGRESS)
    make_workunit(campaign=running)  # unsent replicas only: not in progress

    response = client.get("/")
    figures = response.context["figures"]
    assert (figures.volunteers, figures.hosts_active_24h, figures.strategies_tried,
            figures.workunits_in_progress) == (1, 1, 1_750, 1)
    assert figures.candle_evaluations_per_second == pytest.approx(30_000)
    html = response.content.decode()
    assert ">30k<" in html
    assert sorted(c.name for c in response.context["campaigns"]) == ["Paused", "Running"]
    assert f'href="/campaigns/{running.pk}/"' in html
    assert "3 / 10 epochs" in html
    assert 'href="/join/"' in html


def test_home_in_few_queries_with_hundreds_of_rows(client, settings, tmp_path,
                                                   bulk_volunteers,
                                                   django_assert_max_num_queries):
    settings.MEDIA_ROOT = tmp_path
    bulk_volunteers(300)
    for number in range(8):
        make_campaign(name=f"c{number}")
    # figures (5) and campaigns (1); the figures are then cached for a while
    with django_assert_max_num_queries(6):
        assert client.get("/").status_code == 200
    with django_assert_max_num_queries(1):
        assert client.get("/").status_code == 200
    assert len(client.get("/").context["campaigns"]) == 6


def test_the_frame_links_every_section_and_the_stylesheet(client, volunteer):
    html = client.get("/").content.decode()
    for href in ('href="/"', 'href="/campaigns/"', 'href="/strategies/"',
                 'href="/leaderboards/users/"', 'href="/download/"', 'href="/status/"',
                 'href="/join/"', 'href="/login/"', "/static/css/site.css"):
        assert href in html, href
    client.force_login(volunteer.user)
    html = client.get("/").content.decode()
    assert 'href="/account/"' in html and 'action="/logout/"' in html
    assert 'href="/join/"' not in html.split("</header>")[0]


def test_the_stylesheet_is_served_and_leaves_part_b_its_section(client):
    from django.contrib.staticfiles import finders

    css = Path(finders.find("css/site.css")).read_text(encoding="utf-8")
    assert "/* === research pages (part B) === */" in css
    for selector in (".container", ".card", ".grid", ".table", "tr.me", ".num", ".btn",
                     ".badge", ".chart", ".codeblock", ".copy", ".errorlist"):
        assert selector in css, selector
    assert "url(http" not in css and "@import" not in css  # nothing fetched at page load


# --- the download ---------------------------------------------------------------------------


def test_download_page_without_a_wheel_says_how_to_build_one(client, wheel_dir):
    response = client.get("/download/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "make wheel" in html
    assert "pipx install" not in html
    assert "strategy-worker attach --server http://testserver --account-key" in html


def test_download_page_without_the_wheel_directory_at_all(client, settings, tmp_path):
    settings.WORKER_WHEEL_DIR = tmp_path / "missing"
    assert "make wheel" in client.get("/download/").content.decode()


def test_download_page_describes_the_wheel(client, wheel_dir):
    content = b"PK\x03\x04" + b"x" * 5000
    (wheel_dir / WHEEL).write_bytes(content)
    (wheel_dir / "strategy_worker-0.0.9-py3-none-any.whl").write_bytes(b"older")
    response = client.get("/download/")
    html = response.content.decode()
    url = f"http://testserver/download/{WHEEL}"
    wheel = response.context["wheel"]
    assert (wheel.filename, wheel.version, wheel.size_bytes) == (WHEEL, __version__, 5004)
    assert hashlib.sha256(content).hexdigest() in html
    assert f"pipx install {url}" in html
    assert f"pip install {url}" in html
    assert "5,004 bytes" in html
    assert "strategy-worker run" in html


def test_the_wheel_is_served_as_a_file(client, wheel_dir):
    (wheel_dir / WHEEL).write_bytes(b"PK wheel bytes")
    response = client.get(f"/download/{WHEEL}")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"PK wheel bytes"
    response.close()
    assert response["Content-Disposition"] == f'attachment; filename="{WHEEL}"'
    head = client.head(f"/download/{WHEEL}")
    head.close()
    assert head.status_code == 200
    assert client.post(f"/download/{WHEEL}").status_code == 405


@pytest.mark.parametrize("name", [
    "strategy_worker-9.9.9-py3-none-any.whl",  # matches the pattern, but is not there
    "notes.txt", f"{WHEEL}.bak", "..%2F..%2Fportal%2Fsettings.py",
    "..", "strategy_worker-..-py3-none-any.whl",
])
def test_only_wheels_in_the_directory_are_served(client, wheel_dir, name):
    (wheel_dir / WHEEL).write_bytes(b"PK")
    (wheel_dir / "notes.txt").write_text("private")
    (wheel_dir / f"{WHEEL}.bak").write_bytes(b"old")
    assert client.get(f"/download/{name}").status_code == 404


def test_a_path_outside_the_directory_is_never_served(client, wheel_dir):
    outside = wheel_dir.parent / WHEEL
    outside.write_bytes(b"outside")
    assert client.get(f"/download/../{WHEEL}").status_code == 404
    assert client.get(f"/download/%2E%2E%2F{WHEEL}").status_code == 404


def test_the_svg_chart_draws_the_series():
    svg = line_chart(days=[date(2025, 1, 1), date(2025, 1, 5)], values=[0.0, 12.5],
                     label="Total <credit>")
    assert svg.startswith("<svg") and 'class="series"' in svg
    assert "Total &lt;credit&gt;" in svg and "2025-01-05" in svg
    assert "No credit yet" in line_chart(days=[], values=[], label="x")
    assert [format_number(v) for v in (0, 0.25, 12, 950, 1234, 61_500_000)] == [
        "0", "0.25", "12", "950", "1.23k", "61.5M"]
