"""Reads for a volunteer's public page: what the stats export already tells, laid out for people
(display name, country, team, credit, computers by number and platform, strategies found).
Never an e-mail, a key, a token or a computer's name."""

from __future__ import annotations

from datetime import datetime

from django.db.models import F, QuerySet

from apps.accounts.models import Host, Volunteer
from apps.credit.selectors import rac_now_expression
from apps.workunits.models import Strategy

STRATEGIES_SHOWN = 10


def volunteer_public(*, volunteer_id: int, now: datetime) -> Volunteer | None:
    """An active volunteer with their team and RAC now; None for a deactivated account."""
    return (Volunteer.objects.filter(pk=volunteer_id, user__is_active=True)
            .select_related("team").annotate(rac_now=rac_now_expression(now=now)).first())


def volunteer_public_hosts(*, volunteer: Volunteer, now: datetime) -> QuerySet[Host]:
    """The volunteer's computers, working ones and most credit first."""
    return (Host.objects.filter(volunteer=volunteer).annotate(rac_now=rac_now_expression(now=now))
            .order_by("retired", "-total_credit", "id"))


def volunteer_strategies_found(*, volunteer: Volunteer) -> list[Strategy]:
    """The best strategies this volunteer's computers found, by out-of-sample Sharpe."""
    return list(Strategy.objects.filter(found_by=volunteer).select_related("campaign")
                .order_by(F("out_sample_sharpe").desc(nulls_last=True), "id")[:STRATEGIES_SHOWN])
