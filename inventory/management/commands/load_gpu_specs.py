"""``manage.py load_gpu_specs [PATH] [--prune]``: reload the GPU spec table from a CSV.

Without PATH it reads the table shipped in ``inventory/data/gpu_specs.csv``. The whole file is
checked first; a bad file is an error naming the line and column, and nothing is changed. Rows
are matched by ``canonical_name``: new ones are added, changed ones updated; ``--prune`` also
deletes rows the file no longer has. Every web process rebuilds its menu with the new figures
within about a second (the spec table is part of the menu version).
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from inventory.models import GpuSpec
from inventory.specs import CSV_PATH, SpecFileError, load_spec_rows, read_spec_csv


class Command(BaseCommand):
    help = "Load or update the GPU spec table (value figures) from a CSV file."

    def add_arguments(self, parser):
        parser.add_argument("path", nargs="?", default=str(CSV_PATH), help=f"CSV file (default {CSV_PATH})")
        parser.add_argument("--prune", action="store_true", help="delete rows the file does not have")

    def handle(self, *args, path: str, prune: bool, **options):
        try:
            rows = read_spec_csv(path)
        except SpecFileError as exc:
            raise CommandError(f"{exc}; nothing changed") from exc
        counts = load_spec_rows(GpuSpec, rows, prune=prune)
        self.stdout.write(
            f"{len(rows)} GPU specs from {path}: {counts['created']} added, {counts['updated']} updated, "
            f"{counts['unchanged']} unchanged, {counts['deleted']} deleted."
        )
