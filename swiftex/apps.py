from django.apps import AppConfig


class SwiftexConfig(AppConfig):
    name = "swiftex"
    verbose_name = "Swiftex platform"
