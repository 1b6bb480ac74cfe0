"""Small factories for tests: rows with sensible defaults, every field overridable by keyword.

    volunteer = make_volunteer()                 # volunteer.account_key holds the raw key
    host = make_host(volunteer=volunteer)        # host.token holds the raw token
    campaign = make_campaign()                   # active, on a fresh data set
    workunit = make_workunit(campaign=campaign)  # with target_nresults unsent replicas

Secrets are stored hashed, as the services store them; the raw values ride along on the
returned objects (``.account_key``, ``.token``) so tests can authenticate with them. Data set
files are written to ``settings.MEDIA_ROOT``: point it at ``tmp_path`` in tests that make them.
"""

from __future__ import annotations

import hashlib
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile

from apps.accounts.models import Host, Volunteer
from apps.accounts.services import new_secret
from apps.workunits.models import Campaign, Dataset, Result, WorkUnit
from apps.workunits.states import CampaignState, ServerState

_serial = itertools.count(1)


def sha256_hex(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def make_user(username: str | None = None, *, password: str | None = None,
              **fields: Any) -> Any:
    """A user; without ``password`` it has none usable (hashing one costs ~0.3 s)."""
    username = username or f"user{next(_serial)}"
    fields.setdefault("email", f"{username}@example.org")
    return get_user_model().objects.create_user(username=username, password=password, **fields)


def make_volunteer(*, user: Any = None, account_key: str | None = None,
                   **fields: Any) -> Volunteer:
    user = user or make_user()
    account_key = account_key or new_secret()
    fields.setdefault("display_name", user.username.title())
    volunteer = Volunteer.objects.create(user=user, account_key_hash=sha256_hex(account_key),
                                         account_key_hint=account_key[:6], **fields)
    volunteer.account_key = account_key
    return volunteer


def make_host(*, volunteer: Volunteer | None = None, token: str | None = None,
              **fields: Any) -> Host:
    volunteer = volunteer or make_volunteer()
    token = token or new_secret()
    number = next(_serial)
    defaults = {"name": f"host{number}", "os": "Linux", "arch": "x86_64",
                "python_version": "3.11.7", "numba_version": "0.60.0", "cpu_count": 4,
                "memory_mb": 8192, "client_version": "0.1.0", "speed": 0.0}
    host = Host.objects.create(volunteer=volunteer, token_hash=sha256_hex(token),
                               **{**defaults, **fields})
    host.token = token
    return host


def make_dataset(*, content: bytes | None = None, **fields: Any) -> Dataset:
    """A data set row whose file holds ``content`` (any bytes; named and hashed by content)."""
    content = content if content is not None else f"candles {next(_serial)}".encode() * 64
    sha256 = sha256_hex(content)
    first = datetime(2024, 1, 1, tzinfo=UTC)
    defaults = {"symbol": "BTC-USD", "exchange": "test", "timeframe": "5m", "bar_seconds": 300,
                "first_bar": first, "last_bar": first + timedelta(minutes=5 * 999),
                "bar_count": 1000, "sha256": sha256, "size_bytes": len(content)}
    dataset = Dataset(**{**defaults, **fields})
    dataset.file.save(f"{sha256}.candles", ContentFile(content), save=False)
    dataset.save()
    return dataset


def make_campaign(*, dataset: Dataset | None = None, state: str = CampaignState.ACTIVE,
                  **fields: Any) -> Campaign:
    defaults = {"name": f"campaign {next(_serial)}", "in_sample_start": 0,
                "in_sample_stop": 800, "out_sample_stop": 1000, "min_quorum": 2,
                "target_nresults": 2, "delay_bound": 3600}
    return Campaign.objects.create(dataset=dataset or make_dataset(), state=state,
                                   **{**defaults, **fields})


def make_workunit(*, campaign: Campaign | None = None, replicas: int | None = None,
                  **fields: Any) -> WorkUnit:
    """A work unit with its redundancy policy copied from the campaign and ``replicas`` unsent
    results (default: the campaign's ``target_nresults``)."""
    campaign = campaign or make_campaign()
    defaults = {"island": next(_serial), "epoch": 0, "payload": {"kind": "test", "seed": 1},
                "cost": 1_000_000, "credit": 1.0, "priority": campaign.priority,
                **{name: getattr(campaign, name) for name in (
                    "min_quorum", "target_nresults", "max_error_results", "max_total_results",
                    "max_success_results", "delay_bound")}}
    workunit = WorkUnit.objects.create(campaign=campaign, **{**defaults, **fields})
    count = workunit.target_nresults if replicas is None else replicas
    Result.objects.bulk_create([Result(workunit=workunit, server_state=ServerState.UNSENT,
                                       priority=workunit.priority) for _ in range(count)])
    return workunit
