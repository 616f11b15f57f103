"""The health endpoint says how many offers each provider returned and in how many requests:
a capped Vast search (FIELD_NOTES VA-LISTING) shows as more pages, never as fewer offers."""

from __future__ import annotations

import json

import pytest
import responses

from inventory.services import offers_refresh
from tests.inventory.providers.conftest import load

pytestmark = pytest.mark.django_db
BUNDLES = "https://console.vast.ai/api/v0/bundles/"


def test_health_reports_the_offers_and_pages_of_a_capped_search(client, settings):
    settings.VASTAI_API_URL = "https://console.vast.ai"
    settings.VASTAI_API_KEY = "sk-health-test"
    settings.TENSORDOCK_API_TOKEN = ""
    settings.PROVIDER_MIN_INTERVAL_SECONDS = 0.0
    fx = load("VA-LISTING.json")
    offers = [dict(fx["offer"], id=fx["offer"]["id"] + i) for i in range(150)]

    def capped(request):
        after = json.loads(request.body).get("id", {}).get("gt", 0)
        return 200, {}, json.dumps({"offers": [o for o in offers if o["id"] > after][: fx["cap"]]})

    with responses.RequestsMock() as rsps:
        rsps.add_callback(responses.POST, BUNDLES, callback=capped, content_type="application/json")
        [vast] = [r for r in offers_refresh(force=True) if r.provider == "vastai"]
    assert (vast.outcome, vast.offers) == ("refreshed", 150)

    providers = {p["name"]: p for p in client.get("/api/v1/health").json()["providers"]}
    assert providers["vastai"]["offers"] == 150 and providers["vastai"]["search_pages"] == 4
    assert providers["tensordock"]["search_pages"] == 0  # never asked (no key)
