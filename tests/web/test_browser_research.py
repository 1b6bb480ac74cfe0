"""The research pages in a real browser (headless Debian chromium) against the live portal:
the strategy page's equity and drawdown charts are really drawn by plotly (trace paths with
geometry, not just the elements), the campaign page's fitness chart too, and nothing is fetched
from anywhere but the portal. Screenshots go to var/test-artifacts/screenshots/.
"""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from apps.workunits import selectors
from tests.web.test_research import mine

pytestmark = pytest.mark.slow

# A plotly line trace is an SVG path whose "d" holds one M/L command per point drawn.
LINE_PATH = ".scatterlayer .trace path.js-line"
FILL_PATH = ".scatterlayer .trace path.js-fill"


@pytest.fixture
def mined(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return mine(name="BTC momentum")


def drawn_points(page, selector: str) -> int:
    """How many points the first path matching ``selector`` draws (0 when it has none)."""
    locator = page.locator(selector).first
    locator.wait_for(state="attached")
    d = locator.get_attribute("d") or ""
    return len(re.findall(r"[ML]", d))


def test_strategy_page_draws_its_charts_from_the_portal_alone(browser_page, screenshot,
                                                              live_server, mined):
    page = browser_page
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    strategy = selectors.strategy_ranked(mined).first()

    page.goto(reverse("strategy_detail", args=[strategy.pk]))
    assert page.locator("#rules").inner_text() == strategy.description
    # Both equity traces (in-sample, out-of-sample) and the drawdown area have real geometry.
    page.locator(f"#equity-chart {LINE_PATH}").nth(1).wait_for(state="attached")
    equity_paths = page.locator(f"#equity-chart {LINE_PATH}")
    assert equity_paths.count() == 2
    for i in range(2):
        d = equity_paths.nth(i).get_attribute("d") or ""
        assert len(re.findall(r"[ML]", d)) > 50, f"equity trace {i} is not drawn: {d[:80]!r}"
    assert drawn_points(page, f"#drawdown-chart {FILL_PATH}") > 50
    # The in-sample/out-of-sample boundary is a dashed vertical line with its label.
    assert page.locator("#equity-chart .shapelayer path").count() >= 1
    assert "out-of-sample" in page.locator("#equity-chart .annotation-text").first.text_content()
    # The plot area is not blank: the drawn trace spans most of the chart's width.
    box = equity_paths.first.bounding_box()
    chart = page.locator("#equity-chart").bounding_box()
    assert box is not None and chart is not None and box["width"] > 0.5 * chart["width"]
    assert page.locator("#replay-command").inner_text() == (
        f"strategy-worker replay --server {live_server.url} --strategy {strategy.pk}")
    screenshot("strategy-detail")

    origin = live_server.url
    assert requested and all(url.startswith(origin) for url in requested), [
        url for url in requested if not url.startswith(origin)]
    assert any(url.endswith("/static/vendor/plotly.min.js") for url in requested)


def test_campaign_pages_and_status_in_the_browser(browser_page, screenshot, mined):
    page = browser_page
    page.goto(reverse("campaign_list"))
    page.get_by_role("link", name="BTC momentum").click()
    page.wait_for_url(f"**/campaigns/{mined.pk}/")
    assert drawn_points(page, f"#fitness-chart {LINE_PATH}") >= 2
    assert page.locator("#top-volunteers tbody tr").count() == 2
    screenshot("campaign-detail")

    page.get_by_role("link", name=re.compile(r"^All \d+ ranked")).click()
    page.wait_for_url(f"**/campaigns/{mined.pk}/strategies/")
    assert page.locator("#strategies tbody tr").count() == mined.strategies.count()
    screenshot("campaign-strategies")
    page.locator("#strategies tbody tr").first.locator("td.rules a").click()
    page.wait_for_url("**/strategies/*/")
    assert page.locator(f"#equity-chart {LINE_PATH}").count() >= 1

    page.goto(reverse("campaign_list"))
    screenshot("campaign-list")
    page.goto(reverse("strategy_list"))
    screenshot("strategy-list")
    page.goto(reverse("server_status"))
    assert page.locator("#daemons tbody tr").count() == 4
    screenshot("server-status")


def test_the_strategy_page_reads_well_on_a_phone(browser_page, screenshot, mined):
    page = browser_page
    page.set_viewport_size({"width": 390, "height": 844})
    strategy = selectors.strategy_ranked(mined).first()
    page.goto(reverse("strategy_detail", args=[strategy.pk]))
    assert drawn_points(page, f"#equity-chart {LINE_PATH}") > 50
    # Nothing wider than the screen but the tables, which scroll inside their own box.
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    screenshot("strategy-detail-phone")
