"""Every refusal a service raises is a DomainError, and each one becomes the same answer wherever
it is raised: the API (common/api.py) answers its status with ``{"detail", "code"}`` (API.md), the
pages (common/pages.py) show its message: a fragment with its status for htmx, else a message
and a redirect back."""

from __future__ import annotations

import pytest

import costs.services
import sessions.errors
import shopper.urls  # noqa: F401  (every view module, imported before a test patches a service)
from common import errors as common_errors
from common.errors import DomainError
from sessions import lifecycle, services
from sessions.models import Status

# The contract (API.md and the schema's error descriptions): class -> (HTTP status, code).
EXPECTED = {
    common_errors.DomainError: (400, "invalid"),
    common_errors.Invalid: (400, "invalid"),
    common_errors.Forbidden: (403, "forbidden"),
    common_errors.Gone: (410, "gone"),
    sessions.errors.RentalError: (400, "invalid"),
    sessions.errors.OfferNotFound: (404, "not_found"),
    sessions.errors.OfferGone: (409, "offer_unavailable"),
    sessions.errors.PriceChanged: (409, "price_changed"),
    sessions.errors.CapacityReached: (409, "capacity_reached"),
    sessions.errors.AlreadyEnded: (409, "already_ended"),
    sessions.errors.HardMaxExceeded: (403, "hard_max_exceeded"),
    sessions.errors.InsufficientBalance: (409, "insufficient_balance"),
    sessions.errors.KeyReused: (422, "idempotency_key_reused"),
    costs.services.BudgetExceeded: (403, "budget_exceeded"),
}
ERRORS = sorted(EXPECTED, key=lambda cls: cls.__name__)
MESSAGE = "Refused: <b>not</b> today."


def all_subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub, *all_subclasses(sub)}
    return found


def test_every_domain_error_is_in_the_contract():
    """A new refusal must say its status and code here (and in API.md)."""
    defined = {
        c
        for c in all_subclasses(DomainError)
        if c.__module__.split(".")[0] in ("common", "sessions", "costs")
    }
    assert defined | {DomainError} == set(EXPECTED)


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_the_class_carries_its_status_and_code(cls):
    assert (cls.status, cls.code) == EXPECTED[cls]


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_the_api_answers_each_refusal_with_its_status_and_code(cls, api_client, make_rental, monkeypatch):
    rental = make_rental(Status.ACTIVE)

    def refuse(**kwargs):
        raise cls(MESSAGE, budget="user")  # data is context, never in the body

    monkeypatch.setattr(services, "rental_stop", refuse)
    response = api_client.post(f"/api/v1/sessions/{rental.pk}/done")

    status, code = EXPECTED[cls]
    assert response.status_code == status
    assert response.json() == {"detail": MESSAGE, "code": code}


def test_extra_goes_into_the_api_body(api_client, make_rental, monkeypatch):
    rental = make_rental(Status.ACTIVE)

    def refuse(**kwargs):
        raise sessions.errors.CapacityReached(MESSAGE, extra={"limit": 3})

    monkeypatch.setattr(services, "rental_stop", refuse)
    response = api_client.post(f"/api/v1/sessions/{rental.pk}/done")
    assert response.status_code == 409
    assert response.json() == {"limit": 3, "detail": MESSAGE, "code": "capacity_reached"}


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_a_page_shows_each_refusal_and_redirects_back(cls, client_logged_in, make_rental, monkeypatch):
    rental = make_rental(Status.ACTIVE)
    before = rental.reservation_ends_at

    def refuse(**kwargs):
        raise cls(MESSAGE)

    monkeypatch.setattr(lifecycle, "rental_extend", refuse)
    response = client_logged_in.post(f"/sessions/{rental.pk}/extend/", {"hours": "1"}, follow=True)

    assert response.redirect_chain == [(f"/sessions/{rental.pk}/", 302)]
    assert "Refused: &lt;b&gt;not&lt;/b&gt; today." in response.content.decode()
    rental.refresh_from_db()
    assert rental.reservation_ends_at == before


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_an_htmx_page_request_gets_a_fragment_with_the_status(
    cls, client_logged_in, make_rental, monkeypatch
):
    rental = make_rental(Status.ACTIVE)

    def refuse(**kwargs):
        raise cls(MESSAGE)

    monkeypatch.setattr(lifecycle, "rental_extend", refuse)
    response = client_logged_in.post(
        f"/sessions/{rental.pk}/extend/", {"hours": "1"}, headers={"HX-Request": "true"}
    )

    status, code = EXPECTED[cls]
    assert response.status_code == status
    assert response["X-Refusal"] == code and response["HX-Reswap"] == "beforebegin"
    assert response.content.decode() == (
        '<div class="msg msg-error" role="alert">Refused: &lt;b&gt;not&lt;/b&gt; today.</div>'
    )
