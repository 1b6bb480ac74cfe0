"""``bench/daemons.py`` in miniature: reported work units are drained by the daemon passes, and
the bench's own checks (validated and assimilated once, one grant per valid replica, totals equal
to the ledger) find nothing wrong."""

from __future__ import annotations

import random

import pytest

from bench.daemons import DAEMONS, Meter, check, drain_in_process, report_all
from bench.hosts import Options
from bench.load import seed_portal

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_daemons_drain_what_the_bench_reports(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    opts = Options(hosts=12, slots=(2, 2), task_seconds=1.0, request_delay=0, warmup=0.0,
                   duration=0.0, connections=1, seed=2)
    seeded = seed_portal(opts, workunits=60, replicas=2, bars=300, islands=8,
                         rng=random.Random(2))
    ids = report_all(seeded, workunits=30)
    meter = Meter()
    assert drain_in_process(meter) >= 2
    assert meter.found["validator"] == 30 and meter.found["assimilator"] == 30
    assert set(meter.cpu) == set(DAEMONS)
    assert check(ids) == dict.fromkeys(check(ids), 0)
