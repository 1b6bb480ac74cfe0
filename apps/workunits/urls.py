"""The worker API, mounted at ``/api/v1/`` by ``portal.urls``."""

from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView

from portal.api import not_found

from . import apis

app_name = "api"

urlpatterns = [
    path("attach/", apis.AttachApi.as_view(), name="attach"),
    path("host/", apis.HostApi.as_view(), name="host"),
    path("scheduler/", apis.SchedulerApi.as_view(), name="scheduler"),
    path("datasets/<str:sha256>/", apis.DatasetDownloadApi.as_view(), name="dataset"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", apis.api_docs, name="docs"),
    re_path(r"^(?P<path>.*)$", not_found, name="not_found"),  # last: the error shape, not HTML
]
