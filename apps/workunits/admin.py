"""Django admin for the research side: campaigns first, then their work, data and results.

Campaign actions call the lifecycle services (start, pause, finish) and report what happened;
daemon-owned state fields are read-only everywhere, so the admin can never bypass the state
machine.
"""

from django.contrib import admin, messages
from django.db.models import Count, Q
from django.utils.html import format_html_join

from apps.common.errors import ApplicationError

from .campaigns import campaign_finish, campaign_pause, campaign_start
from .models import Campaign, Dataset, Result, Strategy, WorkUnit
from .states import AssimilateState, CampaignState

RESULT_STATE_FIELDS = ("server_state", "outcome", "validate_state", "host", "volunteer",
                       "sent_time", "acked_time", "report_deadline", "received_time", "digest",
                       "granted_credit", "file_delete_state", "error_message", "cpu_time",
                       "wall_time", "client_version")
WORKUNIT_STATE_FIELDS = ("transition_time", "need_validate", "error_mask", "canonical_result",
                         "assimilate_state", "file_delete_state")


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ("symbol", "exchange", "timeframe", "bar_count", "first_bar", "last_bar",
                    "gaps", "size_bytes", "short_sha")
    search_fields = ("symbol", "exchange", "sha256")
    list_filter = ("timeframe", "exchange")
    # A data set is made by `manage.py import_candles`: its file and checksum are one thing.
    readonly_fields = ("bar_seconds", "first_bar", "last_bar", "bar_count", "sha256",
                       "size_bytes", "file", "gaps", "created_at", "updated_at")

    @admin.display(description="sha256")
    def short_sha(self, obj):
        return obj.sha256[:12]


WORKUNIT_PROGRESS = {
    "total": None,
    "validated": Q(workunits__canonical_result__isnull=False),
    "errored": Q(workunits__error_mask__gt=0),
    "validating": Q(workunits__need_validate=True),
    "assimilated": Q(workunits__assimilate_state=AssimilateState.DONE),
}


def _workunit_counts(campaign_id):
    """{label: count} of one campaign's work units."""
    return Campaign.objects.filter(pk=campaign_id).aggregate(
        **{name: Count("workunits", filter=condition)
           for name, condition in WORKUNIT_PROGRESS.items()})


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    list_display = ("name", "state", "dataset", "epochs", "work_units", "best_fitness",
                    "strategies_tried", "candle_evaluations", "priority")
    list_filter = ("state",)
    search_fields = ("name", "description")
    actions = ("start_campaigns", "pause_campaigns", "finish_campaigns")
    readonly_fields = ("state", "epochs_done", "strategies_tried", "candle_evaluations",
                       "best_fitness", "work_unit_summary", "created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("name", "description", "state", "priority")}),
        ("Data", {"fields": ("dataset", "in_sample_start", "in_sample_stop", "out_sample_stop")}),
        ("Search", {"fields": ("search_space", "ga_settings", "islands",
                               "generations_per_epoch", "migrants", "seed", "budget_epochs")}),
        ("Redundancy", {"fields": ("min_quorum", "target_nresults", "max_error_results",
                                   "max_total_results", "max_success_results", "delay_bound")}),
        ("Progress", {"fields": ("epochs_done", "strategies_tried", "candle_evaluations",
                                 "best_fitness", "work_unit_summary", "created_at",
                                 "updated_at")}),
    )

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None and obj.state != CampaignState.DRAFT:
            # Work units already carry the payload built from these: changing them now would
            # make one campaign search two different problems.
            fields += ["dataset", "in_sample_start", "in_sample_stop", "out_sample_stop",
                       "search_space", "ga_settings", "islands", "generations_per_epoch",
                       "seed"]
        return fields

    def get_queryset(self, request):
        # The progress columns come from one annotated query, not one query per row.
        return super().get_queryset(request).select_related("dataset").annotate(
            **{f"wu_{name}": Count("workunits", filter=condition)
               for name, condition in WORKUNIT_PROGRESS.items()})

    @admin.display(description="epochs done / budget")
    def epochs(self, obj):
        return f"{obj.epochs_done} / {obj.islands * obj.budget_epochs}"

    @admin.display(description="work units")
    def work_units(self, obj):
        c = {name: getattr(obj, f"wu_{name}", 0) for name in WORKUNIT_PROGRESS}
        if not c["total"]:
            return "-"
        return (f"{c['total']} total: {c['validated']} validated, {c['errored']} errored, "
                f"{c['validating']} validating, {c['assimilated']} assimilated")

    @admin.display(description="work units by state")
    def work_unit_summary(self, obj):
        if obj.pk is None:
            return "-"
        c = _workunit_counts(obj.pk)
        if not c["total"]:
            return "none yet"
        return format_html_join("", "<div>{}: {}</div>", sorted(c.items()))

    def _run(self, request, queryset, service, verb):
        done, refused = 0, []
        for campaign in queryset:
            try:
                service(campaign=campaign)
                done += 1
            except ApplicationError as exc:
                refused.append(exc.message)
        if done:
            self.message_user(request, f"{verb} {done} campaign(s).", messages.SUCCESS)
        for message in refused:
            self.message_user(request, message, messages.WARNING)

    @admin.action(description="Start (or resume) the selected campaigns")
    def start_campaigns(self, request, queryset):
        self._run(request, queryset, campaign_start, "Started")

    @admin.action(description="Pause the selected campaigns")
    def pause_campaigns(self, request, queryset):
        self._run(request, queryset, campaign_pause, "Paused")

    @admin.action(description="Finish the selected campaigns (cancels unfinished work)")
    def finish_campaigns(self, request, queryset):
        self._run(request, queryset, campaign_finish, "Finished")


class ResultInline(admin.TabularInline):
    model = Result
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ("server_state", "outcome", "validate_state", "host", "sent_time",
              "received_time", "digest", "granted_credit")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(WorkUnit)
class WorkUnitAdmin(admin.ModelAdmin):
    list_display = ("__str__", "campaign", "island", "epoch", "need_validate", "error_mask",
                    "canonical_result", "assimilate_state", "file_delete_state",
                    "transition_time", "credit")
    list_filter = ("assimilate_state", "need_validate", "file_delete_state", "campaign")
    search_fields = ("campaign__name",)
    list_select_related = ("campaign",)
    inlines = (ResultInline,)
    readonly_fields = ("campaign", "island", "epoch", "payload", "cost", "credit",
                       *WORKUNIT_STATE_FIELDS, "created_at", "updated_at")

    def has_add_permission(self, request):
        return False  # work units come from campaigns


@admin.register(Result)
class ResultAdmin(admin.ModelAdmin):
    list_display = ("__str__", "workunit", "host", "server_state", "outcome", "validate_state",
                    "sent_time", "received_time", "granted_credit")
    list_filter = ("server_state", "outcome", "validate_state")
    search_fields = ("digest", "host__name", "volunteer__display_name")
    list_select_related = ("workunit__campaign", "host__volunteer")
    readonly_fields = ("workunit", *RESULT_STATE_FIELDS, "priority", "output", "created_at",
                       "updated_at")

    def has_add_permission(self, request):
        return False


@admin.register(Strategy)
class StrategyAdmin(admin.ModelAdmin):
    list_display = ("description", "campaign", "fitness", "out_sample_sharpe", "found_by",
                    "created_at")
    list_filter = ("campaign",)
    search_fields = ("description", "genome_hash")
    list_select_related = ("campaign", "found_by")
    readonly_fields = ("campaign", "genome", "genome_hash", "description", "fitness",
                       "in_sample", "out_sample", "out_sample_sharpe", "workunit", "found_by",
                       "confirmed_by", "created_at", "updated_at")

    def has_add_permission(self, request):
        return False
