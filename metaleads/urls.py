from django.urls import path

from metaleads import webhooks

urlpatterns = [
    path("leadgen", webhooks.leadgen, name="webhook-meta-leadgen"),
]
