from django.core.management.base import BaseCommand

from inventory.services import offers_refresh


class Command(BaseCommand):
    help = "Fetch every enabled provider's offers now (ignores the 60 s cache)."

    def handle(self, *args, **options):
        for r in offers_refresh(force=True):
            self.stdout.write(f"{r.provider}: {r.outcome} {r.offers} offers {r.detail}".rstrip())
