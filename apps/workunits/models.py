"""Market data, search campaigns, work units and their replicas (results), the hall of fame."""

from django.db import models
from django.db.models import Q

from apps.accounts.models import Host, Volunteer
from apps.common.models import TimestampedModel

from .states import (
    AssimilateState,
    CampaignState,
    FileDeleteState,
    Outcome,
    ServerState,
    ValidateState,
)


class Dataset(TimestampedModel):
    """One candle series stored as a compact binary file, named by its content's sha256."""

    symbol = models.CharField(max_length=30)
    exchange = models.CharField(max_length=50, blank=True)
    timeframe = models.CharField(max_length=10, help_text="e.g. 5m")
    bar_seconds = models.PositiveIntegerField()
    first_bar = models.DateTimeField()
    last_bar = models.DateTimeField()
    bar_count = models.PositiveIntegerField()
    sha256 = models.CharField(max_length=64, unique=True)
    size_bytes = models.PositiveBigIntegerField()
    file = models.FileField(upload_to="datasets/")
    gaps = models.PositiveIntegerField(default=0, help_text="missing bars inside the range")

    def __str__(self) -> str:
        return f"{self.symbol} {self.timeframe} ({self.bar_count:,} bars)"


class Campaign(TimestampedModel):
    """A strategy search: islands of a GA evolving epoch by epoch on one data set."""

    name = models.CharField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="campaigns")
    # Bar index ranges [start, stop). Evolution sees only the in-sample range; the
    # out-of-sample range comes after it and is used only to judge the hall of fame.
    in_sample_start = models.PositiveIntegerField(default=0)
    in_sample_stop = models.PositiveIntegerField()
    out_sample_stop = models.PositiveIntegerField()
    search_dataset = models.ForeignKey(
        Dataset, null=True, blank=True, on_delete=models.PROTECT, related_name="+",
        help_text="the in-sample bars only, made when the campaign starts: what volunteers "
                  "download, so no host ever holds the out-of-sample range")
    search_space = models.JSONField(default=dict, blank=True,
                                    help_text="engine SearchSpace fields; empty for defaults")
    ga_settings = models.JSONField(default=dict, blank=True,
                                   help_text="engine GASettings fields (fees, slippage, "
                                             "fitness, population …); empty for defaults")
    islands = models.PositiveIntegerField(default=4)
    generations_per_epoch = models.PositiveIntegerField(default=10)
    migrants = models.PositiveIntegerField(default=2)
    seed = models.PositiveBigIntegerField(default=1)
    # Redundancy policy, copied into each work unit (BOINC's names).
    min_quorum = models.PositiveIntegerField(default=2)
    target_nresults = models.PositiveIntegerField(default=2)
    max_error_results = models.PositiveIntegerField(default=3)
    max_total_results = models.PositiveIntegerField(default=8)
    max_success_results = models.PositiveIntegerField(default=4)
    delay_bound = models.PositiveIntegerField(default=3600, help_text="seconds to report a task")
    budget_epochs = models.PositiveIntegerField(default=10, help_text="epochs per island")
    priority = models.IntegerField(default=0)
    state = models.CharField(max_length=10, choices=CampaignState.choices,
                             default=CampaignState.DRAFT)
    # Progress, moved by the assimilator.
    epochs_done = models.PositiveIntegerField(default=0)
    strategies_tried = models.PositiveBigIntegerField(default=0)
    candle_evaluations = models.PositiveBigIntegerField(default=0)
    best_fitness = models.FloatField(null=True, blank=True)
    # Every trial's per-bar Sharpe ratio, summed over the validated epochs (``TrialsSharpe``):
    # the deflated Sharpe ratio's V is their variance.
    trials_sharpe_n = models.PositiveBigIntegerField(default=0)
    trials_sharpe_sum = models.FloatField(default=0.0)
    trials_sharpe_sq_sum = models.FloatField(default=0.0)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(in_sample_start__lt=models.F("in_sample_stop")),
                                   name="campaign_in_sample_range"),
            models.CheckConstraint(condition=Q(in_sample_stop__lt=models.F("out_sample_stop")),
                                   name="campaign_out_sample_after_in_sample"),
            models.CheckConstraint(condition=Q(min_quorum__gte=1)
                                   & Q(target_nresults__gte=models.F("min_quorum"))
                                   & Q(max_total_results__gte=models.F("target_nresults")),
                                   name="campaign_redundancy_policy"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def task_dataset(self) -> Dataset:
        """The data set sent with tasks (the full one only before the campaign first starts)."""
        return self.search_dataset or self.dataset


class WorkUnit(TimestampedModel):
    """One island epoch. Its flags drive the daemons (BOINC's fields)."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="workunits")
    island = models.PositiveIntegerField()
    epoch = models.PositiveIntegerField()
    payload = models.JSONField(help_text="what the engine needs: range, seed, space, settings, "
                                         "start population, generations")
    cost = models.PositiveBigIntegerField(help_text="upper bound of candle-evaluations")
    credit = models.FloatField(help_text="granted to each valid replica")
    min_quorum = models.PositiveIntegerField()
    target_nresults = models.PositiveIntegerField()
    max_error_results = models.PositiveIntegerField()
    max_total_results = models.PositiveIntegerField()
    max_success_results = models.PositiveIntegerField()
    delay_bound = models.PositiveIntegerField()
    priority = models.IntegerField(default=0)
    transition_time = models.DateTimeField(db_index=True, null=True, blank=True,
                                           help_text="when the transitioner looks next")
    need_validate = models.BooleanField(default=False)
    error_mask = models.PositiveIntegerField(default=0)
    canonical_result = models.ForeignKey("Result", null=True, blank=True,
                                         on_delete=models.SET_NULL, related_name="+")
    assimilate_state = models.PositiveSmallIntegerField(choices=AssimilateState.choices,
                                                        default=AssimilateState.INIT)
    file_delete_state = models.PositiveSmallIntegerField(choices=FileDeleteState.choices,
                                                         default=FileDeleteState.INIT)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["campaign", "island", "epoch"],
                                    name="workunit_one_per_island_epoch"),
        ]
        indexes = [
            models.Index(fields=["id"], condition=Q(need_validate=True),
                         name="wu_need_validate_idx"),
            models.Index(fields=["id"], condition=Q(assimilate_state=AssimilateState.READY),
                         name="wu_assimilate_ready_idx"),
            # "Is any work unit of this campaign still open?" (campaign_finish_if_done) in one
            # probe, however many of its work units are done.
            models.Index(fields=["campaign"], condition=~Q(assimilate_state=AssimilateState.DONE),
                         name="wu_campaign_open_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.campaign} island {self.island} epoch {self.epoch}"


class Result(TimestampedModel):
    """One replica of a work unit, sent to one host (BOINC's separate state fields)."""

    workunit = models.ForeignKey(WorkUnit, on_delete=models.CASCADE, related_name="results")
    host = models.ForeignKey(Host, null=True, blank=True, on_delete=models.SET_NULL,
                             related_name="results")
    volunteer = models.ForeignKey(Volunteer, null=True, blank=True, on_delete=models.SET_NULL,
                                  related_name="results")
    server_state = models.PositiveSmallIntegerField(choices=ServerState.choices,
                                                    default=ServerState.UNSENT)
    outcome = models.PositiveSmallIntegerField(choices=Outcome.choices, default=Outcome.INIT)
    validate_state = models.PositiveSmallIntegerField(choices=ValidateState.choices,
                                                      default=ValidateState.INIT)
    priority = models.IntegerField(default=0)  # copied from the work unit, for the claim order
    sent_time = models.DateTimeField(null=True, blank=True)
    acked_time = models.DateTimeField(null=True, blank=True, help_text="the host confirmed it")
    report_deadline = models.DateTimeField(null=True, blank=True)
    received_time = models.DateTimeField(null=True, blank=True)
    fraction_done = models.FloatField(default=0.0, help_text="the host's last heartbeat")
    progress_time = models.DateTimeField(null=True, blank=True)
    output = models.JSONField(null=True, blank=True)
    digest = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    cpu_time = models.FloatField(default=0.0)
    wall_time = models.FloatField(default=0.0)
    client_version = models.CharField(max_length=30, blank=True)
    granted_credit = models.FloatField(default=0.0)
    file_delete_state = models.PositiveSmallIntegerField(choices=FileDeleteState.choices,
                                                         default=FileDeleteState.INIT)

    class Meta:
        constraints = [
            # BOINC's "one result per user per work unit", held by the database itself.
            models.UniqueConstraint(fields=["workunit", "volunteer"],
                                    condition=Q(volunteer__isnull=False),
                                    name="result_one_per_volunteer"),
        ]
        indexes = [
            # The claim scans unsent replicas only; a plain index on server_state is not used
            # once most rows are over (see shared/reference/ecosystem.md).
            models.Index(fields=["-priority", "id"], condition=Q(server_state=ServerState.UNSENT),
                         name="result_unsent_idx"),
            models.Index(fields=["host", "server_state"], name="result_host_state_idx"),
            # The validator's "is this another work unit's validated answer, replayed?" looks
            # answers up by digest: without it, the lookup scans the campaign's work units.
            models.Index(fields=["digest"], condition=~Q(digest=""), name="result_digest_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.workunit_id}_{self.pk}"


class Strategy(TimestampedModel):
    """The hall of fame: a genome confirmed by quorum and re-checked by the server."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="strategies")
    genome = models.JSONField()
    genome_hash = models.CharField(max_length=64)
    description = models.TextField()
    fitness = models.FloatField()
    in_sample = models.JSONField(help_text="metrics on the in-sample range")
    out_sample = models.JSONField(help_text="metrics on the out-of-sample range")
    out_sample_sharpe = models.FloatField(null=True, blank=True)
    workunit = models.ForeignKey(WorkUnit, null=True, on_delete=models.SET_NULL,
                                 related_name="strategies")
    found_by = models.ForeignKey(Volunteer, null=True, on_delete=models.SET_NULL,
                                 related_name="strategies_found")
    confirmed_by = models.ManyToManyField(Volunteer, blank=True,
                                          related_name="strategies_confirmed")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["campaign", "genome_hash"],
                                    name="strategy_once_per_campaign"),
        ]
        indexes = [models.Index(fields=["campaign", "-out_sample_sharpe"])]
        verbose_name_plural = "strategies"

    def __str__(self) -> str:
        return self.description[:80]
