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
