from django.contrib import admin
from django.urls import include, path

from portal import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", views.healthz, name="healthz"),
    path("api/v1/", include("apps.workunits.urls")),
    path("", include("apps.web.urls")),
]
