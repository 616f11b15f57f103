"""``manage.py rotate_keys``: re-encrypt stored secrets with the newest Fernet key."""

from __future__ import annotations

from io import StringIO

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command

from sessions import keys
from sessions.models import Rental
from tests.factories import RentalFactory

pytestmark = pytest.mark.django_db

OLD = Fernet.generate_key().decode()
NEW = Fernet.generate_key().decode()
STRANGER = Fernet.generate_key().decode()


def run(*args) -> str:
    out = StringIO()
    call_command("rotate_keys", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def stored(rental) -> str:
    return Rental.objects.values_list("ssh_private_key_encrypted", flat=True).get(pk=rental.pk)


@pytest.fixture
def old_secrets(settings, user):
    """Three secrets under the old key, one rental without a key; then the new key is added first."""
    settings.SHOPPER_FERNET_KEYS = [OLD]
    rentals = [RentalFactory(consumer=user, private_key=f"pem-{i}") for i in range(3)]
    RentalFactory(consumer=user)
    settings.SHOPPER_FERNET_KEYS = [NEW, OLD]
    return rentals


def test_rotation_makes_old_secrets_readable_with_the_new_key_alone(settings, old_secrets):
    before = [stored(r) for r in old_secrets]
    out = run("--batch-size", "2")  # several batches
    assert "Rotated 3 secret(s)" in out and "0 undecryptable" in out
    settings.SHOPPER_FERNET_KEYS = [NEW]  # the old key dropped
    for i, rental in enumerate(old_secrets):
        assert stored(rental) != before[i]
        assert keys.secret_decrypt(stored(rental)) == f"pem-{i}"
    assert Rental.objects.filter(ssh_private_key_encrypted="").count() == 1  # nothing invented


def test_a_second_run_has_nothing_to_do(settings, old_secrets):
    run()
    after = [stored(r) for r in old_secrets]
    out = run()
    assert "Rotated 0 secret(s); 3 already on the newest key" in out
    assert [stored(r) for r in old_secrets] == after


def test_dry_run_counts_and_writes_nothing(settings, old_secrets):
    before = [stored(r) for r in old_secrets]
    out = run("--dry-run")
    assert "Would rotate 3 secret(s)" in out
    assert [stored(r) for r in old_secrets] == before
    settings.SHOPPER_FERNET_KEYS = [NEW]
    with pytest.raises(ImproperlyConfigured):
        keys.secret_decrypt(before[0])


def test_an_undecryptable_secret_is_reported_left_alone_and_the_command_fails(settings, user, old_secrets):
    settings.SHOPPER_FERNET_KEYS = [STRANGER]
    lost = RentalFactory(consumer=user, private_key="lost")
    lost_token = stored(lost)
    settings.SHOPPER_FERNET_KEYS = [NEW, OLD]
    err = StringIO()
    with pytest.raises(CommandError, match=r"1 secret\(s\) cannot be decrypted") as exc:
        call_command("rotate_keys", stdout=StringIO(), stderr=err)
    assert str(lost.pk) in str(exc.value) and str(lost.pk) in err.getvalue()
    assert stored(lost) == lost_token  # untouched
    settings.SHOPPER_FERNET_KEYS = [NEW]  # the others were still rotated, each on its own
    assert sorted(keys.secret_decrypt(stored(r)) for r in old_secrets) == ["pem-0", "pem-1", "pem-2"]


def test_dry_run_also_reports_undecryptable_secrets(settings, user):
    settings.SHOPPER_FERNET_KEYS = [STRANGER]
    RentalFactory(consumer=user, private_key="lost")
    settings.SHOPPER_FERNET_KEYS = [NEW]
    with pytest.raises(CommandError, match="cannot be decrypted"):
        run("--dry-run")


def test_a_key_cleared_meanwhile_is_not_written_back(settings, old_secrets, monkeypatch):
    """Teardown deletes the key while rotation runs: the conditional update leaves it deleted."""
    victim = old_secrets[0]
    real_rotate = keys.secret_rotate

    def rotate_racing_teardown(token):
        if token == stored(victim):
            Rental.objects.filter(pk=victim.pk).update(ssh_private_key_encrypted="")
        return real_rotate(token)

    monkeypatch.setattr(keys, "secret_rotate", rotate_racing_teardown)
    out = run()
    assert "Rotated 2 secret(s)" in out and "1 changed or deleted meanwhile" in out
    assert stored(victim) == ""


def test_without_keys_the_command_refuses(settings):
    settings.SHOPPER_FERNET_KEYS = []
    with pytest.raises(CommandError, match="not set"):
        run()
    settings.SHOPPER_FERNET_KEYS = ["not-a-fernet-key"]
    with pytest.raises(CommandError, match="not a Fernet key"):
        run()
    settings.SHOPPER_FERNET_KEYS = [NEW]
    with pytest.raises(CommandError, match="batch-size"):
        run("--batch-size", "0")
