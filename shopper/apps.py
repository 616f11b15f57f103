import importlib

from django.apps import AppConfig


class ShopperConfig(AppConfig):
    name = "shopper"
    verbose_name = "Shopper"

    def ready(self):
        importlib.import_module("shopper.checks")  # registers the system checks
