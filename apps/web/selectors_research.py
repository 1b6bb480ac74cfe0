"""Reads for the research pages that join the credit ledger to the work (credit sits above
workunits in the app layers, so a join of both lives here, in the web app above them)."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, Sum

from apps.credit.models import CreditGrant
from apps.workunits.models import Campaign


@dataclass(frozen=True)
class CampaignVolunteer:
    volunteer_id: int
    display_name: str
    team_name: str | None
    credit: float
    results: int  # valid replicas credited in this campaign
    hosts: int


def campaign_top_volunteers(campaign: Campaign, *, limit: int = 10) -> list[CampaignVolunteer]:
    """The volunteers with the most credit earned in ``campaign``, from the ledger. One query."""
    rows = (CreditGrant.objects.filter(result__workunit__campaign=campaign)
            .order_by().values("volunteer_id", "volunteer__display_name",
                               "volunteer__team__name")
            .annotate(credit=Sum("amount"), results=Count("pk"),
                      hosts=Count("host", distinct=True))
            .order_by("-credit", "volunteer_id")[:limit])
    return [CampaignVolunteer(volunteer_id=row["volunteer_id"],
                              display_name=row["volunteer__display_name"],
                              team_name=row["volunteer__team__name"], credit=row["credit"],
                              results=row["results"], hosts=row["hosts"]) for row in rows]
