"""The credit ledger in the admin: read-only, as an append-only ledger must be."""

from django.contrib import admin

from .models import CreditGrant


@admin.register(CreditGrant)
class CreditGrantAdmin(admin.ModelAdmin):
    list_display = ("granted_at", "volunteer", "team", "host", "amount", "result")
    list_filter = ("team",)
    search_fields = ("volunteer__display_name", "host__name")
    list_select_related = ("volunteer", "team", "host", "result")
    date_hierarchy = "granted_at"
    readonly_fields = ("result", "volunteer", "host", "team", "amount", "granted_at")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
