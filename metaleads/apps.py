from django.apps import AppConfig


class MetaLeadsConfig(AppConfig):
    name = "metaleads"
    verbose_name = "Meta Lead Ads"
