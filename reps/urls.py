from django.urls import path
from django.views.generic import RedirectView

from reps import views

app_name = "reps"

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="reps:leads"), name="home"),
    path("leads/", views.lead_list, name="leads"),
    path("leads/<int:lead_id>", views.lead_detail, name="lead"),
    path("leads/<int:lead_id>/live", views.lead_live, name="lead-live"),
    path("leads/<int:lead_id>/reply", views.lead_reply, name="lead-reply"),
    path("leads/<int:lead_id>/status", views.lead_status, name="lead-status"),
    path("notifications/", views.notifications, name="notifications"),
]
