from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from shopper.models import ApiToken


class Command(BaseCommand):
    help = "Create an API token for USERNAME and print it (it is shown only once)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="cli")
        parser.add_argument("--days", type=int, default=0, help="Expire after this many days (0: never)")

    def handle(self, *args, username: str, name: str, days: int, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user named {username!r}.")
        if days < 0:
            raise CommandError("--days must be 0 (never) or more.")
        expires = timezone.now() + timedelta(days=days) if days else None
        _, raw = ApiToken.issue(user=user, name=name[:100], expires_at=expires)
        self.stdout.write(raw)
