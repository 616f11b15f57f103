from __future__ import annotations

from decimal import Decimal

import pytest

from inventory.models import Offer

pytestmark = pytest.mark.django_db


@pytest.fixture
def menu(make_offer):
    return {
        "cheap4090": make_offer(gpu_type="RTX 4090 24GB", vram_gb=24, price_per_hour="0.3500"),
        "a100_40": make_offer(
            gpu_type="A100 PCIE 40GB", vram_gb=40, price_per_hour="0.9000", location="Texas, US"
        ),
        "a100_80x8": make_offer(
            gpu_type="A100 SXM4 80GB",
            vram_gb=80,
            gpu_count=8,
            price_per_hour="9.6000",
            provider="tensordock",
            reliability=None,
            location="Dallas, Texas, United States",
        ),
        "h100": make_offer(
            gpu_type="H100 SXM 80GB",
            vram_gb=80,
            gpu_count=2,
            price_per_hour="4.2000",
            reliability=Decimal("0.9100"),
        ),
        "gone": make_offer(gpu_type="RTX 4090 24GB", price_per_hour="0.1000", available=False),
    }


def ids(response):
    return [row["id"] for row in response.json()["results"]]


def test_it_requires_authentication(client, menu):
    response = client.get("/api/v1/inventory")
    assert response.status_code in (401, 403)
    assert "detail" in response.json()


def test_it_lists_available_offers_cheapest_first_with_the_contract_fields(api_client, menu):
    response = api_client.get("/api/v1/inventory")
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 4
    assert ids(response) == [str(menu[k].pk) for k in ("cheap4090", "a100_40", "h100", "a100_80x8")]
    row = body["results"][0]
    for field in (
        "id",
        "provider",
        "gpu_type",
        "gpu_count",
        "vram_gb",
        "price_per_hour",
        "price_per_gpu_hour",
        "location",
        "reliability",
        "available",
        "fetched_at",
    ):
        assert field in row
    assert row["price_per_hour"] == "0.3500"
    assert row["id"] == str(menu["cheap4090"].pk)
    assert row["fetched_at"].endswith("Z")


def test_it_filters_by_every_parameter(api_client, menu):
    def q(**params):
        return set(ids(api_client.get("/api/v1/inventory", params)))

    pk = {k: str(v.pk) for k, v in menu.items()}
    assert q(gpu="a100") == {pk["a100_40"], pk["a100_80x8"]}
    assert q(gpu="A100 80GB") == set()  # substring match on the canonical name
    assert q(gpu="80GB") == {pk["a100_80x8"], pk["h100"]}
    assert q(min_gpus=2) == {pk["a100_80x8"], pk["h100"]}
    assert q(min_vram_gb=41) == {pk["a100_80x8"], pk["h100"]}
    assert q(max_price="0.9") == {pk["cheap4090"], pk["a100_40"]}
    assert q(provider="tensordock") == {pk["a100_80x8"]}
    assert q(location="texas") == {pk["a100_40"], pk["a100_80x8"]}
    assert q(min_reliability="0.95") == {pk["cheap4090"], pk["a100_40"]}


@pytest.mark.parametrize(
    "sort,expected",
    [
        ("price", ["cheap4090", "a100_40", "h100", "a100_80x8"]),
        ("-price", ["a100_80x8", "h100", "a100_40", "cheap4090"]),
        ("price_per_gpu", ["cheap4090", "a100_40", "a100_80x8", "h100"]),
        ("-vram_gb", ["h100", "a100_80x8", "a100_40", "cheap4090"]),
        ("vram_gb", ["cheap4090", "a100_40", "h100", "a100_80x8"]),
    ],
)
def test_it_sorts(api_client, menu, sort, expected):
    response = api_client.get("/api/v1/inventory", {"sort": sort})
    assert response.status_code == 200
    assert ids(response) == [str(menu[k].pk) for k in expected]


@pytest.mark.parametrize(
    "params,name",
    [
        ({"min_gpus": "two"}, "min_gpus"),
        ({"min_gpus": "0"}, "min_gpus"),
        ({"min_vram_gb": "-1"}, "min_vram_gb"),
        ({"max_price": "cheap"}, "max_price"),
        ({"max_price": "-3"}, "max_price"),
        ({"min_reliability": "1.5"}, "min_reliability"),
        ({"provider": "aws"}, "provider"),
        ({"sort": "gpu_type"}, "sort"),
        ({"page_size": "10000"}, "page_size"),
        ({"page": "zero"}, "page"),
    ],
)
def test_it_answers_a_bad_filter_with_a_400_naming_the_parameter(api_client, menu, params, name):
    before = Offer.objects.count()
    response = api_client.get("/api/v1/inventory", params)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid"
    assert body["detail"].startswith(f"{name}:")
    assert Offer.objects.count() == before


def test_it_paginates(api_client, make_offer):
    for i in range(7):
        make_offer(price_per_hour=f"{1 + i}.0000")
    first = api_client.get("/api/v1/inventory", {"page_size": 3}).json()
    assert first["count"] == 7 and len(first["results"]) == 3 and first["next"]
    third = api_client.get("/api/v1/inventory", {"page_size": 3, "page": 3}).json()
    assert [r["price_per_hour"] for r in third["results"]] == ["7.0000"]


def test_it_returns_one_offer_and_404s_unknown_ids(api_client, menu):
    offer = menu["h100"]
    response = api_client.get(f"/api/v1/inventory/{offer.pk}")
    assert response.status_code == 200
    assert response.json()["gpu_type"] == "H100 SXM 80GB"
    assert response.json()["price_per_gpu_hour"] == "2.1000"
    for bad in ("999999", "abc"):
        response = api_client.get(f"/api/v1/inventory/{bad}")
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"


def test_the_fast_rows_match_the_documented_serializer(menu):
    from inventory.measured import measured_index, with_measured
    from inventory.serializers import OfferSerializer, offer_rows, offer_tuples

    fast = with_measured(offer_rows(offer_tuples(Offer.objects.order_by("pk"))), measured_index())
    slow = OfferSerializer(Offer.objects.order_by("pk"), many=True).data
    assert [set(r) for r in fast] == [set(r) for r in slow]
    for f, s in zip(fast, slow, strict=True):
        assert f["price_per_hour"] == s["price_per_hour"]
        assert f["reliability"] == s["reliability"]
        assert f["id"] == s["id"]


def test_the_schema_documents_the_inventory_filters(api_client):
    schema = api_client.get("/api/v1/schema/", HTTP_ACCEPT="application/json")
    assert schema.status_code == 200
    text = schema.content.decode()
    assert "/api/v1/inventory" in text and "min_reliability" in text
    import json

    parameters = json.loads(text)["paths"]["/api/v1/inventory"]["get"]["parameters"]
    [provider] = [p for p in parameters if p["name"] == "provider"]
    assert provider["schema"]["enum"] == ["lambda", "runpod", "tensordock", "vastai"]
