import importlib

from django.apps import AppConfig


class ShopperConfig(AppConfig):
    name = "shopper"
    verbose_name = "Shopper"

    def ready(self):
        importlib.import_module("shopper.checks")  # registers the system checks
        from django.contrib.auth.signals import user_logged_in

        from shopper.middleware import profile_zone_to_session

        user_logged_in.connect(profile_zone_to_session, dispatch_uid="shopper-profile-zone")
