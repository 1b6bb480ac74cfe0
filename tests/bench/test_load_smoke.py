"""``bench/load.py`` in miniature: twenty simulated hosts speak the real protocol to the portal
(``live_server``) for a few seconds; nothing errs, nothing is given twice, and the answers the
bench computes for its work units are ones the validator accepts."""

from __future__ import annotations

import asyncio
import random

import pytest

from apps.workunits.models import Result, WorkUnit
from apps.workunits.states import ValidateState
from apps.workunits.transitioner import transition_pass
from apps.workunits.validator import validate_pass
from bench.hosts import Options, run_hosts
from bench.load import checks, seed_portal

pytestmark = pytest.mark.django_db(transaction=True)  # the live server sees committed rows


@pytest.fixture
def portal_settings(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    settings.MIN_CLIENT_VERSION = "0.1.0"
    settings.SCHEDULER_REQUEST_DELAY = 1  # the hosts obey it: several calls in a short run
    return settings


def test_twenty_hosts_for_three_seconds(live_server, portal_settings):
    opts = Options(hosts=20, slots=(2, 4), task_seconds=0.5, request_delay=1, warmup=1.0,
                   duration=3.0, connections=20, seed=3)
    seeded = seed_portal(opts, workunits=600, replicas=2, bars=300, islands=8,
                         rng=random.Random(3))
    edges: list[str] = []

    async def on_window(edge: str) -> None:
        edges.append(edge)

    window, totals = asyncio.run(run_hosts(seeded, opts, live_server.url + "/", on_window))

    assert edges == ["start", "stop"]
    assert not totals.errors and not window.errors, totals.errors
    assert window.calls and window.dispatched and window.accepted, window
    assert window.no_work == 0  # the work did not run out: the figures are the server's
    assert all(count == 0 for count in checks(totals).values())
    assert len(window.latencies) == window.calls

    # The answers the bench reports are right: the validator re-runs them and agrees.
    transition_pass()
    assert validate_pass() > 0
    assert WorkUnit.objects.filter(canonical_result__isnull=False).exists()
    assert not Result.objects.filter(validate_state=ValidateState.INVALID).exists()


def test_hosts_and_daemons_side_by_side_never_deadlock(portal_settings, caplog):
    """Scheduler calls that report (right answers), ack, heartbeat and claim, from twelve
    threads, while the transitioner, validator and assimilator run in another: every call
    succeeds and no daemon pass fails. (Two locking orders used to meet here: a validator
    locks a volunteer, then its hosts; a call sending tasks checked the volunteer's row only at
    commit, after writing its host row.)"""
    import threading

    from django.db import connection
    from django.utils import timezone

    from apps.accounts.models import Host
    from apps.workunits.assimilator import assimilate_pass
    from apps.workunits.scheduler import scheduler_request

    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: SQLite serialises writers (DATABASE_URL=postgres://…)")
    opts = Options(hosts=12, slots=(3, 3), task_seconds=0.0, request_delay=0, warmup=0.0,
                   duration=0.0, connections=1, seed=5)
    seeded = seed_portal(opts, workunits=300, replicas=2, bars=300, islands=8,
                         rng=random.Random(5))
    failures: list[BaseException] = []
    calls_done = threading.Event()

    def host_loop(host_id: int) -> None:
        try:
            host = Host.objects.get(pk=host_id)
            held: dict[int, int] = {}  # result id -> payload seed
            acks: list[int] = []
            for _ in range(15):
                reply = scheduler_request(host=host, client_version="0.1.0", request={
                    "results": [{"result_id": rid, "status": "success",
                                 "output": seeded.answers[seed], "cpu_time": 1.0,
                                 "wall_time": 1.0} for rid, seed in held.items()],
                    "acks": acks, "in_progress": [], "free_slots": 3,
                    "progress": [], "work_seconds": 300.0, "datasets": []},
                    now=timezone.now())
                assert sorted(reply["accepted"]) == sorted(held), reply
                held = {t["result_id"]: t["payload"]["seed"] for t in reply["tasks"]}
                acks = list(held)
        except BaseException as exc:  # reported below; a thread must not die silently
            failures.append(exc)
        finally:
            connection.close()

    def daemon_loop() -> None:
        try:
            while not calls_done.is_set():
                transition_pass()
                validate_pass()
                assimilate_pass()
        except BaseException as exc:
            failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=host_loop, args=(pk,)) for pk in seeded.host_ids]
    daemon = threading.Thread(target=daemon_loop)
    daemon.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    calls_done.set()
    daemon.join(timeout=60)

    assert not failures, failures
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
    assert WorkUnit.objects.filter(canonical_result__isnull=False).exists()
    assert not Result.objects.filter(validate_state=ValidateState.INVALID).exists()
