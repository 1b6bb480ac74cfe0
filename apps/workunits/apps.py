from django.apps import AppConfig


class WorkunitsConfig(AppConfig):
    name = "apps.workunits"
    label = "workunits"
    verbose_name = "Campaigns and work units"
