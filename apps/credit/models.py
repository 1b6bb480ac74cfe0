"""The credit ledger: append-only, one grant per validated replica."""

from django.db import models

from apps.accounts.models import Host, Team, Volunteer
from apps.workunits.models import Result


class CreditGrant(models.Model):
    result = models.OneToOneField(Result, on_delete=models.PROTECT, related_name="credit_grant")
    volunteer = models.ForeignKey(Volunteer, on_delete=models.PROTECT, related_name="grants")
    host = models.ForeignKey(Host, null=True, on_delete=models.SET_NULL, related_name="grants")
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.SET_NULL,
                             related_name="grants")
    amount = models.FloatField()
    granted_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=models.Q(amount__gte=0),
                                              name="credit_grant_not_negative")]

    def __str__(self) -> str:
        return f"{self.amount:.2f} to {self.volunteer} for result {self.result_id}"
