from django.contrib import admin
from django.urls import path

from leads.api import LeadBatchApi, LeadCreateApi, LeadDetailApi
from swiftex import health

urlpatterns = [
    path("api/v1/leads", LeadCreateApi.as_view(), name="lead-create"),
    path("api/v1/leads/batch", LeadBatchApi.as_view(), name="lead-batch"),
    path("api/v1/leads/<int:lead_id>", LeadDetailApi.as_view(), name="lead-detail"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics_view, name="metrics"),
    path("admin/", admin.site.urls),
]
