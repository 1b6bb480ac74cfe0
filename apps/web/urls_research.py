"""Campaigns, the best strategies, one strategy and its genome, the server's status."""

from django.urls import path

from . import views_research as views

urlpatterns = [
    path("campaigns/", views.campaign_list, name="campaign_list"),
    path("campaigns/<int:pk>/", views.campaign_detail, name="campaign_detail"),
    path("campaigns/<int:pk>/strategies/", views.campaign_strategies,
         name="campaign_strategies"),
    path("strategies/", views.strategy_list, name="strategy_list"),
    path("strategies/<int:pk>/", views.strategy_detail, name="strategy_detail"),
    # The download `strategy-worker replay` reads: keep the path and the shape.
    path("strategies/<int:pk>/genome.json", views.strategy_genome, name="strategy_genome"),
    path("status/", views.server_status, name="server_status"),
]
