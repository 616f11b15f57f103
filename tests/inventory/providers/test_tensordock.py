"""TensorDock v2 adapter against the constructed fixtures (shared/providers/fixtures)."""

from __future__ import annotations

import copy
import json
import shlex
from decimal import Decimal

import pytest
import responses
from responses import matchers

from inventory.providers.base import (
    FEATURE_LABEL_LOOKUP,
    FEATURE_SSH_KEY_AT_CREATE,
    AuthFailed,
    CreateRequest,
    InsufficientFunds,
    NotFound,
    OfferFilter,
    OfferUnavailable,
    PermanentError,
    RateLimited,
    Transient,
)
from inventory.providers.tensordock.adapter import (
    DEFAULT_RAM_GB_PER_GPU,
    DEFAULT_STORAGE_GB,
    DEFAULT_VCPUS_PER_GPU,
    DRIVER_REPAIR,
    TensorDock,
)

from .conftest import API_KEY, TD_URL, add_variant, load

AUTH = matchers.header_matcher({"Authorization": f"Bearer {API_KEY}"})
DALLAS = "5c2b6f1e-8a4d-4b7e-9c3f-1d2e3f4a5b6c"
LABEL = "shopper-6f1c2e0a-3b7d-4c9e-9a51-0d2f8b7e4c13"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH0x shopper@example"
INSTANCE = "b7e4c13a-2f8b-4d0e-9a51-6f1c2e0a3b7d"


def test_class_attributes():
    assert TensorDock.name == "tensordock" and TensorDock.display_name == "TensorDock"
    assert TensorDock.features == {FEATURE_SSH_KEY_AT_CREATE, FEATURE_LABEL_LOOKUP}
    assert TensorDock.min_interval == 0.6
    assert (DEFAULT_VCPUS_PER_GPU, DEFAULT_RAM_GB_PER_GPU, DEFAULT_STORAGE_GB) == (4, 16, 100)


# ------------------------------------------------------------------------------------- offers
def test_offers_from_locations(rsps, td):
    rsps.add(
        responses.GET,
        TD_URL + "/locations",
        json=load("tensordock_v2_locations.json"),
        match=[AUTH, matchers.query_string_matcher("")],  # the token never goes into the URL
    )
    offers = {o.provider_offer_id: o for o in td.search_offers()}
    # One offer per count in (1, 2, 4, 8) up to max_count; the A6000 has max_count 0 (no stock),
    # and Winnipeg has no dedicated IP (every create there fails, TD-NOPUBLICIP): skipped.
    assert len(offers) == 17
    assert not any("rtxa6000" in k or "3090" in k for k in offers)
    assert {k for k in offers if k.startswith(DALLAS + ":a100-sxm4-80gb:")} == {
        f"{DALLAS}:a100-sxm4-80gb:{n}" for n in (1, 2, 4)
    }

    h100 = offers[f"{DALLAS}:h100-sxm5-80gb:1"]
    assert (h100.provider, h100.gpu_type, h100.gpu_count, h100.vram_gb) == (
        "tensordock",
        "H100 SXM 80GB",
        1,
        80,
    )
    # price_per_hr is PER GPU; vCPU, RAM and storage are billed on top:
    # 2.25 + 0.003*4 + 0.002*16 + 0.00005*100 = 2.299
    assert h100.price_per_hour == Decimal("2.2990") and isinstance(h100.price_per_hour, Decimal)
    assert (h100.cpu_cores, h100.ram_gb, h100.disk_gb) == (4, 16, 100)
    assert h100.location == "Dallas, Texas, United States"
    assert h100.host == DALLAS  # the location id: confidence falls back to it (issue 15)
    assert h100.reliability is None and h100.cuda_version == "" and h100.driver_version == ""
    # 8 GPUs: 2.25*8 + 0.003*32 + 0.002*128 + 0.00005*100 = 18.357 (whole machine).
    assert offers[f"{DALLAS}:h100-sxm5-80gb:8"].price_per_hour == Decimal("18.3570")
    frankfurt = offers["7f6e5d4c-3b2a-4190-8f7e-6d5c4b3a2918:h100-sxm5-80gb:1"]
    assert frankfurt.price_per_hour == Decimal("2.5130")  # its own per-resource prices
    assert frankfurt.gpu_type == h100.gpu_type
    names = {o.gpu_type for o in offers.values()}
    assert names == {
        "H100 SXM 80GB",
        "A100 SXM4 80GB",
        "A100 PCIE 80GB",
        "RTX 4090 24GB",
        "L40 48GB",
    }


def test_offers_tolerate_nulls_caps_and_missing_prices(rsps, td):
    body = load("tensordock_v2_locations.json")
    winnipeg = copy.deepcopy(body["data"]["locations"][2])
    winnipeg.update(stateprovince=None, city=" Winnipeg ")
    for gpu in winnipeg["gpus"]:
        gpu["network_features"]["dedicated_ip_available"] = True
    winnipeg["gpus"][0]["resources"]["max_vcpus"] = 6  # caps the 2x and 4x configs
    winnipeg["gpus"][1]["price_per_hr"] = None  # a price we cannot compute: skipped
    rsps.add(responses.GET, TD_URL + "/locations", json={"data": {"locations": [winnipeg]}})
    offers = {o.provider_offer_id: o for o in td.search_offers()}
    loc = winnipeg["id"]
    assert set(offers) == {
        f"{loc}:geforcertx3090-pcie-24gb:1",
        f"{loc}:geforcertx3090-pcie-24gb:2:6:32",  # the id carries the capped config it priced
        f"{loc}:geforcertx3090-pcie-24gb:4:6:64",
    }
    capped = offers[f"{loc}:geforcertx3090-pcie-24gb:2:6:32"]
    assert capped.location == "Winnipeg, Canada" and capped.cpu_cores == 6
    assert capped.price_per_hour == Decimal("0.4870")  # 0.2*2 + 0.003*6 + 0.002*32 + 0.005 = 0.487
    assert TensorDock.parse_offer_id(capped.provider_offer_id) == (loc, "geforcertx3090-pcie-24gb", 2, 6, 32)


def test_offer_filter(rsps, td):
    rsps.add(responses.GET, TD_URL + "/locations", json=load("tensordock_v2_locations.json"))
    offers = td.search_offers(OfferFilter(min_gpus=4, min_vram_gb=48, max_price=Decimal("10")))
    assert sorted(o.provider_offer_id for o in offers) == [
        f"{DALLAS}:a100-sxm4-80gb:4",
        f"{DALLAS}:h100-sxm5-80gb:4",
    ]


def test_offers_unknown_shape_raises(rsps, td):
    rsps.add(responses.GET, TD_URL + "/locations", json={"data": {"hostnodes": []}})
    with pytest.raises(PermanentError):
        td.search_offers()


# ------------------------------------------------------------------------------------- create
def _request(**kw) -> CreateRequest:
    args = dict(offer_id=f"{DALLAS}:geforcertx4090-pcie-24gb:1", label=LABEL, ssh_public_key=KEY)
    return CreateRequest(**{**args, **kw})


def _expected_body() -> dict:
    body = copy.deepcopy(load("tensordock_v2_create_instance.json")["_request_example"]["json"])
    # The fixture's example rents 8 vCPU / 32 GB; our fixed per-GPU default is 4 / 16.
    body["data"]["attributes"]["resources"].update(vcpu_count=4, ram_gb=16)
    # After the keys, the driver repair (FIELD_NOTES TD-NODRIVER, TD-DPKGLOCK).
    body["data"]["attributes"]["cloud_init"]["runcmd"].append(
        f"bash -c {shlex.quote(DRIVER_REPAIR)} >> /root/shopper-driver-repair.log 2>&1"
    )
    return body


def test_create_sends_the_working_recipe(rsps, td):
    fx = load("tensordock_v2_create_instance.json")
    ex = fx["_request_example"]
    add_variant(
        rsps,
        ex["method"],
        ex["url"],
        fx["success"],
        match=[AUTH, matchers.json_params_matcher(_expected_body(), strict_match=True)],
    )
    assert td.create_instance(_request()) == INSTANCE


def test_create_accepts_201_and_runs_onstart_after_the_key(rsps, td):
    v = load("tensordock_v2_create_instance.json")["success_201_creating"]
    add_variant(rsps, responses.POST, TD_URL + "/instances", v)
    request = _request(
        onstart="echo hi\nstart-agent", env={"SHOPPER_TOKEN": "a b", "-p 8080:8080": "1"}, disk_gb=200
    )
    assert td.create_instance(request) == INSTANCE
    sent = json.loads(rsps.calls[0].request.body)["data"]["attributes"]
    runcmd = sent["cloud_init"]["runcmd"]
    assert "/root/.ssh/authorized_keys" in runcmd[1] and "/home/user/.ssh/authorized_keys" in runcmd[2]
    assert "dpkg --configure -a" in runcmd[3] and "shopper-driver-repair.log" in runcmd[3]  # TD-NODRIVER
    assert runcmd[4] == "bash -c 'export SHOPPER_TOKEN='\"'\"'a b'\"'\"'\necho hi\nstart-agent'"
    assert sent["resources"]["storage_gb"] == 200
    assert sent["image"] == "ubuntu2204"


@pytest.mark.parametrize(
    ("variant", "error"),
    [
        ("no_nodes_in_body_200", OfferUnavailable),  # HTTP 200 + {"status": 400, "error": ...}
        ("validation_error_array", PermanentError),
        ("insufficient_balance", InsufficientFunds),
        ("no_capacity", OfferUnavailable),
        ("unauthorized", AuthFailed),
        ("rate_limited", RateLimited),
    ],
)
def test_create_errors(rsps, td, variant, error):
    v = load("tensordock_v2_create_instance.json")[variant]
    add_variant(rsps, responses.POST, TD_URL + "/instances", v)
    with pytest.raises(error) as exc:
        td.create_instance(_request())
    assert type(exc.value) is error and API_KEY not in str(exc.value)
    if variant == "validation_error_array":
        assert "SSH port (22) must be forwarded for Ubuntu VMs" in str(exc.value)
    if variant == "no_nodes_in_body_200":
        assert "No available nodes found" in str(exc.value)


def test_create_rejects_bad_offer_ids_and_missing_ids(rsps, td):
    with pytest.raises(PermanentError):
        td.create_instance(_request(offer_id="not-an-offer"))
    rsps.add(responses.POST, TD_URL + "/instances", json={"data": {"type": "virtualmachine"}})
    with pytest.raises(PermanentError):
        td.create_instance(_request())


# ------------------------------------------------------------------------------------- get
@pytest.mark.parametrize(
    ("variant", "host", "port", "price"),
    [
        ("documented_flat", "206.168.81.14", 20001, Decimal("0.4630")),
        ("data_wrapped", "206.168.81.14", 20001, Decimal("0.4630")),
        ("dedicated_ip_empty_forwards", "174.94.145.71", 22, Decimal("0.2730")),
    ],
)
def test_get_instance(rsps, td, variant, host, port, price):
    v = load("tensordock_v2_instance_detail.json")[variant]
    add_variant(rsps, responses.GET, f"{TD_URL}/instances/{INSTANCE}", v, match=[AUTH])
    inst = td.get_instance(INSTANCE)
    assert (inst.provider, inst.instance_id, inst.label, inst.state) == (
        "tensordock",
        INSTANCE,
        LABEL,
        "running",
    )
    assert (inst.ssh_host, inst.ssh_port, inst.ssh_user, inst.price_per_hour) == (host, port, "root", price)


def test_get_instance_starting_without_ip(rsps, td):
    v = load("tensordock_v2_instance_detail.json")["starting_no_ip"]
    add_variant(rsps, responses.GET, f"{TD_URL}/instances/x", v)
    inst = td.get_instance("x")
    assert (inst.state, inst.ssh_host, inst.ssh_port, inst.price_per_hour) == ("booting", "", None, None)


@pytest.mark.parametrize(
    "variant",
    [
        load("tensordock_v2_instance_detail.json")["not_found"],
        {"status": 200, "body": {"status": 404, "error": "Instance not found"}},
    ],
)
def test_get_instance_not_found(rsps, td, variant):
    add_variant(rsps, responses.GET, f"{TD_URL}/instances/x", variant)
    with pytest.raises(NotFound):
        td.get_instance("x")


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("creating", "pending"),
        ("Pending", "pending"),
        ("provisioning", "pending"),
        ("starting", "booting"),
        ("RUNNING", "running"),
        ("stopping", "stopped"),
        ("Stopped", "stopped"),
        (" StoppedDisassociated ", "stopped"),
        ("deleting", "deleting"),
        ("deleted", "deleting"),
        ("terminated", "deleting"),
        ("error", "failed"),
    ],
)
def test_status_map(td, status, state):
    inst = td._instance({"id": "i", "name": "n", "status": status})
    assert inst.state == state and inst.raw_status == status.strip().lower()


# ------------------------------------------------------------------------------------- list
@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        (
            "documented_shape",
            {
                INSTANCE: "running",
                "0c9d8e7f-6a5b-4c3d-9e2f-1a0b9c8d7e6f": "booting",
                "5e4d3c2b-1a09-4f8e-8d7c-6b5a49382716": "stopped",  # "Stopped"
            },
        ),
        ("data_array_shape", {INSTANCE: "running"}),
        ("getting_started_shape", {INSTANCE: "running"}),
    ],
)
def test_list_all_three_shapes(rsps, td, shape, expected):
    add_variant(rsps, responses.GET, TD_URL + "/instances", load("tensordock_v2_instances.json")[shape])
    found = td.list_instances("shopper-")
    assert {i.instance_id: i.state for i in found} == expected  # "my-manual-box" is not ours
    if shape == "data_array_shape":
        assert (found[0].ssh_host, found[0].price_per_hour) == ("206.168.81.14", Decimal("0.4630"))


def test_list_exact_label_and_empty(rsps, td):
    add_variant(
        rsps, responses.GET, TD_URL + "/instances", load("tensordock_v2_instances.json")["documented_shape"]
    )
    assert [i.label for i in td.list_instances(LABEL)] == [LABEL]
    rsps.add(responses.GET, TD_URL + "/instances", json={"data": []})
    assert td.list_instances("shopper-") == []


@pytest.mark.parametrize(
    "body", [{"data": {}}, {"data": None}, {"something": "else"}, {"status": 500, "error": "oops"}, []]
)
def test_list_unknown_shape_raises(rsps, td, body):
    """Safety rule 5: never read an unrecognised answer as "no instances"."""
    rsps.add(responses.GET, TD_URL + "/instances", json=body)
    with pytest.raises(PermanentError):
        td.list_instances("shopper-")


# ------------------------------------------------------------------------------------- destroy
def test_destroy(rsps, td):
    fx = load("tensordock_v2_delete.json")
    ex = fx["_request_example"]
    add_variant(rsps, ex["method"], ex["url"], fx["success"], match=[AUTH])
    assert td.destroy_instance(INSTANCE) is None


@pytest.mark.parametrize(
    ("variant", "error"),
    [
        (load("tensordock_v2_delete.json")["not_found"], NotFound),
        ({"status": 503, "text": "upstream unavailable"}, Transient),
        ({"status": 200, "body": {"status": 400, "error": "cannot delete while creating"}}, PermanentError),
    ],
)
def test_destroy_errors(rsps, td, variant, error):
    add_variant(rsps, responses.DELETE, f"{TD_URL}/instances/{INSTANCE}", variant)
    with pytest.raises(error) as exc:
        td.destroy_instance(INSTANCE)
    assert type(exc.value) is error and API_KEY not in str(exc.value)


def test_attach_ssh_key_is_not_supported(td):
    with pytest.raises(PermanentError):
        td.attach_ssh_key(INSTANCE, KEY)
