"""Lambda Cloud API v1 adapter against the constructed fixtures (shared/providers/fixtures/lambda_v1_*,
RUNPOD_LAMBDA.md §2). Every test pins the requests sent: method, path, body and the Bearer header."""

from __future__ import annotations

import copy
import json
import shlex
import subprocess
import uuid
from decimal import Decimal

import pytest
import time_machine
from responses import matchers

from inventory.providers.base import (
    FEATURE_LABEL_LOOKUP,
    FEATURE_SSH_KEY_AT_CREATE,
    STATE_BOOTING,
    STATE_DELETING,
    STATE_FAILED,
    STATE_RUNNING,
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
from inventory.providers.lambdacloud.adapter import LAUNCH_INTERVAL, LambdaCloud, cents_to_dollars
from inventory.providers.lambdacloud.names import lambda_gpu_type
from inventory.providers.tensordock.names import tensordock_gpu_type
from inventory.providers.vastai.names import vast_gpu_type

from .conftest import API_KEY, FakeLimiter, RecordingSession, _assert_call_hygiene, add_variant, load

URL = "https://cloud.lambda.ai/api/v1"
OLD_URL = "https://cloud.lambdalabs.com/api/v1"
AUTH = matchers.header_matcher({"Authorization": f"Bearer {API_KEY}"})
LABEL = "shopper-6f1c2e0a-3b7d-4c9e-9a51-0d2f8b7e4c13"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH0x shopper@example"
VERIFY_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIVer verify@shopper"
INSTANCE = "0920582c7ff041399e34823a0be62549"
OUR_KEY_ID = "ab12cd34ef56ab12cd34ef56ab12cd34"


@pytest.fixture
def lam():
    session = RecordingSession()
    provider = LambdaCloud(base_url=URL, api_key=API_KEY, timeout=12.5, session=session)
    provider.limiter = FakeLimiter()
    provider.launch_limiter = FakeLimiter()
    yield provider
    _assert_call_hygiene(provider)


def variant(name: str, key: str):
    return copy.deepcopy(load(name)[key])


def keys_list(*extra: dict) -> dict:
    """The ssh-keys list fixture plus keys of ours."""
    body = variant("lambda_v1_ssh_keys.json", "list")
    body["body"]["data"].extend(extra)
    return body


def sent(lam, i: int) -> tuple[str, str, object]:
    call = lam.session.calls[i]
    return call["method"], call["url"], call.get("json")


def test_class_attributes(lam):
    assert LambdaCloud.name == "lambda" and LambdaCloud.display_name == "Lambda"
    assert LambdaCloud.features == {FEATURE_SSH_KEY_AT_CREATE, FEATURE_LABEL_LOOKUP}
    assert LambdaCloud.min_interval == 1.0 and LAUNCH_INTERVAL == 12.0  # 1 req/s; launch 1 per 12 s
    assert lam.supports(FEATURE_SSH_KEY_AT_CREATE) and not lam.supports("attach_ssh_key")
    assert lam.account_balance() is None  # the API has no balance route (§2.2)
    with pytest.raises(PermanentError):
        lam.attach_ssh_key(INSTANCE, KEY)


# ------------------------------------------------------------------------------------- offers
def test_offers_one_per_type_and_region_with_capacity(rsps, lam):
    add_variant(
        rsps, "GET", URL + "/instance-types", load("lambda_v1_instance_types.json")["success"], match=[AUTH]
    )
    offers = {o.provider_offer_id: o for o in lam.search_offers()}
    # Empty regions_with_capacity_available = sold out: no 8x A100 80GB, H100 PCIe or V100 offer.
    assert sorted(offers) == [
        "us-east-1:gpu_1x_a10",
        "us-east-1:gpu_1x_a100_sxm4",
        "us-east-1:gpu_1x_gh200",
        "us-midwest-1:gpu_8x_h100_sxm5",
        "us-west-1:gpu_1x_a10",
        "us-west-2:gpu_8x_h100_sxm5",
    ]
    h100 = offers["us-west-2:gpu_8x_h100_sxm5"]
    assert (h100.provider, h100.gpu_type, h100.gpu_count, h100.vram_gb) == ("lambda", "H100 SXM 80GB", 8, 80)
    # 2392 cents for the whole instance, storage included: exactly 23.92, a Decimal.
    assert h100.price_per_hour == Decimal("23.92") and isinstance(h100.price_per_hour, Decimal)
    assert (h100.cpu_cores, h100.ram_gb, h100.disk_gb) == (208, 1800, 24780)
    assert h100.location == "Arizona, USA" and h100.reliability is None
    # The disk is fixed per type and included: no other size is sold, none costs extra.
    assert (h100.storage_price_per_gb_hour, h100.disk_gb_default, h100.max_disk_gb) == (
        Decimal("0"),
        24780,
        24780,
    )
    a10 = offers["us-west-1:gpu_1x_a10"]
    assert (a10.gpu_type, a10.gpu_count, a10.price_per_hour) == ("A10 24GB", 1, Decimal("0.75"))
    assert offers["us-east-1:gpu_1x_a100_sxm4"].gpu_type == "A100 SXM4 40GB"
    assert offers["us-east-1:gpu_1x_gh200"].gpu_type == "GH200 SXM 96GB"  # gpu_specs.csv spelling
    assert offers["us-east-1:gpu_1x_gh200"].price_per_hour == Decimal("1.49")


def test_offer_filter(rsps, lam):
    add_variant(rsps, "GET", URL + "/instance-types", load("lambda_v1_instance_types.json")["success"])
    got = lam.search_offers(OfferFilter(min_gpus=2, min_vram_gb=80, max_price=Decimal("23.92")))
    assert {o.provider_offer_id for o in got} == {
        "us-west-2:gpu_8x_h100_sxm5",
        "us-midwest-1:gpu_8x_h100_sxm5",
    }


def test_offers_tolerate_bare_descriptions_big_counts_and_junk(rsps, lam):
    """3rd-party fixtures show descriptions without "(NN GB)" (§4.14); gpuhunt's one-digit count
    regex is not repeated; unpriceable entries are skipped, not fatal."""
    body = load("lambda_v1_instance_types.json")["success"]["body"]
    data = body["data"]
    bare = copy.deepcopy(data["gpu_8x_h100_sxm5"])
    bare["instance_type"].update(name="gpu_4x_h100_sxm5", description="8x H100", gpu_description="H100")
    big = copy.deepcopy(data["gpu_8x_a100_80gb_sxm4"])
    big["instance_type"].update(name="gpu_16x_a100_80gb_sxm4", description="16x A100 (80 GB SXM4)")
    big["instance_type"].pop("gpu_description")
    big["instance_type"]["specs"].pop("gpus")
    big["regions_with_capacity_available"] = [{"name": "us-south-2", "description": "Texas, USA"}]
    junk = copy.deepcopy(data["gpu_1x_a10"])
    junk["instance_type"].update(name="gpu_1x_junk", price_cents_per_hour="n/a")
    cpu = copy.deepcopy(data["gpu_1x_a10"])
    cpu["instance_type"].update(name="cpu_4x_general", description="CPU only", gpu_description="")
    cpu["instance_type"]["specs"]["gpus"] = 0
    data.update(gpu_4x_h100_sxm5=bare, gpu_16x=big, junk=junk, cpu=cpu, weird="not an object")
    rsps.add("GET", URL + "/instance-types", json=body)
    offers = {o.provider_offer_id: o for o in lam.search_offers()}
    assert offers["us-west-2:gpu_4x_h100_sxm5"].gpu_type == "H100 SXM 80GB"  # size from the table
    sixteen = offers["us-south-2:gpu_16x_a100_80gb_sxm4"]
    assert (sixteen.gpu_type, sixteen.gpu_count, sixteen.vram_gb) == ("A100 SXM4 80GB", 16, 80)
    assert not any("junk" in k or "cpu" in k for k in offers)


@pytest.mark.parametrize(
    ("description", "type_name", "expected"),
    [
        ("A100 (40 GB SXM4)", "", ("A100 SXM4 40GB", 40)),
        ("A100 (80 GB SXM4)", "", ("A100 SXM4 80GB", 80)),
        ("H100 (80 GB SXM5)", "", ("H100 SXM 80GB", 80)),
        ("H100 (80 GB PCIe)", "", ("H100 PCIE 80GB", 80)),
        ("A10 (24 GB PCIe)", "", ("A10 24GB", 24)),
        ("Tesla V100 (16 GB)", "", ("V100 16GB", 16)),
        ("GH200 (96 GB)", "", ("GH200 SXM 96GB", 96)),
        ("8x A100 (80 GB SXM4)", "", ("A100 SXM4 80GB", 80)),
        ("A10", "gpu_1x_a10", ("A10 24GB", 24)),
        ("A100", "gpu_8x_a100_80gb_sxm4", ("A100 SXM4 80GB", 80)),  # the type name's size wins
        ("8x H100", "gpu_8x_h100_sxm5", ("H100 SXM 80GB", 80)),
        ("Mystery", "", ("Mystery", 0)),
    ],
)
def test_lambda_gpu_names(description, type_name, expected):
    assert lambda_gpu_type(description, type_name) == expected


def test_names_group_with_the_other_providers():
    """One model on the menu: Lambda's name equals Vast's and TensorDock's for the same card."""
    assert lambda_gpu_type("A100 (80 GB SXM4)")[0] == vast_gpu_type("A100 SXM4", 81920)[0]
    assert lambda_gpu_type("A100 (80 GB SXM4)")[0] == tensordock_gpu_type("a100-sxm4-80gb")[0]
    assert lambda_gpu_type("H100 (80 GB SXM5)")[0] == vast_gpu_type("H100 SXM", 81559)[0]
    assert lambda_gpu_type("H100 (80 GB PCIe)")[0] == vast_gpu_type("H100 PCIE", 81559)[0]
    assert lambda_gpu_type("GH200 (96 GB)")[0] == vast_gpu_type("GH200 SXM", 98304)[0]
    assert lambda_gpu_type("Tesla V100 (16 GB)")[0] == vast_gpu_type("Tesla V100", 16384)[0]


@pytest.mark.parametrize(
    ("cents", "dollars"), [(129, "1.29"), (2392, "23.92"), (1, "0.01"), (0, "0"), ("75", "0.75")]
)
def test_cents_are_converted_exactly(cents, dollars):
    assert cents_to_dollars(cents) == Decimal(dollars)


@pytest.mark.parametrize("cents", [None, True, "x", -5, float("nan")])
def test_cents_junk_is_none(cents):
    assert cents_to_dollars(cents) is None


@pytest.mark.parametrize(
    ("key", "error"),
    [("unauthorized", AuthFailed), ("account_inactive", InsufficientFunds)],
)
def test_offers_errors(rsps, lam, key, error):
    add_variant(rsps, "GET", URL + "/instance-types", load("lambda_v1_instance_types.json")[key])
    with pytest.raises(error) as info:
        lam.search_offers()
    assert API_KEY not in info.value.message and type(info.value) is error
    if error is InsufficientFunds:
        assert "cannot be billed" in info.value.message and "global/account-inactive" in info.value.message


@pytest.mark.parametrize("body", [{"data": []}, {"instance_types": {}}, [], None])
def test_offers_unknown_shape_raises(rsps, lam, body):
    rsps.add("GET", URL + "/instance-types", json=body)
    with pytest.raises(PermanentError):
        lam.search_offers()


# ------------------------------------------------------------------------------------- create
def _launch_body(user_data: str) -> dict:
    return {
        "region_name": "us-east-1",
        "instance_type_name": "gpu_1x_a100_sxm4",
        "ssh_key_names": [LABEL],
        "file_system_names": [],
        "quantity": 1,
        "name": LABEL,
        "user_data": user_data,
    }


def _request(**kw) -> CreateRequest:
    fields = dict(
        offer_id="us-east-1:gpu_1x_a100_sxm4",
        label=LABEL,
        ssh_public_key=f"{KEY}\n{VERIFY_KEY}\n",
        onstart="exec /opt/agent",
        env={"SHOPPER_TOKEN": "tok en", "bad-name": "x"},
    )
    fields.update(kw)
    return CreateRequest(**fields)


def test_create_registers_the_rentals_key_then_launches(rsps, lam):
    req = _request()
    user_data = LambdaCloud.user_data(req.ssh_public_key, req.onstart, req.env)
    add_variant(rsps, "GET", URL + "/ssh-keys", keys_list(), match=[AUTH])
    rsps.add(
        "POST",
        URL + "/ssh-keys",
        json={"data": {"id": OUR_KEY_ID, "name": LABEL, "public_key": KEY}},
        match=[AUTH, matchers.json_params_matcher({"name": LABEL, "public_key": KEY})],
    )
    add_variant(
        rsps,
        "POST",
        URL + "/instance-operations/launch",
        load("lambda_v1_launch.json")["success"],
        match=[AUTH, matchers.json_params_matcher(_launch_body(user_data))],
    )
    assert lam.create_instance(req) == INSTANCE
    assert [c["method"] for c in lam.session.calls] == ["GET", "POST", "POST"]
    # The launch waited for its own slot (1 per 12 s) and the general one; the others only general.
    assert lam.launch_limiter.waits == 1 and lam.limiter.waits == 3


def test_user_data_installs_every_key_for_ubuntu_and_runs_the_agent():
    script = LambdaCloud.user_data(
        f"{KEY}\n\n{VERIFY_KEY}", "echo hi; exec /opt/agent", {"A": "x y", "bad-name": "z"}
    )
    assert script.startswith("#!/bin/bash\n")  # cloud-init runs a #! user_data at first boot
    for key in (KEY, VERIFY_KEY):
        assert f"echo {shlex.quote(key)} >> /home/ubuntu/.ssh/authorized_keys" in script
    assert script.endswith("\nbash -c " + shlex.quote("export A='x y'\necho hi; exec /opt/agent") + "\n")
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)  # valid shell as a whole
    assert "bad-name" not in script
    assert "bash -c" not in LambdaCloud.user_data(KEY)  # no onstart: keys only


def test_create_reuses_our_key_and_replaces_a_stale_one(rsps, lam):
    # A retried create finds its key already registered: no second add.
    add_variant(
        rsps, "GET", URL + "/ssh-keys", keys_list({"id": OUR_KEY_ID, "name": LABEL, "public_key": KEY})
    )
    add_variant(rsps, "POST", URL + "/instance-operations/launch", load("lambda_v1_launch.json")["success"])
    assert lam.create_instance(_request()) == INSTANCE
    assert [c["method"] for c in lam.session.calls] == ["GET", "POST"]
    assert lam.session.calls[1]["url"].endswith("/instance-operations/launch")


def test_create_replaces_a_key_of_that_name_with_another_key(rsps, lam):
    add_variant(
        rsps,
        "GET",
        URL + "/ssh-keys",
        keys_list({"id": OUR_KEY_ID, "name": LABEL, "public_key": "ssh-rsa OLD"}),
    )
    add_variant(
        rsps,
        "DELETE",
        f"{URL}/ssh-keys/{OUR_KEY_ID}",
        load("lambda_v1_ssh_keys.json")["delete_ok"],
        match=[AUTH],
    )
    rsps.add("POST", URL + "/ssh-keys", json={"data": {"id": "n", "name": LABEL, "public_key": KEY}})
    add_variant(rsps, "POST", URL + "/instance-operations/launch", load("lambda_v1_launch.json")["success"])
    assert lam.create_instance(_request()) == INSTANCE
    assert [c["method"] for c in lam.session.calls] == ["GET", "DELETE", "POST", "POST"]


def test_create_key_add_refused_but_present_goes_on(rsps, lam):
    """The duplicate-name error code is UNCONFIRMED (§4.12): after a refused add the list decides."""
    add_variant(rsps, "GET", URL + "/ssh-keys", keys_list())
    add_variant(rsps, "POST", URL + "/ssh-keys", load("lambda_v1_ssh_keys.json")["add_invalid"])
    add_variant(
        rsps, "GET", URL + "/ssh-keys", keys_list({"id": OUR_KEY_ID, "name": LABEL, "public_key": KEY})
    )
    add_variant(rsps, "POST", URL + "/instance-operations/launch", load("lambda_v1_launch.json")["success"])
    assert lam.create_instance(_request()) == INSTANCE


@pytest.mark.parametrize(
    "refusal",
    [{"status": 409, "body": {"error": {"code": "global/conflict", "message": "x"}}}, "add_invalid"],
)
def test_create_key_add_refused_and_absent_launches_nothing(rsps, lam, refusal):
    add_variant(rsps, "GET", URL + "/ssh-keys", keys_list())
    add_variant(
        rsps,
        "POST",
        URL + "/ssh-keys",
        refusal if isinstance(refusal, dict) else load("lambda_v1_ssh_keys.json")[refusal],
    )
    add_variant(rsps, "GET", URL + "/ssh-keys", keys_list())
    with pytest.raises(PermanentError):
        lam.create_instance(_request())
    assert not any("launch" in c["url"] for c in lam.session.calls)


@pytest.mark.parametrize(
    ("key", "error", "key_deleted"),
    [
        ("insufficient_capacity", OfferUnavailable, True),
        ("quota_exceeded", PermanentError, True),
        ("invalid_parameters", PermanentError, True),
        ("file_system_in_wrong_region", PermanentError, True),
        ("ssh_key_not_found", PermanentError, True),  # a 404 on launch is not "instance gone"
        ("account_inactive", InsufficientFunds, True),
        ("invalid_billing_address", InsufficientFunds, True),
        ("unauthorized", AuthFailed, True),
        ("provider_unavailable", Transient, False),  # may have launched: the key stays
        ("internal_error", Transient, False),
    ],
)
def test_launch_errors(rsps, lam, key, error, key_deleted):
    add_variant(
        rsps, "GET", URL + "/ssh-keys", keys_list({"id": OUR_KEY_ID, "name": LABEL, "public_key": KEY})
    )
    add_variant(rsps, "POST", URL + "/instance-operations/launch", load("lambda_v1_launch.json")[key])
    if key_deleted:  # refused: nothing was created, so the rental's key goes at once
        add_variant(
            rsps, "GET", URL + "/ssh-keys", keys_list({"id": OUR_KEY_ID, "name": LABEL, "public_key": KEY})
        )
        add_variant(
            rsps, "DELETE", f"{URL}/ssh-keys/{OUR_KEY_ID}", load("lambda_v1_ssh_keys.json")["delete_ok"]
        )
    with pytest.raises(error) as info:
        lam.create_instance(_request())
    assert type(info.value) is error
    assert not isinstance(info.value, NotFound)
    assert API_KEY not in info.value.message and "tok en" not in info.value.message.replace("\\n", "")


def test_launch_error_with_a_provider_code_is_transient_whatever_the_status(rsps, lam):
    add_variant(
        rsps, "GET", URL + "/ssh-keys", keys_list({"id": OUR_KEY_ID, "name": LABEL, "public_key": KEY})
    )
    rsps.add(
        "POST",
        URL + "/instance-operations/launch",
        status=400,
        json={"error": {"code": "provider/internal-unavailable", "message": "Provider unavailable"}},
    )
    with pytest.raises(Transient):
        lam.create_instance(_request())


def test_launch_429_backs_off_the_launch_budget_only_then_succeeds(rsps, lam):
    add_variant(
        rsps, "GET", URL + "/ssh-keys", keys_list({"id": OUR_KEY_ID, "name": LABEL, "public_key": KEY})
    )
    limited = load("lambda_v1_launch.json")["rate_limited"]
    add_variant(rsps, "POST", URL + "/instance-operations/launch", limited)  # no Retry-After (GUESS)
    add_variant(
        rsps, "POST", URL + "/instance-operations/launch", {**limited, "headers": {"Retry-After": "7"}}
    )
    add_variant(rsps, "POST", URL + "/instance-operations/launch", load("lambda_v1_launch.json")["success"])
    assert lam.create_instance(_request()) == INSTANCE
    assert lam.launch_limiter.penalties == [None, 7.0]
    assert lam.limiter.penalties == []  # terminates are not held up by launch throttling
    assert lam.launch_limiter.waits == 3


def test_launch_429_that_persists_is_rate_limited(rsps, lam):
    add_variant(
        rsps, "GET", URL + "/ssh-keys", keys_list({"id": OUR_KEY_ID, "name": LABEL, "public_key": KEY})
    )
    for _ in range(lam.max_retries_on_429 + 1):
        add_variant(
            rsps, "POST", URL + "/instance-operations/launch", load("lambda_v1_launch.json")["rate_limited"]
        )
    with pytest.raises(RateLimited):
        lam.create_instance(_request())  # transient: the key stays for the label lookup's instance


@pytest.mark.parametrize(
    "req",
    [
        _request(offer_id="gpu_1x_a100_sxm4"),
        _request(offer_id="us-east-1:gpu_1x_a100_sxm4/../x"),
        _request(offer_id=""),
        _request(label="shopper-" + "x" * 57),  # 65 chars: over Lambda's name limit
        _request(label=""),
        _request(ssh_public_key="  \n"),
        _request(onstart="x" * (1024 * 1024)),  # user_data over 1 MB
    ],
)
def test_create_bad_input_sends_nothing(rsps, lam, req):
    with pytest.raises(PermanentError) as info:
        lam.create_instance(req)
    assert not isinstance(info.value, Transient)
    assert lam.session.calls == []


def test_create_without_instance_id_is_transient(rsps, lam):
    add_variant(
        rsps, "GET", URL + "/ssh-keys", keys_list({"id": OUR_KEY_ID, "name": LABEL, "public_key": KEY})
    )
    rsps.add("POST", URL + "/instance-operations/launch", json={"data": {"instance_ids": []}})
    with pytest.raises(Transient):  # accepted: the caller must look the label up
        lam.create_instance(_request())


# ------------------------------------------------------------------------------------- read
def _get(rsps, body_variant):
    add_variant(rsps, "GET", f"{URL}/instances/{INSTANCE}", body_variant, match=[AUTH])


def test_get_active_is_running_as_ubuntu_on_22(rsps, lam):
    _get(rsps, load("lambda_v1_instance_get.json")["active"])
    inst = lam.get_instance(INSTANCE)
    assert (inst.provider, inst.instance_id, inst.label) == ("lambda", INSTANCE, LABEL)
    assert (inst.state, inst.raw_status) == (STATE_RUNNING, "active")
    assert (inst.ssh_host, inst.ssh_port, inst.ssh_user) == ("198.51.100.2", 22, "ubuntu")
    assert inst.ssh_endpoints == (("198.51.100.2", 22),)
    assert inst.price_per_hour == Decimal("1.29")


def test_get_reads_the_sandbox_ssh_port_and_keeps_22_without_it(rsps, lam):
    # The local sandbox cannot listen on 22 and names its port in a field the real API never sends.
    body = variant("lambda_v1_instance_get.json", "active")
    body["body"]["data"]["sandbox_ssh_port"] = 40222
    _get(rsps, body)
    inst = lam.get_instance(INSTANCE)
    assert (inst.ssh_host, inst.ssh_port) == ("198.51.100.2", 40222)
    assert inst.ssh_endpoints == (("198.51.100.2", 40222),) and inst.ports == {22: ("198.51.100.2", 40222)}
    assert "sandbox_ssh_port" not in load("lambda_v1_instance_get.json")["active"]["body"]["data"]


@pytest.mark.parametrize("ip", ["absent", None, ""])
def test_get_booting_without_ip(rsps, lam, ip):
    body = variant("lambda_v1_instance_get.json", "booting")
    if ip != "absent":
        body["body"]["data"]["ip"] = ip
    _get(rsps, body)
    inst = lam.get_instance(INSTANCE)
    assert inst.state == STATE_BOOTING and inst.ssh_host == "" and inst.ssh_port is None
    assert inst.ssh_endpoints == ()


def test_get_active_without_ip_is_still_booting(rsps, lam):
    body = variant("lambda_v1_instance_get.json", "active")
    body["body"]["data"]["ip"] = None
    _get(rsps, body)
    assert lam.get_instance(INSTANCE).state == STATE_BOOTING


@pytest.mark.parametrize(
    ("status", "state", "has_ssh"),
    [
        ("unhealthy", STATE_BOOTING, True),  # undocumented: the boot deadline fails it
        ("terminating", STATE_DELETING, False),
        ("preempted", STATE_FAILED, True),
        ("something-new", "pending", True),
    ],
)
def test_status_map(rsps, lam, status, state, has_ssh):
    body = variant("lambda_v1_instance_get.json", "unhealthy")
    body["body"]["data"]["status"] = status
    _get(rsps, body)
    inst = lam.get_instance(INSTANCE)
    assert inst.state == state and inst.raw_status == status
    assert bool(inst.ssh_host) is has_ssh
    if status == "unhealthy":
        assert inst.status_message == "health checks failing"


def test_get_terminating_fixture(rsps, lam):
    _get(rsps, load("lambda_v1_instance_get.json")["terminating"])
    assert lam.get_instance(INSTANCE).state == STATE_DELETING


def test_get_not_found_and_terminated_are_not_found(rsps, lam):
    _get(rsps, load("lambda_v1_instance_get.json")["not_found"])
    with pytest.raises(NotFound):
        lam.get_instance(INSTANCE)
    body = variant("lambda_v1_instance_get.json", "active")
    body["body"]["data"]["status"] = "terminated"
    _get(rsps, body)
    with pytest.raises(NotFound):
        lam.get_instance(INSTANCE)


def test_get_quotes_the_id_as_one_segment(rsps, lam):
    rsps.add("GET", URL + "/instances/a%2F..%2Fx", status=404, json={"error": {"code": "global/not-found"}})
    with pytest.raises(NotFound):
        lam.get_instance("a/../x")


def test_list_by_label_prefix(rsps, lam):
    add_variant(
        rsps, "GET", URL + "/instances", load("lambda_v1_instances_list.json")["success"], match=[AUTH]
    )
    got = {i.instance_id: i for i in lam.list_instances("shopper-")}
    # The unnamed instance is not ours (no label); the preempted one is, and failed.
    assert set(got) == {INSTANCE, "1a2b3c4d5e6f40718293a4b5c6d7e8f9", "aa00bb11cc22dd33ee44ff5566778899"}
    assert got["aa00bb11cc22dd33ee44ff5566778899"].state == STATE_FAILED
    assert got["1a2b3c4d5e6f40718293a4b5c6d7e8f9"].state == STATE_BOOTING


def test_list_exact_label_empty_and_everything(rsps, lam):
    add_variant(rsps, "GET", URL + "/instances", load("lambda_v1_instances_list.json")["success"])
    assert [i.instance_id for i in lam.list_instances(LABEL)] == [INSTANCE]
    add_variant(rsps, "GET", URL + "/instances", load("lambda_v1_instances_list.json")["success"])
    assert len(lam.list_instances("")) == 3  # "" = every labelled instance; unnamed never
    add_variant(rsps, "GET", URL + "/instances", load("lambda_v1_instances_list.json")["empty"])
    assert lam.list_instances("shopper-") == []


def test_list_leaves_out_terminated(rsps, lam):
    body = variant("lambda_v1_instances_list.json", "success")
    body["body"]["data"][0]["status"] = "terminated"
    add_variant(rsps, "GET", URL + "/instances", body)
    assert INSTANCE not in {i.instance_id for i in lam.list_instances("shopper-")}


@pytest.mark.parametrize("body", [{"data": {}}, {"instances": []}, None, []])
def test_list_unknown_shape_is_an_error_never_empty(rsps, lam, body):
    rsps.add("GET", URL + "/instances", json=body)
    with pytest.raises(PermanentError):
        lam.list_instances("shopper-")


@pytest.mark.parametrize(("status", "error"), [(401, AuthFailed), (500, Transient), (503, Transient)])
def test_list_failures_raise(rsps, lam, status, error):
    rsps.add("GET", URL + "/instances", status=status, json={"error": {"code": "global/x", "message": "m"}})
    with pytest.raises(error):
        lam.list_instances("shopper-")


def test_list_429_backs_off_the_general_budget(rsps, lam):
    add_variant(rsps, "GET", URL + "/instances", load("lambda_v1_launch.json")["rate_limited"])
    add_variant(rsps, "GET", URL + "/instances", load("lambda_v1_instances_list.json")["empty"])
    assert lam.list_instances("shopper-") == []
    assert lam.limiter.penalties == [None] and lam.launch_limiter.penalties == []


# ------------------------------------------------------------------------------------- destroy
def test_destroy_terminates_one_id_then_deletes_the_rentals_key(rsps, lam):
    fx = load("lambda_v1_terminate.json")
    # The fixture's instance carries key "shopper-3f9a…" (dstack's naming); ours is named by the
    # label: make the terminated instance carry it.
    fx["success"]["body"]["data"]["terminated_instances"][0]["ssh_key_names"] = [LABEL]
    add_variant(
        rsps,
        "POST",
        URL + "/instance-operations/terminate",
        fx["success"],
        match=[AUTH, matchers.json_params_matcher({"instance_ids": [INSTANCE]})],
    )
    add_variant(
        rsps, "GET", URL + "/ssh-keys", keys_list({"id": OUR_KEY_ID, "name": LABEL, "public_key": KEY})
    )
    add_variant(
        rsps,
        "DELETE",
        f"{URL}/ssh-keys/{OUR_KEY_ID}",
        load("lambda_v1_ssh_keys.json")["delete_ok"],
        match=[AUTH],
    )
    assert lam.destroy_instance(INSTANCE) is None
    assert [(c["method"], c["url"].removeprefix(URL)) for c in lam.session.calls] == [
        ("POST", "/instance-operations/terminate"),
        ("GET", "/ssh-keys"),
        ("DELETE", f"/ssh-keys/{OUR_KEY_ID}"),
    ]


def test_destroy_leaves_other_keys_alone(rsps, lam):
    # The fixture's instance uses a key that is not named like the instance: not ours to delete.
    add_variant(
        rsps, "POST", URL + "/instance-operations/terminate", load("lambda_v1_terminate.json")["success"]
    )
    lam.destroy_instance(INSTANCE)
    assert len(lam.session.calls) == 1


def test_destroy_succeeds_when_the_key_delete_is_refused(rsps, lam):
    body = load("lambda_v1_terminate.json")["success"]["body"]
    body["data"]["terminated_instances"][0]["ssh_key_names"] = [LABEL]
    rsps.add("POST", URL + "/instance-operations/terminate", json=body)
    add_variant(
        rsps, "GET", URL + "/ssh-keys", keys_list({"id": OUR_KEY_ID, "name": LABEL, "public_key": KEY})
    )
    # An old client lists ssh-keys/key-in-use (§2.4): the key is left for the reconcile.
    rsps.add(
        "DELETE", f"{URL}/ssh-keys/{OUR_KEY_ID}", status=409, json={"error": {"code": "ssh-keys/key-in-use"}}
    )
    assert lam.destroy_instance(INSTANCE) is None


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        ("not_found", NotFound),
        ({"status": 500, "body": {"error": {"code": "global/internal-error"}}}, Transient),
        ({"status": 401, "body": {"error": {"code": "global/invalid-api-key"}}}, AuthFailed),
        ({"status": 200, "body": {"error": "weird"}}, PermanentError),
    ],
)
def test_destroy_errors(rsps, lam, answer, error):
    v = load("lambda_v1_terminate.json")[answer] if isinstance(answer, str) else answer
    add_variant(rsps, "POST", URL + "/instance-operations/terminate", v)
    with pytest.raises(error):
        lam.destroy_instance(INSTANCE)


# ------------------------------------------------------------------------------------- keys
def test_orphan_keys_for_the_reconcile(rsps, lam):
    other = "shopper-0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e"
    listing = keys_list({"id": OUR_KEY_ID, "name": LABEL, "public_key": KEY}, {"id": "k2", "name": other})
    add_variant(rsps, "GET", URL + "/ssh-keys", listing)
    # alice-laptop is not ours; the fixture's shopper-3f9a… key carries the prefix too.
    assert lam.ssh_key_labels("shopper-") == sorted(["shopper-3f9a1c0b7d2e4a51", LABEL, other])
    add_variant(rsps, "GET", URL + "/ssh-keys", listing)
    add_variant(
        rsps, "DELETE", f"{URL}/ssh-keys/{OUR_KEY_ID}", load("lambda_v1_ssh_keys.json")["delete_not_found"]
    )
    assert lam.delete_ssh_key(LABEL) == 1  # already gone counts as deleted
    add_variant(rsps, "GET", URL + "/ssh-keys", listing)
    assert lam.delete_ssh_key("shopper-nothing") == 0


def test_orphan_key_delete_refused_raises(rsps, lam):
    add_variant(
        rsps, "GET", URL + "/ssh-keys", keys_list({"id": OUR_KEY_ID, "name": LABEL, "public_key": KEY})
    )
    rsps.add(
        "DELETE", f"{URL}/ssh-keys/{OUR_KEY_ID}", status=409, json={"error": {"code": "ssh-keys/key-in-use"}}
    )
    with pytest.raises(PermanentError):
        lam.delete_ssh_key(LABEL)


# ------------------------------------------------------------------------------------- hosts
def test_a_redirect_from_the_deprecated_host_is_never_followed(rsps):
    """A followed 301 would turn the POST into a GET and drop Authorization (§4.9)."""
    session = RecordingSession()
    lam = LambdaCloud(base_url=OLD_URL, api_key=API_KEY, session=session)
    lam.limiter, lam.launch_limiter = FakeLimiter(), FakeLimiter()
    rsps.add(
        "POST",
        OLD_URL + "/instance-operations/terminate",
        status=301,
        headers={"Location": URL + "/instance-operations/terminate"},
    )
    with pytest.raises(PermanentError, match="LAMBDA_API_URL") as info:
        lam.destroy_instance(INSTANCE)
    assert not isinstance(info.value, Transient) and info.value.status == 301
    assert len(session.calls) == 1  # nothing was sent to the new host as a GET


def test_the_deprecated_host_works_while_it_serves(rsps):
    lam = LambdaCloud(base_url=OLD_URL + "/", api_key=API_KEY, session=RecordingSession())
    lam.limiter = FakeLimiter()
    add_variant(
        rsps, "GET", OLD_URL + "/instances", load("lambda_v1_instances_list.json")["empty"], match=[AUTH]
    )
    assert lam.list_instances("shopper-") == []


def test_launch_pacing_without_a_shared_limiter_is_per_process():
    a = LambdaCloud(base_url=URL, api_key="k1")
    b = LambdaCloud(base_url=URL, api_key="k2")
    assert a.launch_limiter is b.launch_limiter and a.launch_limiter.min_interval == LAUNCH_INTERVAL


def test_fixtures_request_examples_match_what_we_send():
    """The shared fixtures' own request examples: launch carries exactly one key name and quantity."""
    example = load("lambda_v1_launch.json")["_request_example"]["json"]
    assert set(example) == set(_launch_body("x"))
    assert json.dumps(load("lambda_v1_terminate.json")["_request_example"]["json"]) == json.dumps(
        {"instance_ids": [INSTANCE]}
    )


# ------------------------------------------------------------------------------------- registry
def test_registry_lists_lambda_disabled_without_a_key(settings):
    from inventory.providers import PROVIDER_CLASSES, ProviderDisabled, get_provider, provider_statuses

    settings.LAMBDA_API_KEY = ""
    assert PROVIDER_CLASSES["lambda"] == "inventory.providers.lambdacloud.LambdaCloud"
    status = {s["name"]: s for s in provider_statuses()}["lambda"]
    assert status == {
        "name": "lambda",
        "display_name": "Lambda",
        "enabled": False,
        "reason": "no API key set (LAMBDA_API_KEY)",
    }
    with pytest.raises(ProviderDisabled, match="LAMBDA_API_KEY"):
        get_provider("lambda")


@time_machine.travel("2026-12-07 12:00:00Z", tick=False)
def test_registry_shares_the_launch_budget_across_processes(settings, db):
    """Two adapters from get_provider stand for two processes: a launch in one makes the other
    wait the account's 12 s (DatabaseStore; the same class is process-tested in
    test_ratelimit_processes.py), while the general 1 s budget is a separate key."""
    from inventory.providers import get_provider
    from inventory.providers.ratelimit import SharedRateLimiter

    settings.LAMBDA_API_KEY = f"lambda-test-{uuid.uuid4().hex}"
    settings.LAMBDA_API_URL = URL + "/"
    settings.REDIS_URL = ""
    settings.PROVIDER_MIN_INTERVAL_SECONDS = None
    one, two = get_provider("lambda"), get_provider("lambda")
    assert isinstance(one, LambdaCloud) and one.base_url == URL
    assert isinstance(one.launch_limiter, SharedRateLimiter)
    assert one.launch_limiter.key == two.launch_limiter.key != one.limiter.key
    assert one.launch_limiter.min_interval == LAUNCH_INTERVAL and len(one.launch_limiter.key) <= 160
    assert settings.LAMBDA_API_KEY not in one.launch_limiter.key
    slept: list[float] = []
    one.launch_limiter._sleep = two.launch_limiter._sleep = slept.append
    one.launch_limiter.wait()
    two.launch_limiter.wait()
    assert slept == [pytest.approx(LAUNCH_INTERVAL)]


def test_the_offline_kill_switch_covers_lambda():
    """``gpu-shopper cleanup-orphans`` builds every provider with a key in the environment from
    the registry: with LAMBDA_API_KEY, Lambda machines are listed and destroyable too."""
    from shopper.killswitch import _adapters

    adapters, skipped = _adapters({"LAMBDA_API_KEY": "k", "VASTAI_API_KEY": ""})
    assert [type(a) for a in adapters] == [LambdaCloud] and adapters[0].base_url == URL
    assert "vastai (no VASTAI_API_KEY)" in skipped
    assert "lambda (no LAMBDA_API_KEY)" in _adapters({})[1]


def test_the_sandbox_interval_lowers_the_launch_pacing_too():
    """PROVIDER_MIN_INTERVAL_SECONDS (the sandbox only) reaches the adapter as min_interval."""
    fast = LambdaCloud(base_url="http://sandbox:8765/lambda/api/v1", api_key="k", min_interval=0.02)
    assert fast.launch_interval == 0.02 and fast.launch_limiter.min_interval == 0.02
    assert LambdaCloud(base_url="http://sandbox:8765/lambda/api/v1", api_key="k").launch_interval == 12.0


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (403, "global/forbidden", AuthFailed),
        (403, "global/account-inactive", InsufficientFunds),
        (403, "global/invalid-address", InsufficientFunds),
        (404, "global/not-found", PermanentError),  # listing has no 404: not "instance gone"
        (409, "global/conflict", PermanentError),
        (400, "provider/upstream-timeout", Transient),
        (502, "", Transient),
    ],
)
def test_error_codes_on_the_listing(rsps, lam, status, code, error):
    rsps.add("GET", URL + "/instances", status=status, json={"error": {"code": code, "message": "m"}})
    with pytest.raises(error) as info:
        lam.list_instances("shopper-")
    assert type(info.value) is error  # a 404 on a listing is never NotFound (never "none there")
