"""The generated catalog: deterministic, big enough, shaped like the fixtures."""

from __future__ import annotations

import requests

from inventory.sandbox import catalog

from ._util import fixture


def test_catalog_is_deterministic_per_seed():
    assert catalog.generate_vast_offers(42) == catalog.generate_vast_offers(42)
    assert catalog.generate_td_locations(42) == catalog.generate_td_locations(42)
    assert catalog.generate_vast_offers(7)[0]["id"] != catalog.generate_vast_offers(42)[0]["id"] or (
        catalog.generate_vast_offers(7)[0]["dph_base"] != catalog.generate_vast_offers(42)[0]["dph_base"]
    )
    ids = [o["id"] for o in catalog.generate_vast_offers(42)]
    assert len(ids) == len(set(ids))


def test_catalog_has_at_least_3000_offers(sandbox):
    sizes = sandbox.catalog()
    locations = requests.get(f"{sandbox.tensordock_url}/locations", timeout=10).json()["data"]["locations"]
    td_offers = sum(1 for loc in locations for g in loc["gpus"] for n in (1, 2, 4, 8) if n <= g["max_count"])
    vast_offers = len(
        requests.post(f"{sandbox.vastai_url}/api/v0/bundles/", json={}, timeout=30).json()["offers"]
    )
    assert vast_offers == sizes["vastai_offers"] >= 2000
    assert td_offers == sizes["tensordock_offers"]
    assert vast_offers + td_offers >= 3000


def test_vast_offer_shape_matches_fixture():
    sample = fixture("vastai_offers_search.json")["offers"][0]
    offers = catalog.generate_vast_offers(42)
    assert set(offers[0]) == set(sample)
    assert set(offers[0]["search"]) == set(sample["search"])
    # the quirks the fixtures promise exist in the generated catalog too
    assert any(o["cpu_cores"] is None for o in offers)
    assert any(o["geolocation"] is None for o in offers)
    assert any(o["public_ipaddr"] != o["public_ipaddr"].strip() for o in offers)
    assert {o["gpu_ram"] for o in offers if o["gpu_name"] == "A100 PCIE"} == {40960, 81920}
    assert {o["num_gpus"] for o in offers} == {1, 2, 4, 8}
    assert all(0.85 <= o["reliability"] <= 0.999 for o in offers)
    for o in offers[:50]:
        assert o["dph_total"] == round(
            o["dph_base"] + o["storage_cost"] * catalog.DEFAULT_ALLOCATED_STORAGE / 720, 6
        )


def test_tensordock_location_shape_matches_fixture():
    sample = fixture("tensordock_v2_locations.json")["data"]["locations"][0]
    loc = catalog.generate_td_locations(42)[0]
    public = {k for k in loc if not k.startswith("_")}
    assert public == set(sample)
    assert set(loc["gpus"][0]) == set(sample["gpus"][0])
    locations = catalog.generate_td_locations(42)
    assert any(g["max_count"] == 0 for loc in locations for g in loc["gpus"])
    assert any(not g["network_features"]["dedicated_ip_available"] for loc in locations for g in loc["gpus"])
