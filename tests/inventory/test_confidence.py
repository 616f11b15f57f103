"""Issue 15, Confidence: the formula (priors, decay, fallback levels), the hiding policy, and what
the menu shows of it (API field, filter, sort, schema; the page's label; offer_confidence)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.utils import timezone

from inventory import confidence
from inventory.confidence import (
    HALF_LIFE,
    HIDE_FOR,
    HORIZON,
    best_bet_price,
    offer_confidence,
    outcome_record,
)
from inventory.models import Offer, OutcomeKind, ProvisionOutcome
from inventory.providers.base import OfferUnavailable, PermanentError
from tests.factories import RentalFactory

pytestmark = pytest.mark.django_db
K = OutcomeKind
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def frozen():
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


def outcome(offer: Offer, kind: str, *, ago=timedelta(0), **kw) -> ProvisionOutcome:
    fields = dict(
        provider=offer.provider,
        provider_offer_id=offer.provider_offer_id,
        host=offer.host,
        location=offer.location,
        gpu_type=offer.gpu_type,
    )
    fields.update(kw)
    return ProvisionOutcome.objects.create(at=timezone.now() - ago, kind=kind, **fields)


def detail(offer: Offer):
    return confidence.offer_confidence_detail(offer)


# --- the formula -----------------------------------------------------------------------------------
def test_with_no_history_each_provider_starts_from_its_documented_prior(make_offer):
    for provider, prior in [
        ("vastai", "0.700"),
        ("tensordock", "0.300"),
        ("runpod", "0.500"),
        ("x", "0.500"),
    ]:
        c = detail(make_offer(provider=provider))
        assert (c.value, c.basis, c.label, c.successes, c.failures) == (Decimal(prior), "prior", "new", 0, 0)


def test_a_beta_prior_updated_with_the_counts(make_offer):
    offer = make_offer(provider="tensordock")
    for _ in range(3):
        outcome(offer, K.SUCCESS)
    outcome(offer, K.NO_IP)
    outcome(offer, K.OTHER)  # counts half
    c = detail(offer)
    # (4 × 0.3 + 3) / (4 + 3 + 1.5)
    assert c.value == Decimal("0.494") and c.basis == "offer"
    assert (c.successes, c.failures) == (Decimal("3.0"), Decimal("1.5"))
    assert c.label == "mixed"


def test_evidence_decays_with_a_six_hour_half_life_and_is_forgotten_after_the_horizon(make_offer, frozen):
    offer = make_offer()
    outcome(offer, K.OFFER_GONE)
    outcome(offer, K.OFFER_GONE)
    assert detail(offer).failures == Decimal("2.0")
    assert detail(offer).value == Decimal("0.467")  # 2.8 / 6
    frozen.shift(HALF_LIFE)
    assert detail(offer).failures == Decimal("1.0")
    assert detail(offer).value == Decimal("0.560")  # 2.8 / 5: recovering toward the prior
    frozen.shift(HORIZON)
    c = detail(offer)
    assert (c.value, c.basis, c.failures) == (Decimal("0.700"), "prior", 0)


def test_it_falls_back_from_offer_to_host_to_location_to_gpu_model(make_offer):
    offer = make_offer(host="m1", location="Texas, US", gpu_type="A100 SXM4 80GB")
    elsewhere = dict(provider_offer_id="other")
    outcome(offer, K.NO_GPU, **elsewhere, host="m9", location="Utah, US")  # the same GPU model only
    assert (detail(offer).basis, detail(offer).value) == ("gpu", Decimal("0.560"))
    outcome(offer, K.SUCCESS, **elsewhere, host="m9")  # the same place
    outcome(offer, K.SUCCESS, **elsewhere, host="m9")
    assert (detail(offer).basis, detail(offer).value) == ("location", Decimal("0.800"))
    outcome(offer, K.CUDA_LOW, **elsewhere)  # the same machine
    assert (detail(offer).basis, detail(offer).value) == ("host", Decimal("0.560"))
    outcome(offer, K.SUCCESS)
    assert (detail(offer).basis, detail(offer).value) == ("offer", Decimal("0.760"))
    # Another provider's history never counts.
    other = make_offer(provider="tensordock", host="m1", location="Texas, US", gpu_type="A100 SXM4 80GB")
    assert detail(other).basis == "prior"


def test_evidence_too_old_to_weigh_half_an_attempt_falls_back(make_offer, frozen):
    offer = make_offer(host="m1")
    outcome(offer, K.SUCCESS, provider_offer_id="sibling")  # host level
    outcome(offer, K.NO_IP, ago=HALF_LIFE * 1.5)  # offer level: weighs 0.35
    assert detail(offer).basis == "host"


def test_labels_and_the_best_bet_key(make_offer):
    assert confidence.confidence_label(Decimal("0.7"), "offer") == "usually works"
    assert confidence.confidence_label(Decimal("0.699"), "host") == "mixed"
    assert confidence.confidence_label(Decimal("0.399"), "gpu") == "often fails"
    assert confidence.confidence_label(Decimal("0.9"), "prior") == "new"
    assert best_bet_price(Decimal("1.0000"), Decimal("0.500")) == Decimal("2.0000")
    assert best_bet_price(Decimal("1.0000"), Decimal("0.000")) == Decimal("20.0000")  # 0.05 floor


def test_offer_confidence_is_a_float_for_failover(make_offer):
    offer = make_offer(provider="tensordock")
    assert offer_confidence(offer) == 0.3
    outcome(offer, K.SUCCESS)
    assert offer_confidence(offer) == pytest.approx(0.44)


# --- recording and the hiding policy ------------------------------------------------------------------
def rental_of(offer: Offer, **kw):
    return RentalFactory(
        offer=offer,
        provider=offer.provider,
        provider_offer_id=offer.provider_offer_id,
        gpu_type=offer.gpu_type,
        location=offer.location,
        **kw,
    )


def visible(*offers) -> list[bool]:
    return [Offer.objects.visible().filter(pk=o.pk).exists() for o in offers]


def test_no_public_ip_hides_every_offer_of_the_host_at_once_and_a_success_clears_it(make_offer, frozen):
    offer = make_offer(host="node-7")
    sibling = make_offer(host="node-7", gpu_count=2)
    elsewhere = make_offer(host="node-8")
    row = outcome_record(rental_of(offer), K.NO_IP, "No available public IPs on hostnode")
    assert (row.provider, row.provider_offer_id, row.host, row.location, row.gpu_type, row.kind) == (
        "vastai", offer.provider_offer_id, "node-7", "Oregon, US", "RTX 4090 24GB", "no_ip",
    )  # fmt: skip
    assert visible(offer, sibling, elsewhere) == [False, False, True]
    frozen.shift(timedelta(minutes=10))
    outcome_record(rental_of(sibling), K.SUCCESS)  # a rental that was already on its way
    assert visible(offer, sibling, elsewhere) == [True, True, True]


def test_strong_evidence_hides_for_thirty_minutes(make_offer, frozen):
    offer = make_offer()  # no host: the offer alone
    other = make_offer()
    outcome_record(rental_of(offer), K.CUDA_LOW)
    assert visible(offer, other) == [False, True]
    frozen.shift(HIDE_FOR + timedelta(seconds=1))
    assert visible(offer) == [True]


@pytest.mark.parametrize("kind", [K.OFFER_GONE, K.NO_GPU, K.CUDA_LOW, K.NO_IP])
def test_each_strong_kind_hides_at_once(make_offer, kind):
    offer = make_offer(host="m1")
    outcome_record(rental_of(offer), kind)
    assert visible(offer) == [False]


@pytest.mark.parametrize("kind", [K.SSH_NEVER_UP, K.DIED_EARLY, K.OTHER])
def test_weak_evidence_hides_the_offer_after_two_failures_in_thirty_minutes(make_offer, frozen, kind):
    offer = make_offer(host="m1")
    sibling = make_offer(host="m1")
    outcome_record(rental_of(offer), kind)
    assert visible(offer) == [True]
    frozen.shift(HIDE_FOR + timedelta(minutes=1))
    outcome_record(rental_of(offer), kind)
    assert visible(offer) == [True]  # the first one is too old
    frozen.shift(timedelta(minutes=20))
    outcome_record(rental_of(offer), kind)
    assert visible(offer, sibling) == [False, True]


def test_a_hide_set_for_longer_by_hand_is_never_shortened(make_offer):
    offer = make_offer()
    later = timezone.now() + timedelta(days=1)
    Offer.objects.filter(pk=offer.pk).update(hidden_until=later)
    outcome_record(rental_of(offer), K.OFFER_GONE)
    assert Offer.objects.get(pk=offer.pk).hidden_until == later


def test_one_outcome_per_rental_the_first_kind_stands(make_offer):
    offer = make_offer()
    rental = rental_of(offer)
    outcome_record(rental, K.CUDA_LOW, "older CUDA")
    outcome_record(rental, K.OTHER, "the generic failure path")
    assert list(ProvisionOutcome.objects.values_list("rental_id", "kind", "detail")) == [
        (rental.pk, "cuda_low", "older CUDA")
    ]


def test_died_soon_after_start_replaces_the_success_and_a_later_death_is_ignored(make_offer, frozen):
    offer, other = make_offer(), make_offer()
    early = rental_of(offer, status="active", active_since=timezone.now())
    late = rental_of(other, status="active", active_since=timezone.now())
    outcome_record(early, K.SUCCESS)
    outcome_record(late, K.SUCCESS)
    frozen.shift(timedelta(minutes=10))
    outcome_record(early, K.DIED_EARLY, "gone at the provider")
    frozen.shift(timedelta(hours=1))
    assert outcome_record(late, K.DIED_EARLY, "gone at the provider") is None
    kinds = dict(ProvisionOutcome.objects.values_list("provider_offer_id", "kind"))
    assert kinds == {offer.provider_offer_id: "died_early", other.provider_offer_id: "success"}


def test_a_bad_kind_records_nothing_and_never_raises(make_offer):
    assert outcome_record(rental_of(make_offer()), "exploded") is None
    assert not ProvisionOutcome.objects.exists()


def test_what_the_provisioning_code_saw_is_classified():
    assert confidence.create_error_kind(OfferUnavailable("No available public IPs on hostnode")) == K.NO_IP
    assert confidence.create_error_kind(OfferUnavailable("error 404/3603: no_such_ask")) == K.OFFER_GONE
    assert confidence.create_error_kind(OfferUnavailable("No available nodes found")) == K.OFFER_GONE
    assert confidence.create_error_kind(PermanentError("invalid_args: bad image")) == K.OTHER
    assert confidence.start_failure_kind("Error: OCI runtime create failed: nvidia-container-cli") == K.NO_GPU
    assert confidence.start_failure_kind("Stopped") == K.DIED_EARLY
    assert confidence.gpu_mismatch_kind(
        "the machine runs CUDA 12.8 (driver 5), older than the CUDA 12.9"
    ) == (K.CUDA_LOW)
    assert confidence.gpu_mismatch_kind("the machine has 1 GPU(s), not the 2 that were rented") == K.NO_GPU


# --- the menu: API, filter, sort, schema, page -----------------------------------------------------------
@pytest.fixture
def three(make_offer):
    """A cheap flaky TensorDock offer, a proven Vast offer and a new Vast one."""
    flaky = make_offer(provider="tensordock", price_per_hour="0.5000", host="td-1")
    proven = make_offer(price_per_hour="0.8000", host="m1")
    new = make_offer(price_per_hour="1.0000", gpu_type="A40 48GB", vram_gb=48, host="m2", location="Utah, US")
    for _ in range(2):
        outcome(flaky, K.NO_IP, ago=timedelta(hours=2))
        outcome(proven, K.SUCCESS, ago=timedelta(hours=1))
    return flaky, proven, new


def test_the_api_gives_confidence_and_the_counts_behind_it(three, api_client):
    flaky, proven, new = three
    rows = {r["id"]: r for r in api_client.get("/api/v1/inventory").json()["results"]}
    assert rows[str(proven.pk)]["confidence"] == 0.792  # (2.8 + 2 × 0.891) / (4 + 1.782)
    assert rows[str(proven.pk)]["confidence_label"] == "usually works"
    assert rows[str(proven.pk)]["confidence_basis"] == "offer"
    assert rows[str(proven.pk)]["confidence_successes"] == 1.8
    assert rows[str(proven.pk)]["confidence_failures"] == 0.0
    assert rows[str(flaky.pk)]["confidence_label"] == "often fails"
    assert rows[str(flaky.pk)]["confidence_failures"] == 1.6
    assert rows[str(new.pk)]["confidence"] == 0.7 and rows[str(new.pk)]["confidence_label"] == "new"
    one = api_client.get(f"/api/v1/inventory/{proven.pk}").json()
    assert one == rows[str(proven.pk)]


def test_min_confidence_filters_and_best_bet_sorts(three, api_client):
    flaky, proven, new = three

    def ids(**query):
        return [r["id"] for r in api_client.get("/api/v1/inventory", query).json()["results"]]

    assert ids() == [str(flaky.pk), str(proven.pk), str(new.pk)]  # by price
    assert ids(sort="best_bet") == [str(proven.pk), str(new.pk), str(flaky.pk)]  # 1.01, 1.43, 2.33
    assert ids(min_confidence="0.7") == [str(proven.pk), str(new.pk)]
    assert ids(min_confidence="0.75", sort="best_bet") == [str(proven.pk)]


@pytest.mark.parametrize("bad", ["1.5", "-0.1", "abc"])
def test_a_bad_min_confidence_is_a_400_naming_it(three, api_client, bad):
    got = api_client.get("/api/v1/inventory", {"min_confidence": bad})
    assert got.status_code == 400 and "min_confidence" in got.json()["errors"]


def test_the_schema_documents_confidence(api_client):
    schema = api_client.get("/api/v1/schema/", HTTP_ACCEPT="application/json").json()
    offer = schema["components"]["schemas"]["Offer"]["properties"]
    assert offer["confidence"]["type"] == "number" and offer["confidence"]["readOnly"]
    for name in ("confidence_label", "confidence_basis", "confidence_successes", "confidence_failures"):
        assert name in offer
    params = {p["name"]: p for p in schema["paths"]["/api/v1/inventory"]["get"]["parameters"]}
    assert "min_confidence" in params and "best_bet" in params["sort"]["schema"]["enum"]


def test_the_offers_page_shows_the_label_with_the_numbers_on_hover(three, client_logged_in):
    page = client_logged_in.get("/offers/").content.decode()
    # The header is a sort link: the best bet (price ÷ confidence) first.
    assert re.search(r'<th [^>]*title="How often rentals[^"]*"><a class="sort" href="\?sort=best_bet"', page)
    assert ">Confidence</a></th>" in page
    assert (
        'title="79% of rentals expected to become active, from 1.8 succeeded and 0.0 failed at this offer '
        '(recent ones weigh more)">usually works</span>'
    ) in page
    assert "no history yet, the provider's starting figure\">new</span>" in page
    assert ">often fails</span>" in page
    assert 'name="min_confidence"' in page and 'value="best_bet"' in page
    partial = client_logged_in.get("/offers/", {"min_confidence": "0.75"}, HTTP_HX_REQUEST="true")
    assert "usually works" in partial.content.decode() and ">new<" not in partial.content.decode()


def test_a_refresh_stores_the_host_of_each_offer(db):
    from inventory.providers.base import OfferData
    from inventory.services import offers_upsert

    data = OfferData("vastai", "77", "RTX 4090 24GB", 1, 24, Decimal("0.5"), location="Texas, US", host="m7")
    offers_upsert(provider="vastai", offers=[data], fetched_at=timezone.now())
    assert Offer.objects.get(provider_offer_id="77").host == "m7"


def test_the_admin_lists_outcomes_read_only(make_offer, admin_client):
    outcome(make_offer(), K.NO_IP)
    page = admin_client.get("/admin/inventory/provisionoutcome/")
    assert page.status_code == 200 and "no public IP on the host" in page.content.decode()
    assert admin_client.get("/admin/inventory/provisionoutcome/add/").status_code == 403
