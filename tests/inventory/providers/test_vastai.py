"""Vast.ai adapter against the constructed fixtures (shared/providers/fixtures)."""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import pytest
import responses
from responses import matchers

from inventory.providers.base import (
    FEATURE_ATTACH_SSH_KEY,
    FEATURE_LABEL_LOOKUP,
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
from inventory.providers.vastai.adapter import DEFAULT_DISK_GB, DEFAULT_IMAGE, VastAI, onstart_script

from .conftest import API_KEY, VAST_URL, add_variant, load

BUNDLES = VAST_URL + "/api/v0/bundles/"
KEY = "ssh-ed25519 AAAA shopper@example"
LABEL = "shopper-6f1c2e0a-3b7d-4c9e-9a51-0d2f8b7e4c13"
AUTH = matchers.header_matcher({"Authorization": f"Bearer {API_KEY}"})
DEFAULT_QUERY = {
    "verified": {"eq": True},
    "external": {"eq": False},
    "rentable": {"eq": True},
    "rented": {"eq": False},
    "type": "on-demand",
    "allocated_storage": DEFAULT_DISK_GB,
    "limit": 5000,
    "order": [["id", "asc"]],
}


def add_search(rsps, body, query=None, *, method=responses.POST, url=BUNDLES, match=()):
    """The first page (strictly matched when ``query`` is given) and the empty page after it:
    search pages by id until a page brings nothing new (FIELD_NOTES VA-LISTING)."""
    first = [*match, matchers.json_params_matcher(query, strict_match=True)] if query else list(match)
    rsps.add(method, url, json=body, match=first)
    if query is not None:
        last = max(o["id"] for o in body["offers"] if isinstance(o, dict))
        rsps.add(
            method,
            url,
            json={"offers": []},
            match=[matchers.json_params_matcher({**query, "id": {"gt": last}}, strict_match=True)],
        )


def query_of(call) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(call.request.url).query).items()}


def by_id(offers):
    return {o.provider_offer_id: o for o in offers}


def test_class_attributes():
    assert VastAI.name == "vastai" and VastAI.display_name == "Vast.ai"
    assert VastAI.features == {FEATURE_ATTACH_SSH_KEY, FEATURE_LABEL_LOOKUP}
    assert VastAI.min_interval == 1.0 and DEFAULT_DISK_GB == 10


# ------------------------------------------------------------------------------------- search
def test_search_request_and_normalization(rsps, vast):
    add_search(rsps, load("vastai_offers_search.json"), DEFAULT_QUERY, match=[AUTH])
    offers = vast.search_offers()
    assert len(offers) == 28 and (vast.last_search_pages, vast.last_search_returned) == (2, 28)
    o = by_id(offers)

    rtx = o["21839684"]
    assert (rtx.provider, rtx.gpu_type, rtx.gpu_count, rtx.vram_gb) == ("vastai", "RTX 4090 24GB", 1, 24)
    # dph_total (0.293778) includes storage at allocated_storage=10: dph_base 0.291 + 0.2*10/720.
    assert rtx.price_per_hour == Decimal("0.2938") and isinstance(rtx.price_per_hour, Decimal)
    assert rtx.location == "Bavaria, DE" and rtx.reliability == Decimal("0.9956")
    assert rtx.host == "9656"  # machine_id: confidence falls back to the machine (issue 15)
    # cpu_ram is MB for the whole machine: 132083 * 16 effective / 128 cores / 1000 -> 16 GB.
    assert (rtx.cpu_cores, rtx.ram_gb, rtx.disk_gb) == (16, 16, 122)
    assert (rtx.cuda_version, rtx.driver_version) == ("12.8", "570.133.07")

    # A100 40 GB and 80 GB share the name "A100 PCIE": gpu_ram (MB) tells them apart.
    assert o["21934857"].gpu_type == "A100 PCIE 40GB" and o["21934857"].vram_gb == 40
    assert o["21942679"].gpu_type == "A100 PCIE 80GB" and o["21942679"].vram_gb == 80
    assert o["21958436"].gpu_type == "A100 SXM4 80GB"
    assert o["21982300"].gpu_type == "H100 SXM 80GB"
    assert o["21911723"].vram_gb == 48  # L40S: 46068 MB snaps to 48
    # geolocation null -> "", and Vast's "Tesla V100" is canonical "V100".
    assert o["21831724"].location == "" and o["21831724"].gpu_type == "V100 32GB"
    # cpu_cores null: the offer is kept; the RAM share comes from gpu_frac (1.0: the whole machine).
    assert o["21824168"].cpu_cores == 128 and o["21824168"].ram_gb == 1056
    assert o["22006253"].reliability == Decimal("0.8714")
    assert o["22013927"].cuda_version == "12.2" and o["22013927"].driver_version == "535.183.01"
    assert o["21998703"].price_per_hour == Decimal("16.4042")


def test_search_skips_unusable_offers_and_strips_strings(rsps, vast):
    base = load("vastai_offers_search.json")["offers"][5]
    variants = [
        {"id": 1, "gpu_name": ""},
        {"id": 2, "gpu_name": None},
        {"id": 3, "rented": True},
        {"id": 4, "rentable": False},
        {"id": 5, "num_gpus": 0},
        {"id": 6, "dph_total": None},
        {"id": 7, "gpu_name": "  RTX 4090 \n", "geolocation": " Ohio, US\n", "driver_version": "570.1 "},
    ]
    offers = [{**base, **v} for v in variants] + ["garbage"]
    rsps.add(responses.POST, BUNDLES, json={"offers": offers})
    [kept] = vast.search_offers()
    assert kept.provider_offer_id == "7"
    assert (kept.gpu_type, kept.location, kept.driver_version) == ("RTX 4090 24GB", "Ohio, US", "570.1")


def test_search_filter_goes_to_the_server_in_mb_and_is_rechecked(rsps, vast):
    q = {
        **DEFAULT_QUERY,
        "num_gpus": {"gte": 2},
        "gpu_ram": {"gte": 44640},  # 48 GB * 1000 MB, less the 7 % snapping tolerance
        "dph_total": {"lte": 2.0},
    }
    add_search(rsps, load("vastai_offers_search.json"), q)
    offers = vast.search_offers(OfferFilter(min_gpus=2, min_vram_gb=48, max_price=Decimal("2")))
    assert sorted(o.provider_offer_id for o in offers) == ["21903226", "21919637", "21950740"]


@pytest.mark.parametrize("gone", [404, 410])
def test_search_falls_back_to_search_asks(rsps, vast, gone):
    rsps.add(responses.POST, BUNDLES, json={"detail": "gone"}, status=gone)
    body = {"success": True, **load("vastai_offers_search.json")}
    asks = VAST_URL + "/api/v0/search/asks/"
    rsps.add(
        responses.PUT,
        asks,
        json=body,
        match=[matchers.json_params_matcher({"select_cols": ["*"], "q": DEFAULT_QUERY})],
    )
    last = {"select_cols": ["*"], "q": {**DEFAULT_QUERY, "id": {"gt": 22013927}}}
    rsps.add(responses.PUT, asks, json={"offers": []}, match=[matchers.json_params_matcher(last)])
    assert len(vast.search_offers()) == 28
    assert vast.search_method == ("PUT", "/api/v0/search/asks/")  # remembered for the next pages


def test_search_errors(rsps, vast):
    add_variant(rsps, responses.POST, BUNDLES, load("vastai_misc.json")["search_quota_exceeded"])
    with pytest.raises(RateLimited):
        vast.search_offers()
    assert len(rsps.calls) == 1  # a daily quota is not retried
    rsps.add(responses.POST, BUNDLES, json={"success": False, "error": "invalid_args"}, status=400)
    with pytest.raises(PermanentError):
        vast.search_offers()


# ------------------------------------------------------------------------------------- create
def _request(**kw) -> CreateRequest:
    ex = load("vastai_create_instance.json")["_request_example"]["json"]
    args = dict(
        offer_id="21839684",
        label=LABEL,
        ssh_public_key=KEY,
        image=ex["image"],
        disk_gb=ex["disk"],
        onstart=ex["onstart"],
        env=ex["env"],
    )
    return CreateRequest(**{**args, **kw})


def test_create_sends_the_documented_body(rsps, vast):
    fx = load("vastai_create_instance.json")
    ex = fx["_request_example"]
    add_variant(
        rsps,
        ex["method"],
        ex["url"],
        fx["success"],
        match=[
            AUTH,
            matchers.json_params_matcher(
                {**ex["json"], "onstart": onstart_script(KEY, ex["json"]["onstart"])}, strict_match=True
            ),
        ],
    )
    assert vast.create_instance(_request()) == "31234567"


def test_create_defaults_disk_and_image(rsps, vast):
    expected = {**load("vastai_create_instance.json")["_request_example"]["json"]}
    expected.update(image=DEFAULT_IMAGE, disk=DEFAULT_DISK_GB, env={}, onstart=onstart_script(KEY))
    rsps.add(
        responses.PUT,
        VAST_URL + "/api/v0/asks/21839684/",
        json={"success": True, "new_contract": 5},
        match=[matchers.json_params_matcher(expected, strict_match=True)],
    )
    assert vast.create_instance(_request(image="", disk_gb=None, env={}, onstart="")) == "5"


@pytest.mark.parametrize(
    ("variant", "error"),
    [
        ("offer_gone", OfferUnavailable),  # 410 no_such_ask
        ("offer_gone_400", OfferUnavailable),  # 400 no_such_ask (seed, live)
        ("offer_not_found", OfferUnavailable),  # 404
        ("insufficient_credit", InsufficientFunds),
        ("invalid_args", PermanentError),
        ("unauthorized", AuthFailed),
        ("rate_limited", RateLimited),  # plain text 429
    ],
)
def test_create_errors(rsps, vast, variant, error):
    v = load("vastai_create_instance.json")[variant]
    add_variant(rsps, responses.PUT, VAST_URL + "/api/v0/asks/21839684/", v)
    with pytest.raises(error) as exc:
        vast.create_instance(_request())
    assert type(exc.value) is error
    assert exc.value.instance_id is None
    assert API_KEY not in str(exc.value) and API_KEY not in exc.value.message
    if variant == "rate_limited":
        assert len(rsps.calls) == 1 + vast.max_retries_on_429


def test_create_404_without_code_is_offer_unavailable(rsps, vast):
    rsps.add(responses.PUT, VAST_URL + "/api/v0/asks/1/", json={"msg": "Offer not found"}, status=404)
    with pytest.raises(OfferUnavailable):
        vast.create_instance(_request(offer_id="1"))


def test_create_200_success_false_with_new_contract_reports_the_instance(rsps, vast):
    v = load("vastai_create_instance.json")["created_but_failed"]
    add_variant(rsps, responses.PUT, VAST_URL + "/api/v0/asks/21839684/", v)
    with pytest.raises(PermanentError) as exc:
        vast.create_instance(_request())
    assert exc.value.instance_id == "31240999"  # the caller must destroy it
    assert "bid_too_low" in str(exc.value)


def test_create_200_without_new_contract_is_an_error(rsps, vast):
    rsps.add(responses.PUT, VAST_URL + "/api/v0/asks/21839684/", json={"success": True})
    with pytest.raises(PermanentError) as exc:
        vast.create_instance(_request())
    assert exc.value.instance_id is None


# ------------------------------------------------------------------------------------- get
def test_expired_session_404_is_auth_failure_not_not_found(rsps, vast):
    body = {"success": False, "msg": "Session expired. Please log in again."}
    rsps.add(responses.GET, VAST_URL + "/api/v0/instances/9/", json=body, status=404)
    rsps.add(responses.DELETE, VAST_URL + "/api/v0/instances/9/", json=body, status=404)
    with pytest.raises(AuthFailed):
        vast.get_instance("9")
    with pytest.raises(AuthFailed):
        vast.destroy_instance("9")


def test_get_instance(rsps, vast):
    v = load("vastai_instance_get.json")["found"]
    add_variant(
        rsps,
        responses.GET,
        VAST_URL + "/api/v0/instances/31234567/",
        v,
        match=[AUTH, matchers.query_param_matcher({"owner": "me"})],
    )
    inst = vast.get_instance("31234567")
    assert (inst.instance_id, inst.label, inst.state, inst.raw_status) == (
        "31234567",
        LABEL,
        "running",
        "running",
    )
    # Direct SSH: public_ipaddr + HostPort (a string) of ports["22/tcp"].
    assert (inst.ssh_host, inst.ssh_port, inst.ssh_user) == ("142.112.39.215", 41201, "root")
    assert inst.price_per_hour == Decimal("0.3021")


@pytest.mark.parametrize(
    "variant", [{"status": 200, "body": {"instances": None}}, {"status": 404, "body": {"msg": "x"}}]
)
def test_get_instance_gone(rsps, vast, variant):
    add_variant(rsps, responses.GET, VAST_URL + "/api/v0/instances/9/", variant)
    with pytest.raises(NotFound):
        vast.get_instance("9")


def test_get_instance_fixture_gone_variant(rsps, vast):
    add_variant(
        rsps, responses.GET, VAST_URL + "/api/v0/instances/9/", load("vastai_instance_get.json")["gone"]
    )
    with pytest.raises(NotFound):
        vast.get_instance("9")


# ------------------------------------------------------------------------------------- list
def test_list_one_page_filters_by_prefix_and_normalizes(rsps, vast):
    rsps.add(responses.GET, VAST_URL + "/api/v1/instances/", json=load("vastai_instances.json"), match=[AUTH])
    found = {i.instance_id: i for i in vast.list_instances("shopper-")}
    assert set(found) == {"31201111", "31229876", "31234567", "31240002", "31240117", "31240555"}
    # The CLI's query encoding: JSON values, quote_plus-escaped; strings and ints as such.
    assert query_of(rsps.calls[0]) == {
        "select_filters": "{}",
        "order_by": json.dumps([{"col": "id", "dir": "asc"}]),
        "limit": "25",
    }
    states = {k: (v.state, v.raw_status) for k, v in found.items()}
    assert states == {
        "31201111": ("stopped", "stopped"),
        "31229876": ("failed", "exited"),
        "31234567": ("running", "running"),
        "31240002": ("booting", "loading"),
        "31240117": ("pending", ""),  # actual_status null: provisioning
        "31240555": ("failed", "created"),  # created + "OCI runtime create failed"
    }
    # ports null / {}: the proxy endpoint; no ssh info yet: nothing.
    assert (found["31229876"].ssh_host, found["31229876"].ssh_port) == ("ssh2.vast.ai", 29876)
    assert (found["31240002"].ssh_host, found["31240002"].ssh_port) == ("ssh9.vast.ai", 40002)
    assert (found["31240117"].ssh_host, found["31240117"].ssh_port) == ("", None)
    assert found["31229876"].status_message == "Error: container exited with code 137 (OOMKilled)"


def test_list_label_null_and_trailing_space_ip(rsps, vast):
    rsps.add(responses.GET, VAST_URL + "/api/v1/instances/", json=load("vastai_instances.json"))
    unlabeled = next(i for i in vast.list_instances("") if i.instance_id == "31230001")
    assert unlabeled.label is None
    assert (unlabeled.ssh_host, unlabeled.ssh_port) == ("89.187.159.46", 52012)  # "89.187.159.46 "


def test_list_follows_after_token(rsps, vast):
    paged = load("vastai_instances_paged.json")
    url = VAST_URL + "/api/v1/instances/"
    rsps.add(responses.GET, url, json=paged["page1"])
    rsps.add(responses.GET, url, json=paged["page2"])
    found = vast.list_instances("shopper-6f1c")
    assert [i.instance_id for i in found] == ["31234567"]
    assert "after_token" not in query_of(rsps.calls[0])
    assert query_of(rsps.calls[1])["after_token"] == paged["page1"]["next_token"]
    assert len(vast.session.calls) == 2


def test_list_all_pages_collects_everything(rsps, vast):
    paged = load("vastai_instances_paged.json")
    url = VAST_URL + "/api/v1/instances/"
    rsps.add(responses.GET, url, json=paged["page1"])
    rsps.add(responses.GET, url, json=paged["page2"])
    assert len(vast.list_instances("shopper-")) == 6


@pytest.mark.parametrize(
    ("second", "error"),
    [
        ({"status": 500, "body": {"msg": "boom"}}, Transient),
        ({"status": 200, "body": {"success": False, "msg": "nope"}}, PermanentError),
        ({"status": 200, "body": {"success": True, "next_token": None}}, PermanentError),
    ],
)
def test_list_failure_on_any_page_raises(rsps, vast, second, error):
    """Safety rule 5: a failed page never reads as "no (more) instances"."""
    url = VAST_URL + "/api/v1/instances/"
    rsps.add(responses.GET, url, json=load("vastai_instances_paged.json")["page1"])
    add_variant(rsps, responses.GET, url, second)
    with pytest.raises(error):
        vast.list_instances("shopper-")


@pytest.mark.parametrize(
    ("status", "msg", "state"),
    [
        ("frozen", "", "stopped"),
        ("rebooting", "", "booting"),
        ("restarting", "", "booting"),
        ("unknown", "", "failed"),
        ("offline", "", "failed"),
        ("destroyed", "", "deleting"),
        ("created", "", "pending"),
        ("something-new", "", "pending"),
    ],
)
def test_status_map(vast, status, msg, state):
    raw = copy.deepcopy(load("vastai_instance_get.json")["found"]["body"]["instances"])
    raw.update(actual_status=status, status_msg=msg)
    assert vast._instance(raw).state == state


def test_ssh_proxy_for_jupyter_images_is_port_plus_one(vast):
    raw = copy.deepcopy(load("vastai_instance_get.json")["found"]["body"]["instances"])
    raw.update(ports={"22/tcp": None}, image_runtype="jupyter_direc ssh_direc ssh_proxy")
    inst = vast._instance(raw)
    assert (inst.ssh_host, inst.ssh_port) == ("ssh4.vast.ai", 34567)


# ------------------------------------------------------------------------------------- destroy
@pytest.mark.parametrize("variant", ["success", "success_minimal"])
def test_destroy(rsps, vast, variant):
    fx = load("vastai_destroy.json")
    ex = fx["_request_example"]
    add_variant(
        rsps, ex["method"], ex["url"], fx[variant], match=[AUTH, matchers.json_params_matcher(ex["json"])]
    )
    assert vast.destroy_instance("31234567") is None
    assert rsps.calls[0].request.body == b"{}"


@pytest.mark.parametrize(
    ("variant", "error"),
    [("not_found", NotFound), ("invalid_id", PermanentError), ("rate_limited", RateLimited)],
)
def test_destroy_errors(rsps, vast, variant, error):
    add_variant(
        rsps, responses.DELETE, VAST_URL + "/api/v0/instances/31234567/", load("vastai_destroy.json")[variant]
    )
    with pytest.raises(error) as exc:
        vast.destroy_instance("31234567")
    assert type(exc.value) is error and API_KEY not in str(exc.value)


def test_destroy_200_no_such_instance_is_not_found(rsps, vast):
    body = {"success": False, "error": "no_such_instance", "msg": "gone"}
    rsps.add(responses.DELETE, VAST_URL + "/api/v0/instances/7/", json=body)
    with pytest.raises(NotFound):
        vast.destroy_instance("7")


# ------------------------------------------------------------------------------------- ssh key
def test_attach_ssh_key(rsps, vast):
    fx = load("vastai_misc.json")["attach_ssh"]
    ex = fx["_request_example"]
    add_variant(
        rsps, ex["method"], ex["url"], fx["success"], match=[AUTH, matchers.json_params_matcher(ex["json"])]
    )
    vast.attach_ssh_key("31234567", ex["json"]["ssh_key"] + "\n")
