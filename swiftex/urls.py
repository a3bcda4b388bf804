from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from conversations import webhooks
from leads.api import LeadBatchApi, LeadCreateApi, LeadDetailApi
from swiftex import auth_forms, health

admin.site.login_form = auth_forms.ThrottledAdminAuthenticationForm

urlpatterns = [
    path("api/v1/leads", LeadCreateApi.as_view(), name="lead-create"),
    path("api/v1/leads/batch", LeadBatchApi.as_view(), name="lead-batch"),
    path("api/v1/leads/<int:lead_id>", LeadDetailApi.as_view(), name="lead-detail"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics_view, name="metrics"),
    path("webhooks/whatsapp", webhooks.whatsapp, name="webhook-whatsapp"),
    path("webhooks/twilio/status", webhooks.twilio_status, name="webhook-twilio-status"),
    path("webhooks/twilio/inbound", webhooks.twilio_inbound, name="webhook-twilio-inbound"),
    path("webhooks/meta/", include("metaleads.urls")),
    path("f/", include("webforms.urls")),
    path("admin/", admin.site.urls),
    path("app/analytics/", include("analytics.urls")),
    path("app/", include("reps.urls")),
    path("accounts/login/", auth_views.LoginView.as_view(authentication_form=auth_forms.ThrottledAuthenticationForm), name="login"),
    path("accounts/password_reset/", auth_views.PasswordResetView.as_view(form_class=auth_forms.ThrottledPasswordResetForm),
         name="password_reset"),
    path("accounts/", include("django.contrib.auth.urls")),
]
