"""Campaigns' lifecycle, the work units they generate, the admin, the daemon commands and tasks."""

from __future__ import annotations

import hashlib
from io import StringIO

import django_q.conf
import pytest
from django.core.management import call_command
from django.urls import reverse
from django_q.models import Schedule

from apps.common.errors import ApplicationError
from apps.credit.models import CreditGrant
from apps.credit.services import credit_for_cost
from apps.workunits import tasks
from apps.workunits.campaigns import (
    campaign_finish,
    campaign_pause,
    campaign_start,
    epoch_seed,
    workunit_create_once,
)
from apps.workunits.data import load_dataset
from apps.workunits.models import Campaign, Result, WorkUnit
from apps.workunits.states import (
    AssimilateState,
    CampaignState,
    ErrorMask,
    Outcome,
    ServerState,
)
from tests.apps.workunits.test_validator import (
    SETTINGS,
    T0,
    engine_output,
    make_campaign,
    make_host,
    run_replica,
    send,
)
from tests.factories import make_user
from worker_client.engine.ga import GASettings
from worker_client.engine.space import SearchSpace
from worker_client.protocol import ENGINE_FORMAT, TASK_KIND

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def test_start_creates_epoch_zero_of_every_island_with_the_protocols_payload():
    campaign = make_campaign(islands=3, priority=5, target_nresults=3, max_total_results=9)
    created = campaign_start(campaign=campaign, now=T0)
    campaign.refresh_from_db()
    assert campaign.state == CampaignState.ACTIVE
    assert [(wu.island, wu.epoch) for wu in created] == [(0, 0), (1, 0), (2, 0)]
    wu = created[1]
    # Volunteers get the bars before the out-of-sample range, and nothing after it.
    search = campaign.search_dataset
    assert search.sha256 != campaign.dataset.sha256
    assert search.bar_count == campaign.in_sample_stop
    full, head = load_dataset(campaign.dataset), load_dataset(search)
    assert (head.close == full.close[:campaign.in_sample_stop]).all()
    assert wu.payload == {
        "kind": TASK_KIND, "engine": ENGINE_FORMAT, "dataset_sha256": search.sha256,
        "start": 0, "stop": 1_500, "seed": epoch_seed(3, 1, 0), "generations": 2,
        "space": SearchSpace().to_dict(), "settings": GASettings(**SETTINGS).to_dict(),
        "start_population": []}
    assert wu.cost == 1_500 * 8 * 3 and wu.credit == credit_for_cost(wu.cost)
    assert (wu.min_quorum, wu.target_nresults, wu.max_total_results, wu.priority) == (2, 3, 9, 5)
    assert wu.transition_time == T0
    replicas = Result.objects.filter(workunit=wu)
    assert [(r.server_state, r.priority) for r in replicas] == [(ServerState.UNSENT, 5)] * 3


def test_epoch_seeds_are_derived_from_the_campaign_seed():
    digest = hashlib.sha256(b"3:1:0").digest()
    assert epoch_seed(3, 1, 0) == int.from_bytes(digest[:8], "big") >> 1
    seeds = {epoch_seed(s, i, e) for s in (1, 2) for i in range(3) for e in range(3)}
    assert len(seeds) == 18 and all(0 <= s < 2**63 for s in seeds)


def test_lifecycle_moves_follow_the_allowed_moves():
    campaign = make_campaign(islands=2)
    with pytest.raises(ApplicationError, match="cannot become paused"):
        campaign_pause(campaign=campaign)
    campaign_start(campaign=campaign, now=T0)
    with pytest.raises(ApplicationError, match="cannot become active"):
        campaign_start(campaign=campaign, now=T0)
    campaign_pause(campaign=campaign)
    assert campaign_start(campaign=campaign, now=T0) == []  # resumed; nothing due
    assert WorkUnit.objects.filter(campaign=campaign).count() == 2
    campaign_finish(campaign=campaign)
    with pytest.raises(ApplicationError):
        campaign_start(campaign=campaign, now=T0)


def test_finishing_cancels_unfinished_work_which_is_wound_down_and_assimilated():
    from apps.workunits.assimilator import assimilate_pass
    from apps.workunits.transitioner import transition_pass

    campaign = make_campaign(islands=2)
    wu0, wu1 = campaign_start(campaign=campaign, now=T0)
    send(wu0, make_host())
    assert campaign_finish(campaign=campaign, now=T0) == 2
    transition_pass(now=T0)
    for wu in (wu0, wu1):
        wu.refresh_from_db()
        assert wu.error_mask == ErrorMask.CANCELLED
        assert not Result.objects.filter(workunit=wu, server_state=ServerState.UNSENT).exists()
    assert Result.objects.filter(outcome=Outcome.DIDNT_NEED).count() == 3
    assert assimilate_pass(now=T0) == 2
    assert not WorkUnit.objects.exclude(assimilate_state=AssimilateState.DONE).exists()
    assert WorkUnit.objects.filter(campaign=campaign).count() == 2  # no next epochs


def test_creating_an_existing_island_epoch_again_is_harmless():
    campaign = make_campaign()
    campaign_start(campaign=campaign, now=T0)
    again = workunit_create_once(campaign=campaign, island=0, epoch=0, start_population=[],
                                 now=T0)
    assert again is None and WorkUnit.objects.count() == 1


# --- admin -----------------------------------------------------------------------------------


@pytest.fixture
def admin_client(client):
    client.force_login(make_user(is_staff=True, is_superuser=True))
    return client


def test_admin_actions_call_the_services_and_report(admin_client):
    draft, other = make_campaign(), make_campaign()
    campaign_start(campaign=other, now=T0)
    url = reverse("admin:workunits_campaign_changelist")
    response = admin_client.post(url, {"action": "start_campaigns",
                                       "_selected_action": [draft.pk, other.pk]}, follow=True)
    text = response.content.decode()
    assert "Started 1 campaign(s)." in text
    assert "cannot become active" in text
    assert Campaign.objects.get(pk=draft.pk).state == CampaignState.ACTIVE
    admin_client.post(url, {"action": "pause_campaigns", "_selected_action": [draft.pk]})
    assert Campaign.objects.get(pk=draft.pk).state == CampaignState.PAUSED
    admin_client.post(url, {"action": "finish_campaigns", "_selected_action": [draft.pk]})
    assert Campaign.objects.get(pk=draft.pk).state == CampaignState.FINISHED


def test_every_admin_page_renders(admin_client):
    campaign = make_campaign()
    (wu,) = campaign_start(campaign=campaign, now=T0)
    for host in (make_host(), make_host()):
        run_replica(wu, host, engine_output(wu))
    call_command("run_daemons", "--once", stdout=StringIO())
    result = Result.objects.filter(workunit=wu).first()
    pages = {"campaign": campaign, "workunit": wu, "result": result,
             "dataset": campaign.dataset, "strategy": None}
    for model, obj in pages.items():
        assert admin_client.get(reverse(f"admin:workunits_{model}_changelist")).status_code == 200
        if obj is not None:
            change = reverse(f"admin:workunits_{model}_change", args=[obj.pk])
            assert admin_client.get(change).status_code == 200
    listing = admin_client.get(reverse("admin:workunits_campaign_changelist")).content.decode()
    assert "1 total: 1 validated" in listing
    host = result.host
    for name, obj in (("accounts_host", host), ("accounts_volunteer", host.volunteer),
                      ("credit_creditgrant", CreditGrant.objects.first())):
        assert admin_client.get(reverse(f"admin:{name}_changelist")).status_code == 200
        assert admin_client.get(reverse(f"admin:{name}_change", args=[obj.pk])).status_code == 200
    assert admin_client.get(reverse("admin:accounts_team_changelist")).status_code == 200


# --- commands and tasks ----------------------------------------------------------------------


def test_setup_schedules_is_idempotent():
    call_command("setup_schedules", stdout=StringIO())
    call_command("setup_schedules", stdout=StringIO())
    assert set(Schedule.objects.values_list("name", "func")) == {
        ("transitioner", tasks.TRANSITIONER), ("validator", tasks.VALIDATOR),
        ("assimilator", tasks.ASSIMILATOR), ("file deleter", tasks.FILE_DELETER)}


def test_run_daemons_once_drives_a_reported_workunit_to_assimilation():
    campaign = make_campaign(budget_epochs=2)
    (wu,) = campaign_start(campaign=campaign, now=T0)
    for host in (make_host(), make_host()):
        run_replica(wu, host, engine_output(wu))
    out = StringIO()
    call_command("run_daemons", "--once", stdout=out)
    wu.refresh_from_db()
    assert wu.assimilate_state == AssimilateState.DONE
    assert WorkUnit.objects.filter(campaign=campaign, epoch=1).exists()
    assert "round(s)" in out.getvalue()


def test_a_report_enqueues_the_chain_of_daemons(monkeypatch):
    monkeypatch.setattr(django_q.conf.Conf, "SYNC", True)
    campaign = make_campaign()
    (wu,) = campaign_start(campaign=campaign, now=T0)
    for host in (make_host(), make_host()):
        run_replica(wu, host, engine_output(wu))
    tasks.enqueue_transitions([wu.pk])  # what the scheduler does on commit of a report
    wu.refresh_from_db()
    assert wu.canonical_result_id is not None
    assert wu.assimilate_state == AssimilateState.DONE
    assert tasks.run_validator() == 0 and tasks.run_assimilator() == 0  # idempotent sweeps
    assert tasks.run_file_deleter() == 0
