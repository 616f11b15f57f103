"""``manage.py rotate_keys``: re-encrypt every stored secret with the newest Fernet key.

Rotation: put the new key first in ``SHOPPER_FERNET_KEYS`` (keep the old ones after it), deploy,
run this command, and drop the old keys once it reports no failure.

Each secret is rewritten by its own conditional UPDATE (``WHERE ciphertext = <what we read>``),
so a row is always either the old or the new ciphertext, both readable with the configured keys,
and a key deleted at teardown meanwhile is never written back. A secret no configured key can
decrypt is reported and left untouched, and the command then exits non-zero.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from sessions import keys
from sessions.models import Rental

FIELD = "ssh_private_key_encrypted"


class Command(BaseCommand):
    help = "Re-encrypt every stored secret (generated SSH private keys) with the newest Fernet key."

    def add_arguments(self, parser):
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would be rotated; write nothing."
        )
        parser.add_argument("--batch-size", type=int, default=200, help="Rows read per query (default 200).")

    def handle(self, *args, dry_run: bool, batch_size: int, **options):
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        configured = [k for k in settings.SHOPPER_FERNET_KEYS if k]
        if not configured:
            raise CommandError("SHOPPER_FERNET_KEYS is not set: there is no key to rotate to.")
        try:
            newest = Fernet(configured[0].encode())
        except ValueError as exc:
            raise CommandError(f"The first key of SHOPPER_FERNET_KEYS is not a Fernet key: {exc}") from None

        rotated = current = vanished = 0
        failed: list[str] = []
        rows = Rental.objects.exclude(**{FIELD: ""}).order_by("pk")
        last_pk = None
        while True:
            batch_qs = rows if last_pk is None else rows.filter(pk__gt=last_pk)
            batch = list(batch_qs.values_list("pk", FIELD)[:batch_size])
            if not batch:
                break
            last_pk = batch[-1][0]
            for pk, token in batch:
                try:
                    newest.decrypt(token.encode())
                except InvalidToken:
                    pass
                else:
                    current += 1  # already under the newest key
                    continue
                try:
                    new_token = keys.secret_rotate(token)
                except (InvalidToken, ImproperlyConfigured, ValueError):
                    failed.append(str(pk))
                    self.stderr.write(f"Cannot decrypt the secret of rental {pk} with any configured key.")
                    continue
                if dry_run:
                    rotated += 1
                    continue
                # Own small UPDATE, only if the row still holds what we read.
                if Rental.objects.filter(pk=pk, **{FIELD: token}).update(**{FIELD: new_token}):
                    rotated += 1
                else:
                    vanished += 1

        verb = "Would rotate" if dry_run else "Rotated"
        summary = f"{verb} {rotated} secret(s); {current} already on the newest key"
        if vanished:
            summary += f"; {vanished} changed or deleted meanwhile (left alone)"
        summary += f"; {len(failed)} undecryptable."
        self.stdout.write(summary)
        if failed:
            raise CommandError(
                f"{len(failed)} secret(s) cannot be decrypted with any key in SHOPPER_FERNET_KEYS "
                f"(rentals: {', '.join(failed[:20])}{' …' if len(failed) > 20 else ''}). They were left "
                "untouched: add the key they were encrypted with, or clear them. Do not drop old keys yet."
            )
