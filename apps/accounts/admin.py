"""Volunteers, teams and hosts in the admin. Secrets are never shown (only their hints), and
credit and reliability figures are moved by the daemons, so they are read-only here."""

from django.contrib import admin

from .models import Host, Team, Volunteer

CREDIT_FIELDS = ("total_credit", "rac", "rac_time")


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ("name", "founder", "total_credit", "rac", "created_at")
    search_fields = ("name",)
    readonly_fields = (*CREDIT_FIELDS, "created_at", "updated_at")


class HostInline(admin.TabularInline):
    model = Host
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ("name", "os", "arch", "client_version", "last_contact", "consecutive_valid",
              "total_credit", "retired")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Volunteer)
class VolunteerAdmin(admin.ModelAdmin):
    list_display = ("display_name", "user", "country", "team", "total_credit", "rac",
                    "account_key_hint")
    search_fields = ("display_name", "user__username", "user__email")
    list_filter = ("country",)
    list_select_related = ("user", "team")
    readonly_fields = ("user", "account_key_hint", *CREDIT_FIELDS, "created_at", "updated_at")
    exclude = ("account_key_hash",)
    inlines = (HostInline,)

    def has_add_permission(self, request):
        return False  # volunteers sign up on the portal, which hands them their key


@admin.register(Host)
class HostAdmin(admin.ModelAdmin):
    list_display = ("name", "volunteer", "os", "arch", "client_version", "speed",
                    "consecutive_valid", "n_valid", "n_invalid", "n_errors", "max_results_day",
                    "total_credit", "rac", "last_contact", "retired")
    list_filter = ("retired", "os", "arch")
    search_fields = ("name", "volunteer__display_name")
    list_select_related = ("volunteer",)
    exclude = ("token_hash",)
    readonly_fields = ("volunteer", "os", "arch", "python_version", "numba_version",
                       "cpu_count", "memory_mb", "client_version", "speed", "datasets",
                       "last_contact", "consecutive_valid", "n_valid", "n_invalid", "n_errors",
                       "results_today", "quota_day", *CREDIT_FIELDS, "created_at", "updated_at")

    def has_add_permission(self, request):
        return False  # hosts attach themselves with an account key
