from django.apps import AppConfig


class WebFormsConfig(AppConfig):
    name = "webforms"
    verbose_name = "Web forms"
