"""Volunteers, their teams and their machines (hosts).

Secrets are never stored: an account key or host token is kept as its sha256 (they are long
random strings, so a fast hash is enough) and shown to its owner once, when it is made.
"""

from django.conf import settings
from django.db import models

from apps.common.models import TimestampedModel


class CreditTotals(models.Model):
    """Total credit and recent average credit (RAC, BOINC's decaying average per day)."""

    total_credit = models.FloatField(default=0.0)
    rac = models.FloatField("recent average credit", default=0.0)
    rac_time = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True


class Team(TimestampedModel, CreditTotals):
    name = models.CharField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    founder = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                on_delete=models.SET_NULL, related_name="founded_teams")

    def __str__(self) -> str:
        return self.name


class Volunteer(TimestampedModel, CreditTotals):
    """A volunteer's profile beside Django's user."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                                related_name="volunteer")
    display_name = models.CharField(max_length=100)
    country = models.CharField(max_length=2, blank=True, help_text="ISO 3166 code")
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.SET_NULL,
                             related_name="members")
    account_key_hash = models.CharField(max_length=64, unique=True)
    account_key_hint = models.CharField(max_length=8, help_text="first characters, to recognise it")

    def __str__(self) -> str:
        return self.display_name


class Host(TimestampedModel, CreditTotals):
    """One machine attached to a volunteer's account, with its own revocable token."""

    volunteer = models.ForeignKey(Volunteer, on_delete=models.CASCADE, related_name="hosts")
    name = models.CharField(max_length=100)
    token_hash = models.CharField(max_length=64, unique=True)
    os = models.CharField(max_length=50, blank=True)
    arch = models.CharField(max_length=30, blank=True)
    python_version = models.CharField(max_length=30, blank=True)
    numba_version = models.CharField(max_length=30, blank=True)
    cpu_count = models.PositiveIntegerField(default=1)
    memory_mb = models.PositiveIntegerField(default=0)
    client_version = models.CharField(max_length=30, blank=True)
    speed = models.FloatField(default=0.0, help_text="measured candle-evaluations per second")
    datasets = models.JSONField(default=list, blank=True, help_text="sha256 of data sets held")
    last_contact = models.DateTimeField(null=True, blank=True)
    retired = models.BooleanField(default=False)
    # Reliability, as BOINC keeps per host and app version.
    consecutive_valid = models.PositiveIntegerField(default=0)
    n_valid = models.PositiveIntegerField(default=0)
    n_invalid = models.PositiveIntegerField(default=0)
    n_errors = models.PositiveIntegerField(default=0)
    max_results_day = models.PositiveIntegerField(default=100, help_text="daily quota")
    results_today = models.PositiveIntegerField(default=0)
    quota_day = models.DateField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["last_contact"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.volunteer})"

    @property
    def error_rate(self) -> float:
        done = self.n_valid + self.n_invalid + self.n_errors
        return (self.n_invalid + self.n_errors) / done if done else 0.0
