"""The web site's pages; two groups kept in their own modules."""

from django.urls import include, path

urlpatterns = [
    path("", include("apps.web.urls_community")),  # home, accounts, teams, leaderboards, download
    path("", include("apps.web.urls_research")),  # campaigns, strategies, server status
]
