from django.apps import AppConfig


class WebConfig(AppConfig):
    """The public web site: home, accounts, teams, leaderboards, campaigns and strategies."""

    name = "apps.web"
    label = "web"
