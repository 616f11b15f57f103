"""Rent-time choices in the adapters (issues 14 and 19): Vast ports ride in ``env`` as "-p C:C"
keys and come back mapped in ``ports``; storage and traffic prices reach the offer; TensorDock's
storage is priced per GB-hour; both read the instance's own hourly rate back."""

from __future__ import annotations

from decimal import Decimal

import responses
from responses import matchers

from inventory.providers.base import CreateRequest

from .conftest import VAST_URL

KEY = "ssh-ed25519 AAAA shopper@example"


def test_vast_create_asks_for_each_port_in_env(rsps, vast):
    # PROVIDERS.md 1.4: env is a JSON object and ports ride in it as "-p H:C": "1".
    rsps.add(
        responses.PUT,
        VAST_URL + "/api/v0/asks/77/",
        json={"success": True, "new_contract": 9},
        match=[
            matchers.json_params_matcher(
                {"env": {"A": "1", "-p 8888:8888": "1", "-p 8000:8000": "1"}}, strict_match=False
            )
        ],
    )
    request = CreateRequest(
        offer_id="77", label="shopper-x", ssh_public_key=KEY, env={"A": "1"}, ports=(8888, 8000)
    )
    assert vast.create_instance(request) == "9"


def test_vast_instance_reports_its_mapped_ports_and_its_own_rate(vast):
    raw = {
        "id": 5, "label": "shopper-x", "actual_status": "running", "public_ipaddr": "203.0.113.9\n",
        "ports": {
            "22/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41200"}],
            "8888/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41201"}],
            "8000/tcp": None,  # not mapped (yet)
            "9000/udp": [{"HostIp": "0.0.0.0", "HostPort": "41203"}],
        },
        "dph_total": 0.5321,
    }  # fmt: skip
    instance = vast._instance(raw)
    assert instance.ports == {8888: ("203.0.113.9", 41201)}
    assert instance.price_per_hour == Decimal("0.5321")


def test_vast_offer_carries_storage_and_traffic_prices(vast):
    raw = {
        "id": 1, "gpu_name": "RTX 4090", "num_gpus": 1, "gpu_ram": 24564, "dph_total": 0.41,
        "storage_cost": 0.2, "inet_down_cost": 0.005, "inet_up_cost": 0.002, "disk_space": 250.5,
    }  # fmt: skip
    offer = vast._offer(raw)
    # storage_cost is $/GB/month: /720 per hour (PROVIDERS.md 1.5).
    assert offer.storage_price_per_gb_hour == Decimal("0.000278")
    assert offer.disk_gb_default == 10
    assert offer.max_disk_gb == 250
    assert (offer.inet_down_price_per_gb, offer.inet_up_price_per_gb) == (
        Decimal("0.0050"),
        Decimal("0.0020"),
    )


def test_tensordock_offer_prices_storage_per_gb_hour(td):
    location = {
        "id": "loc1", "city": "Joplin", "country": "US",
        "gpus": [{
            "v0Name": "geforcertx4090-pcie-24gb", "max_count": 1, "price_per_hr": 0.35,
            "resources": {"max_vcpus": 8, "max_ram_gb": 32, "max_storage_gb": 500},
            "pricing": {"per_vcpu_hr": 0.003, "per_gb_ram_hr": 0.002, "per_gb_storage_hr": 0.0001},
            "network_features": {"dedicated_ip_available": True},
        }],
    }  # fmt: skip
    [offer] = td._location_offers(location)
    assert offer.storage_price_per_gb_hour == Decimal("0.0001")
    assert (offer.disk_gb_default, offer.max_disk_gb) == (100, 500)
