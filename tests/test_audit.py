"""The audit log page: staff only, three sources merged newest first, filters, paging, bad input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.urls import reverse

from costs.models import Budget
from sessions.models import EventKind, RentalEvent
from shopper import audit
from shopper.models import ApiToken
from tests.factories import RentalFactory

pytestmark = pytest.mark.django_db
URL = "/audit/"


def event(rental, kind, at, actor=None, reason="r") -> RentalEvent:
    return RentalEvent.objects.create(rental=rental, kind=kind, at=at, actor=actor, reason=reason)


def at(day: int, hour: int = 12) -> datetime:
    return datetime(2025, 3, day, hour, tzinfo=UTC)


@pytest.fixture
def log(user, other_user, staff):
    """One of each source on distinct days of March 2025."""
    rental = RentalFactory(consumer=user)
    event(rental, EventKind.TRANSITION, at(1), reason="pending → provisioning")
    event(rental, EventKind.KEY_DOWNLOAD, at(2), actor=user, reason="Private key downloaded (page)")
    event(rental, EventKind.EXTEND, at(3), actor=user, reason="Extended by 2 h")
    event(rental, EventKind.OVERRIDE, at(4), actor=staff, reason="Past the hard max: demo")
    event(rental, EventKind.ERROR, at(5), reason="provider said no")
    event(rental, EventKind.HEARTBEAT, at(6), reason="heartbeat: not an audit entry")
    token, _ = ApiToken.issue(user=other_user, name="laptop")
    ApiToken.objects.filter(pk=token.pk).update(created_at=at(7), revoked_at=at(8))
    budget = Budget.objects.create(user=user, monthly_limit=Decimal("100"))
    LogEntry.objects.create(
        user=staff,
        content_type=ContentType.objects.get_for_model(Budget),
        object_id=str(budget.pk),
        object_repr=str(budget),
        action_flag=CHANGE,
        change_message='[{"changed": {"fields": ["Monthly limit"]}}]',
        action_time=at(9),
    )
    return rental


def rows(response) -> list[audit.Entry]:
    return response.context["page"].entries


def test_only_staff_see_the_audit_log(client, user, staff):
    assert client.get(URL).status_code == 302
    client.force_login(user)
    assert client.get(URL).status_code == 404
    client.force_login(staff)
    response = client.get(URL)
    assert response.status_code == 200
    assert reverse("audit") == URL
    assert b">Audit</a>" in response.content


def test_the_log_merges_every_source_newest_first(client, staff, log):
    client.force_login(staff)
    entries = rows(client.get(URL))
    assert [e.what for e in entries] == [
        "admin", "token", "token", "error", "override", "extend", "key_download", "transition",
    ]  # fmt: skip
    assert [e.at for e in entries] == sorted((e.at for e in entries), reverse=True)
    admin, revoked, created = entries[:3]
    assert "Monthly limit" in admin.summary and "budget" in admin.summary.lower()
    assert admin.who == "carol"
    assert "revoked" in revoked.summary and "created" in created.summary and created.who == "bob"
    assert entries[-1].who == ""  # the system
    html = client.get(URL).content.decode()
    assert "Private key downloaded (page)" in html and "heartbeat" not in html


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("what=token", ["token", "token"]),
        ("what=admin", ["admin"]),
        ("what=key_download", ["key_download"]),
        ("what=override", ["override"]),
        ("who=alice", ["extend", "key_download"]),
        ("who=bob", ["token", "token"]),
        ("who=carol", ["admin", "override"]),
        ("who=carol&what=override", ["override"]),
        ("from=2025-03-03&to=2025-03-07", ["token", "error", "override", "extend"]),
        ("from=2025-03-08", ["admin", "token"]),
        ("to=2025-03-01", ["transition"]),
    ],
)
def test_filters(client, staff, log, query, expected):
    client.force_login(staff)
    response = client.get(f"{URL}?{query}")
    assert response.status_code == 200
    assert [e.what for e in rows(response)] == expected
    assert not response.context["errors"]


@pytest.mark.parametrize(
    "query",
    [
        "what=nonsense",
        "from=yesterday",
        "to=2025-02-30",
        "from=2025-03-05&to=2025-03-01",
        "page=abc",
        "page=-3",
        "page=999999999999999999999",
        "who=" + "x" * 300,
        "from=0000-01-01",
    ],
)
def test_bad_filter_values_are_a_message_not_a_500(client, staff, log, query):
    client.force_login(staff)
    response = client.get(f"{URL}?{query}")
    assert response.status_code == 200
    assert response.context["errors"]
    assert b'role="alert"' in response.content


def test_an_unknown_user_is_a_message_and_an_empty_list(client, staff, log):
    client.force_login(staff)
    response = client.get(f"{URL}?who=nobody")
    assert rows(response) == []
    assert "No user named" in response.context["errors"][0]


def test_paging_across_sources_is_exact(client, user, staff):
    """120 entries interleaved over two sources: the pages are the global order, sliced."""
    rental = RentalFactory(consumer=user)
    start = at(1, 0)
    expected = []
    for i in range(120):
        when = start + timedelta(minutes=i)
        if i % 3 == 0:
            token, _ = ApiToken.issue(user=user, name=f"t{i}")
            ApiToken.objects.filter(pk=token.pk).update(created_at=when)
        else:
            event(rental, EventKind.EXTEND, when, actor=user)
        expected.append(when)
    expected.reverse()
    client.force_login(staff)
    seen = []
    for page in (1, 2, 3):
        response = client.get(f"{URL}?who=alice&page={page}")
        p = response.context["page"]
        assert p.total == 120 and p.num_pages == 3
        seen += [e.at for e in p.entries]
    assert seen == expected
    html = client.get(f"{URL}?who=alice&page=2").content.decode()
    assert "?who=alice&amp;page=1" in html and "?who=alice&amp;page=3" in html
    beyond = client.get(f"{URL}?page=7")
    assert rows(beyond) == [] and beyond.context["errors"]


def test_queries_are_bounded(client, staff, user, django_assert_max_num_queries):
    rental = RentalFactory(consumer=user)
    for i in range(60):
        event(rental, EventKind.KEY_DOWNLOAD, at(1) + timedelta(seconds=i), actor=user)
        ApiToken.issue(user=user, name=f"t{i}")
    client.force_login(staff)
    with django_assert_max_num_queries(15):
        assert client.get(URL).status_code == 200


def test_a_real_admin_budget_change_shows_up(client, django_user_model, user):
    admin_user = django_user_model.objects.create_superuser("root", "root@example.com", "pw-root-123")
    budget = Budget.objects.create(user=user, monthly_limit=Decimal("100"))
    client.force_login(admin_user)
    url = reverse("admin:costs_budget_change", args=[budget.pk])
    response = client.post(url, {"user": user.pk, "monthly_limit": "250"})
    assert response.status_code == 302, response.content[:500]
    entries = rows(client.get(f"{URL}?what=admin&who=root"))
    assert len(entries) == 1
    assert "Monthly limit" in entries[0].summary
    assert entries[0].link == url
