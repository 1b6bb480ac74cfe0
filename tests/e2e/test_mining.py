"""A small campaign mined end to end: the real portal over HTTP, two real worker processes.

The portal runs under ``live_server``; the daemons run inside it through django-q2 in sync
mode (each report's on-commit enqueue runs the transitioner, which chains the validator and
the assimilator, in the server thread), as qcluster would run them in production. The workers
are separate processes started with the CLI, each with its own home directory and volunteer.
The portal's request delays are shortened (the clock is the one thing faked).
"""

from __future__ import annotations

import math

import pytest
from django.db.models import Count, Sum

from apps.accounts.models import Host, Volunteer
from apps.credit.models import CreditGrant
from apps.workunits.campaigns import campaign_start
from apps.workunits.marketdata import dataset_create_synthetic
from apps.workunits.models import Campaign, Result, Strategy, WorkUnit
from apps.workunits.states import AssimilateState, CampaignState, ValidateState
from tests.e2e.conftest import wait_until_finished
from tests.factories import make_campaign, make_volunteer

ISLANDS, EPOCHS = 2, 2
MINING_TIMEOUT = 240.0  # seconds; the campaign takes well under a minute
pytestmark = pytest.mark.slow


@pytest.fixture
def small_campaign(settings, tmp_path) -> Campaign:
    settings.MEDIA_ROOT = tmp_path / "media"
    dataset = dataset_create_synthetic(bars=3_000, seed=11)
    campaign = make_campaign(
        name="e2e", dataset=dataset, state=CampaignState.DRAFT, in_sample_stop=2_000,
        out_sample_stop=3_000, islands=ISLANDS, budget_epochs=EPOCHS, generations_per_epoch=2,
        migrants=2, min_quorum=2, target_nresults=2, seed=2024,
        ga_settings={"population_size": 8, "elite": 2, "immigrants": 2, "top_k": 4,
                     "min_trades": 5})
    campaign_start(campaign=campaign)
    return campaign


def test_two_workers_mine_a_campaign_to_completion(live_server, daemons_inline, quick_delays,
                                                   small_campaign, workers):
    volunteers = [make_volunteer(), make_volunteer()]
    for i, volunteer in enumerate(volunteers):
        attached = workers.cli(f"w{i}", "attach", "--server", live_server.url,
                               "--account-key", volunteer.account_key, "--name", f"e2e-{i}")
        assert attached.returncode == 0, attached.stderr
        assert "Attached to" in attached.stdout
    for i in range(len(volunteers)):
        workers.start(f"w{i}", "--exit-when-idle", str(MINING_TIMEOUT))

    wait_until_finished(small_campaign, workers, timeout=MINING_TIMEOUT)
    codes = workers.stop_all()
    assert codes == {"w0": 0, "w1": 0}, workers.logs()  # SIGTERM is a clean stop

    # Every island ran its budget and every work unit was validated and assimilated.
    wus = WorkUnit.objects.filter(campaign=small_campaign)
    assert wus.count() == ISLANDS * EPOCHS
    for wu in wus:
        assert wu.error_mask == 0, wu
        assert wu.canonical_result_id is not None, wu
        assert wu.assimilate_state == AssimilateState.DONE, wu
        canonical = wu.canonical_result
        assert canonical.validate_state == ValidateState.VALID
        # Quorum 2: both volunteers ran it and agreed on the answer.
        valid = wu.results.filter(validate_state=ValidateState.VALID)
        assert valid.values("volunteer").distinct().count() == 2, wu
        assert set(valid.values_list("digest", flat=True)) == {canonical.digest}

    # Credit: exactly one grant per valid replica, and the totals are the ledger's sums.
    valid_results = Result.objects.filter(workunit__campaign=small_campaign,
                                          validate_state=ValidateState.VALID)
    grants = CreditGrant.objects.filter(result__workunit__campaign=small_campaign)
    assert grants.count() == valid_results.count() == ISLANDS * EPOCHS * 2
    assert set(grants.values_list("result_id", flat=True)) == set(
        valid_results.values_list("pk", flat=True))
    assert not grants.values("result").annotate(n=Count("pk")).filter(n__gt=1).exists()
    for grant in grants.select_related("result"):
        assert grant.amount == pytest.approx(grant.result.workunit.credit)
        assert grant.result.granted_credit == pytest.approx(grant.amount)
    for volunteer in Volunteer.objects.filter(pk__in=[v.pk for v in volunteers]):
        ledger = volunteer.grants.aggregate(total=Sum("amount"))["total"]
        assert ledger and ledger > 0, volunteer
        assert math.isclose(volunteer.total_credit, ledger, rel_tol=1e-9)
        assert volunteer.rac > 0
    for host in Host.objects.filter(volunteer__in=volunteers):
        ledger = host.grants.aggregate(total=Sum("amount"))["total"]
        assert math.isclose(host.total_credit, ledger, rel_tol=1e-9)

    # The hall of fame holds re-checked strategies with out-of-sample figures.
    strategies = Strategy.objects.filter(campaign=small_campaign)
    assert strategies.exists()
    best = strategies.order_by("-fitness").first()
    assert best.description and best.in_sample and best.out_sample

    # Nothing is left waiting on the workers' disks: every result was acknowledged.
    for i in range(len(volunteers)):
        home = workers.root / f"w{i}" / "data"
        assert not list((home / "results").glob("*.json"))
        assert not list((home / "tasks").glob("*.json"))
