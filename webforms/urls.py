from django.urls import path

from webforms import views

app_name = "webforms"

urlpatterns = [
    path("<slug:slug>", views.form_page, name="form"),
    path("<slug:slug>/thanks", views.thanks, name="thanks"),
    path("<slug:slug>/embed.js", views.embed_js, name="embed"),
]
