from django.apps import AppConfig


class RentalsConfig(AppConfig):
    # The package is "sessions" (a session is what the UI calls a rental), but the label must
    # not clash with django.contrib.sessions.
    name = "sessions"
    label = "rentals"
    verbose_name = "Rentals"
