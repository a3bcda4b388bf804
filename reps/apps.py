from django.apps import AppConfig


class RepsConfig(AppConfig):
    name = "reps"
