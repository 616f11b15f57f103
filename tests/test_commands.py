from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from shopper.models import ApiToken

pytestmark = pytest.mark.django_db


def test_create_token_prints_a_working_token_once(user, client):
    out = StringIO()
    call_command("create_token", "alice", "--name", "laptop", stdout=out)
    raw = out.getvalue().strip()
    token = ApiToken.objects.get(user=user)
    assert token.name == "laptop" and raw not in token.key_hash
    assert client.get("/api/v1/sessions", HTTP_AUTHORIZATION=f"Token {raw}").status_code == 200


def test_create_token_refuses_unknown_users_and_changes_nothing(db):
    with pytest.raises(CommandError, match="No user named"):
        call_command("create_token", "nobody")
    assert not ApiToken.objects.exists()


def test_sync_schedules_is_idempotent_and_removes_retired_jobs(db):
    from django_q.models import Schedule

    from shopper.schedules import SCHEDULES

    Schedule.objects.create(
        name="sessions.retired_job", func="x.y", schedule_type=Schedule.MINUTES, minutes=1
    )
    Schedule.objects.create(name="hand-made", func="x.y", schedule_type=Schedule.MINUTES, minutes=5)
    call_command("sync_schedules", stdout=StringIO())
    call_command("sync_schedules", stdout=StringIO())
    names = set(Schedule.objects.values_list("name", flat=True))
    assert names == {s["name"] for s in SCHEDULES} | {"hand-made"}


def test_check_deploy_is_clean_with_production_settings():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOPPER_TESTING")}
    env.update(
        DEBUG="False",
        SECRET_KEY="x" * 30 + "production-like-secret-key-0123456789",
        SHOPPER_FERNET_KEYS="8n7cyPbD0kqf9cJ0kQk3yqXKkXy7Gxh0o6lZ0xg3G2s=",
        ADMIN_EMAILS="ops@example.com",
        ALLOWED_HOSTS="shopper.example.com",
    )
    run = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "no issues" in run.stdout


def test_a_missing_fernet_key_stops_a_production_start():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("SHOPPER_TESTING", "SHOPPER_FERNET_KEYS")}
    env.update(DEBUG="False", SECRET_KEY="y" * 50)
    run = subprocess.run(
        [sys.executable, "manage.py", "check"], capture_output=True, text=True, env=env, timeout=60
    )
    assert run.returncode != 0 and "shopper.E001" in run.stderr


def test_the_models_and_migrations_agree():
    """Branches that each add a migration (or a choice) need a merge: a model change without its
    migration would only show up as an error in production's migrate."""
    out = StringIO()
    try:
        call_command("makemigrations", "--check", "--dry-run", stdout=out)
    except SystemExit as exc:  # --check exits 1 when a migration is missing
        pytest.fail(f"models and migrations differ (exit {exc.code}):\n{out.getvalue()}")
