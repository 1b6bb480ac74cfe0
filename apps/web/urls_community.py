"""Home, joining and the account page, teams, leaderboards, the stats export, the download."""

from django.urls import path
from django.views.generic import TemplateView

from . import views_community as views

urlpatterns = [
    path("", views.home, name="home"),
    # Joining and the account
    path("join/", views.join, name="join"),
    path("login/", views.PortalLoginView.as_view(), name="login"),
    path("logout/", views.PortalLogoutView.as_view(), name="logout"),
    path("account/", views.account, name="account"),
    path("account/password/", views.PortalPasswordChangeView.as_view(), name="password_change"),
    path("password-reset/", views.PortalPasswordResetView.as_view(), name="password_reset"),
    path("password-reset/sent/", TemplateView.as_view(
        template_name="registration/password_reset_done.html"), name="password_reset_done"),
    path("password-reset/<uidb64>/<token>/", views.PortalPasswordResetConfirmView.as_view(),
         name="password_reset_confirm"),
    path("password-reset/done/", TemplateView.as_view(
        template_name="registration/password_reset_complete.html"),
         name="password_reset_complete"),
    path("account/key/rotate/", views.account_key_rotate, name="account_key_rotate"),
    path("account/hosts/<int:host_id>/retire/", views.host_retire, name="host_retire"),
    path("volunteers/<int:volunteer_id>/", views.volunteer_detail, name="volunteer_detail"),
    # Teams
    path("teams/", views.team_list, name="team_list"),
    path("teams/new/", views.team_create, name="team_create"),
    path("teams/leave/", views.team_leave, name="team_leave"),
    path("teams/<int:team_id>/", views.team_detail, name="team_detail"),
    path("teams/<int:team_id>/join/", views.team_join, name="team_join"),
    # Leaderboards (?order=total|rac&page=N) and the stats export for third-party sites
    path("leaderboards/users/", views.leaderboard, {"kind": "users"}, name="leaderboard_users"),
    path("leaderboards/teams/", views.leaderboard, {"kind": "teams"}, name="leaderboard_teams"),
    path("leaderboards/hosts/", views.leaderboard, {"kind": "hosts"}, name="leaderboard_hosts"),
    path("stats/users.json", views.stats_export, {"kind": "users"}, name="stats_users"),
    path("stats/teams.json", views.stats_export, {"kind": "teams"}, name="stats_teams"),
    path("stats/hosts.json", views.stats_export, {"kind": "hosts"}, name="stats_hosts"),
    # The worker client
    path("download/", views.download, name="download"),
    path("download/<str:filename>", views.download_wheel, name="download_wheel"),
]
