from django.apps import AppConfig


class WebConfig(AppConfig):
    """The public web site: home, accounts, teams, leaderboards, campaigns and strategies."""

    name = "apps.web"
    label = "web"

    def ready(self) -> None:
        from . import login_limit  # noqa: F401  connects the failed-login counters
