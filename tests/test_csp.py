"""The Content-Security-Policy (shopper/csp.py) and what it needs from the pages: nothing inline.
tests/browser/test_csp.py proves it in Chromium; these are the fast checks."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.utils import timezone

from costs.models import Budget, LedgerEntry
from sessions.models import Rental, Status
from shopper.csp import POLICY

pytestmark = pytest.mark.django_db

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
# What a strict policy refuses: inline scripts, handlers, style attributes and elements, htmx eval.
INLINE = {
    "inline script": re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*type=\"application/json\")[^>]*>", re.I),
    "event handler attribute": re.compile(r"\son[a-z]+\s*=", re.I),
    "style attribute": re.compile(r"\sstyle\s*=", re.I),
    "style element": re.compile(r"<style[\s>]", re.I),
    "hx-on (eval)": re.compile(r"\shx-on[:-]", re.I),
    "javascript: URL": re.compile(r"javascript:", re.I),
}


TRIGGER = re.compile(r'hx-trigger="([^"]*)"')


def inline_problems(html: str) -> list[str]:
    problems = [f"{name}: {m.group(0)!r}" for name, rx in INLINE.items() for m in rx.finditer(html)]
    # An htmx event filter, "change[condition]", is evaluated (eval); the "[type=text]" of a
    # "from:input[type=text]" later in the trigger is a CSS selector, which is fine.
    for trigger in TRIGGER.findall(html):
        for part in trigger.split(","):
            event = (part.split() or [""])[0]
            if "[" in event:
                problems.append(f"htmx trigger filter (eval): {part.strip()!r}")
    return problems


def test_the_policy_is_strict():
    directives = dict(d.split(" ", 1) for d in POLICY.split("; "))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert "unsafe" not in POLICY
    assert directives["object-src"] == "'none'" and directives["frame-ancestors"] == "'none'"


@pytest.mark.parametrize(
    "path", sorted(p.relative_to(TEMPLATES).as_posix() for p in TEMPLATES.rglob("*.html"))
)
def test_no_template_has_anything_inline(path):
    assert inline_problems((TEMPLATES / path).read_text()) == []


@pytest.fixture
def spending_user(user):
    """alice with a budget, an active rental with an SSH command, and spend this month."""
    now = timezone.now()
    Budget.objects.create(user=user, monthly_limit=Decimal("50"))
    rental = Rental.objects.create(
        consumer=user, provider="vastai", provider_offer_id="o-1", gpu_type="RTX 4090 24GB", gpu_count=1,
        price_per_hour=Decimal("2.0000"), markup_percent=Decimal("0"), status=Status.ACTIVE,
        created_at=now - timedelta(hours=3), active_since=now - timedelta(hours=2),
        reservation_ends_at=now + timedelta(hours=1), hard_max_at=now + timedelta(hours=9),
        ssh_host="203.0.113.7", ssh_port=40001, ssh_user="root",
    )  # fmt: skip
    LedgerEntry.objects.create(
        rental=rental, consumer=user, provider="vastai", gpu_type="RTX 4090 24GB",
        period_start=now - timedelta(hours=2), period_end=now - timedelta(hours=1), seconds=3600,
        price_per_hour=Decimal("2.0000"), provider_cost=Decimal("2.00"), amount=Decimal("2.00"),
    )  # fmt: skip
    return rental


def test_pages_carry_the_policy_and_render_nothing_inline(client, user, staff, spending_user):
    client.force_login(user)
    pages = ["/", "/offers/", "/sessions/", f"/sessions/{spending_user.pk}/", "/keys/", "/costs/", "/tokens/"]
    for path in pages:
        response = client.get(path)
        assert response.status_code == 200, path
        assert response["Content-Security-Policy"] == POLICY, path
        html = response.content.decode()
        assert inline_problems(html) == [], path
    created = client.post("/tokens/", {"name": "csp"})
    assert "data-copy" in created.content.decode() and inline_problems(created.content.decode()) == []
    assert 'class="meter-bars"' in client.get("/costs/").content.decode()

    client.force_login(staff)
    for path in ("/safety/", "/audit/", "/costs/", "/api/v1/docs/"):
        response = client.get(path)
        assert response.status_code == 200 and response["Content-Security-Policy"] == POLICY, path
        assert inline_problems(response.content.decode()) == [], path


def test_json_answers_do_not_need_it(api_client):
    response = api_client.get("/api/v1/sessions")
    assert response.status_code == 200 and "Content-Security-Policy" not in response


def test_the_api_docs_script_is_a_file(staff_client_session):
    response = staff_client_session.get("/api/v1/docs/?script=")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/javascript")
    assert "SwaggerUIBundle" in response.content.decode()


@pytest.fixture
def staff_client_session(client, staff):
    client.force_login(staff)
    return client
