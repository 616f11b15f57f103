from django.core.management.base import BaseCommand
from django.db import transaction
from django_q.models import Schedule

from shopper.schedules import MANAGED_PREFIXES, SCHEDULES


class Command(BaseCommand):
    help = "Create or update every periodic job of shopper/schedules.py; remove ones no longer listed."

    @transaction.atomic
    def handle(self, *args, **options):
        names = set()
        for entry in SCHEDULES:
            names.add(entry["name"])
            _, created = Schedule.objects.update_or_create(
                name=entry["name"],
                defaults={
                    "func": entry["func"],
                    "schedule_type": Schedule.MINUTES,
                    "minutes": entry["minutes"],
                    "repeats": -1,
                },
            )
            self.stdout.write(f"{'created' if created else 'updated'} {entry['name']}")
        # Schedules made by hand in the admin (other names) are left alone.
        stale = Schedule.objects.exclude(name__in=names)
        for prefix_ in MANAGED_PREFIXES:
            for schedule in stale.filter(name__startswith=prefix_):
                self.stdout.write(f"removed {schedule.name}")
                schedule.delete()
