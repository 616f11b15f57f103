"""RunPod REST v2 adapter against the constructed fixtures (shared/providers/fixtures/runpod_v2_*).

Every operation, quirk and error form of RUNPOD_LAMBDA.md section 1, and the exact requests sent.
"""

from __future__ import annotations

import copy
import os
import shlex
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest
import responses
from responses import matchers

from inventory.providers.base import (
    FEATURE_ATTACH_SSH_KEY,
    FEATURE_LABEL_LOOKUP,
    FEATURE_SSH_KEY_AT_CREATE,
    STATE_BOOTING,
    STATE_FAILED,
    STATE_PENDING,
    STATE_RUNNING,
    STATE_STOPPED,
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
from inventory.providers.runpod.adapter import DEFAULT_IMAGE, START_COMMAND, RunPod
from inventory.providers.runpod.names import runpod_gpu_type
from inventory.providers.tensordock.names import tensordock_gpu_type
from inventory.providers.vastai.names import vast_gpu_type

from .conftest import API_KEY, _assert_call_hygiene, _make, add_variant, load

RP_URL = "https://api.runpod.io/v2"
AUTH = matchers.header_matcher({"Authorization": f"Bearer {API_KEY}"})
LABEL = "shopper-6f1c2e0a-3b7d-4c9e-9a51-0d2f8b7e4c13"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeFakeFakeFakeFakeFakeFakeFakeFakeFake shopper-6f1c2e0a"
POD = "x7k2p9q4r1s8t3"
OFFER = "SECURE:EU-RO-1:1:NVIDIA GeForce RTX 4090"
CATALOG = load("runpod_v2_catalog_gpus.json")
CREATE = load("runpod_v2_create_pod.json")
GET = load("runpod_v2_pod_get.json")
LIST = load("runpod_v2_pods_list.json")
DELETE = load("runpod_v2_delete_pod.json")
EMPTY_CATALOG = {"status": 200, "body": {"gpus": []}}


@pytest.fixture
def rp():
    provider = _make(RunPod, RP_URL)
    yield provider
    _assert_call_hygiene(provider)


def _catalog_query(count: int) -> matchers.query_param_matcher:
    return matchers.query_param_matcher(
        {"include": "AVAILABILITY", "product": "POD", "cloud": "SECURE", "count": str(count)}
    )


def _add_catalog(rsps, variants: dict[int, dict]) -> None:
    for count, variant in variants.items():
        add_variant(
            rsps, responses.GET, RP_URL + "/catalog/gpus", variant, match=[AUTH, _catalog_query(count)]
        )


def _request(**kw) -> CreateRequest:
    fields = dict(offer_id=OFFER, label=LABEL, ssh_public_key=KEY, image="", disk_gb=40)
    return CreateRequest(**{**fields, **kw})


def test_class_attributes_and_no_balance(rp):
    assert (RunPod.name, RunPod.display_name, RunPod.min_interval) == ("runpod", "RunPod", 1.0)
    assert rp.supports(FEATURE_SSH_KEY_AT_CREATE) and rp.supports(FEATURE_LABEL_LOOKUP)
    assert not rp.supports(FEATURE_ATTACH_SSH_KEY)
    with pytest.raises(PermanentError):
        rp.attach_ssh_key(POD, KEY)  # the key rides in PUBLIC_KEY at create; account keys untouched
    assert rp.account_balance() is None  # v2 has no balance route (RPPLUG Class 3); no call made


# ------------------------------------------------------------------------------------- offers
def test_offers_secure_only_one_per_data_centre(rsps, rp):
    _add_catalog(rsps, {1: CATALOG["secure_count_1"], 2: EMPTY_CATALOG, 4: EMPTY_CATALOG, 8: EMPTY_CATALOG})
    offers = {o.provider_offer_id: o for o in rp.search_offers()}
    assert rp.last_search_pages == 4
    # The A100 SXM has availability NONE and no dataCenters: not offered.
    assert set(offers) == {
        "SECURE:EU-RO-1:1:NVIDIA GeForce RTX 4090",
        "SECURE:US-KS-2:1:NVIDIA GeForce RTX 4090",
        "SECURE:US-TX-3:1:NVIDIA H100 80GB HBM3",
        "SECURE:CA-MTL-1:1:NVIDIA H100 PCIe",
        "SECURE:EU-SE-1:1:NVIDIA A100 80GB PCIe",
        "SECURE:US-IL-1:1:NVIDIA A100 80GB PCIe",
        "SECURE:EU-RO-1:1:NVIDIA RTX 6000 Ada Generation",
        "SECURE:US-GA-2:1:NVIDIA H200",
        "SECURE:EU-RO-1:1:AMD Instinct MI300X OAM",
    }
    names = {o.provider_offer_id.split(":", 3)[3]: o.gpu_type for o in offers.values()}
    assert names == {
        "NVIDIA GeForce RTX 4090": "RTX 4090 24GB",
        "NVIDIA H100 80GB HBM3": "H100 SXM 80GB",  # SXM despite the id (skypilot GPU_NAME_MAP)
        "NVIDIA H100 PCIe": "H100 PCIE 80GB",
        "NVIDIA A100 80GB PCIe": "A100 PCIE 80GB",
        "NVIDIA RTX 6000 Ada Generation": "RTX 6000 Ada 48GB",
        "NVIDIA H200": "H200 141GB",
        "AMD Instinct MI300X OAM": "MI300X 192GB",
    }
    rtx = offers[OFFER]
    assert (rtx.provider, rtx.gpu_count, rtx.vram_gb, rtx.location) == ("runpod", 1, 24, "EU Romania 1")
    # price.secure is per GPU; plus 40 GB container disk at $0.10/GB-month over 720 h.
    assert rtx.price_per_hour == Decimal("0.5956") and isinstance(rtx.price_per_hour, Decimal)
    assert rtx.storage_price_per_gb_hour == Decimal("0.10") / 720
    assert (rtx.disk_gb, rtx.disk_gb_default, rtx.reliability) == (40, 40, None)
    assert (rtx.inet_down_price_per_gb, rtx.inet_up_price_per_gb) == (Decimal("0"), Decimal("0"))
    assert rtx.cuda_version == "12.9"  # the newest available one
    assert offers["SECURE:US-TX-3:1:NVIDIA H100 80GB HBM3"].cuda_version == "12.8"  # 13.0 unavailable
    assert offers["SECURE:EU-RO-1:1:AMD Instinct MI300X OAM"].cuda_version == ""


def test_price_scales_with_count_and_max_count_is_a_ceiling(rsps, rp):
    body = copy.deepcopy(CATALOG["secure_count_1"])
    for gpu in body["body"]["gpus"]:
        gpu["maxCount"]["secure"] = 4  # offered at 1, 2 and 4, never 8
    _add_catalog(rsps, {1: EMPTY_CATALOG, 2: EMPTY_CATALOG, 4: body, 8: body})
    offers = {o.provider_offer_id: o for o in rp.search_offers()}
    assert offers and all(o.gpu_count == 4 for o in offers.values())
    assert offers["SECURE:EU-RO-1:4:NVIDIA GeForce RTX 4090"].price_per_hour == Decimal("2.3656")  # 0.59*4+


def test_gpus_not_in_secure_cloud_or_without_stock_are_left_out(rsps, rp):
    # community_count_1's GPUs answered for SECURE: the RTX 3090 is not in Secure Cloud (its
    # price.secure 0 means nothing), the A6000 has no stock and no dataCenters key.
    _add_catalog(
        rsps, {1: CATALOG["community_count_1"], 2: EMPTY_CATALOG, 4: EMPTY_CATALOG, 8: EMPTY_CATALOG}
    )
    assert [o.provider_offer_id for o in rp.search_offers()] == ["SECURE:EU-CZ-1:1:NVIDIA GeForce RTX 4090"]


def test_catalog_without_availability_offers_nothing(rsps, rp):
    # If include=AVAILABILITY were ignored, there is no stock or data centre to vouch for.
    _add_catalog(
        rsps, {1: CATALOG["without_availability"], 2: EMPTY_CATALOG, 4: EMPTY_CATALOG, 8: EMPTY_CATALOG}
    )
    assert rp.search_offers() == []


def test_secure_gpu_with_zero_price_is_left_out(rsps, rp):
    body = copy.deepcopy(CATALOG["secure_count_1"])
    for gpu in body["body"]["gpus"]:
        gpu["price"]["secure"] = 0
    _add_catalog(rsps, {1: body, 2: EMPTY_CATALOG, 4: EMPTY_CATALOG, 8: EMPTY_CATALOG})
    assert rp.search_offers() == []


def test_filter_narrows_counts_and_results(rsps, rp):
    _add_catalog(rsps, {4: CATALOG["secure_count_1"], 8: EMPTY_CATALOG})  # counts 1 and 2 not asked
    offers = rp.search_offers(OfferFilter(min_gpus=3, min_vram_gb=80, max_price=Decimal("7")))
    assert rp.last_search_pages == 2
    # 80 GB and at most $7/h for four: only the A100 PCIe (4 x 1.64 + disk = 6.5656).
    assert {o.provider_offer_id for o in offers} == {
        "SECURE:EU-SE-1:4:NVIDIA A100 80GB PCIe",
        "SECURE:US-IL-1:4:NVIDIA A100 80GB PCIe",
    }


def test_catalog_400_is_permanent(rsps, rp):
    _add_catalog(rsps, {1: CATALOG["product_missing"]})
    with pytest.raises(PermanentError) as err:
        rp.search_offers()
    assert err.value.status == 400 and not isinstance(err.value, OfferUnavailable)


def test_catalog_without_gpus_list_raises(rsps, rp):
    _add_catalog(rsps, {1: {"status": 200, "body": {"data": []}}})
    with pytest.raises(PermanentError, match="no gpus list"):
        rp.search_offers()


def test_get_offer_is_one_call_at_the_offers_count(rsps, rp):
    _add_catalog(rsps, {2: CATALOG["secure_count_1"]})
    offer = rp.get_offer("SECURE:US-KS-2:2:NVIDIA GeForce RTX 4090")
    assert offer is not None and offer.gpu_count == 2 and offer.price_per_hour == Decimal("1.1856")
    assert len(rp.session.calls) == 1


def test_get_offer_gone_is_none(rsps, rp):
    _add_catalog(rsps, {1: CATALOG["secure_count_1"]})
    assert rp.get_offer("SECURE:EU-RO-1:1:NVIDIA A100-SXM4-80GB") is None  # availability NONE


def test_names_group_with_the_other_providers():
    """An A100 SXM4 80GB from RunPod, Vast and TensorDock is one model on the menu."""
    assert runpod_gpu_type("NVIDIA A100-SXM4-80GB", 80)[0] == vast_gpu_type("A100 SXM4", 81920)[0]
    assert runpod_gpu_type("NVIDIA A100-SXM4-80GB", 80)[0] == tensordock_gpu_type("a100-sxm4-80gb")[0]
    assert runpod_gpu_type("NVIDIA H100 80GB HBM3", 80)[0] == vast_gpu_type("H100 SXM", 81559)[0]
    assert runpod_gpu_type("NVIDIA H100 PCIe", 80)[0] == vast_gpu_type("H100 PCIE", 81559)[0]
    assert runpod_gpu_type("NVIDIA GeForce RTX 4090", 24)[0] == vast_gpu_type("RTX 4090", 24564)[0]
    assert (
        runpod_gpu_type("NVIDIA RTX 6000 Ada Generation", 48)[0]
        == tensordock_gpu_type("rtx6000ada-pcie-48gb")[0]
    )
    assert runpod_gpu_type("Tesla V100-SXM2-32GB", 32) == ("V100 32GB", 32)
    assert runpod_gpu_type("NVIDIA  RTX A4500", 20) == ("RTX A4500 20GB", 20)  # RPV1's two spaces
    # Names in shared/providers/gpu_specs.csv.
    specs = (Path("/work/shared/providers/gpu_specs.csv"), Path(__file__).parents[3] / "gpu_specs.csv")
    for path in (p for p in specs if p.exists()):
        known = {line.split(",", 1)[0] for line in path.read_text().splitlines()[1:]}
        for gpu_id, memory in [("NVIDIA H200", 141), ("AMD Instinct MI300X OAM", 192), ("NVIDIA L40S", 48)]:
            assert runpod_gpu_type(gpu_id, memory)[0] in known


# ------------------------------------------------------------------------------------- create
def _expected_body(**changes) -> dict:
    body = copy.deepcopy(CREATE["_request_example"]["json"])
    body["image"] = DEFAULT_IMAGE
    body["env"] = {"PUBLIC_KEY": KEY}
    del body["args"]
    body.update(changes)
    return body


def test_create_sends_the_documented_body(rsps, rp):
    rsps.add(
        responses.POST,
        RP_URL + "/pods",
        json=CREATE["created"]["body"],
        status=201,
        match=[AUTH, matchers.json_params_matcher(_expected_body(), strict_match=True)],
    )
    assert rp.create_instance(_request()) == POD
    # One call, to /pods: never the account's ssh-keys (its PUT replaces every key).
    assert [(c["method"], c["url"]) for c in rp.session.calls] == [("POST", RP_URL + "/pods")]


def test_create_with_onstart_env_ports_and_disk(rsps, rp):
    request = _request(
        image="vllm/vllm-openai:latest",
        disk_gb=120,
        onstart="echo hi",
        env={"SHOPPER_RENTAL_ID": "6f1c2e0a", "-p 8000:8000": "1"},
        ports=(8000, 22, 8000),
        ssh_public_key=KEY + "\n\nssh-rsa AAAAB3second other\n",
    )
    body = rp.create_body(request)
    assert body["image"] == "vllm/vllm-openai:latest" and body["disk"] == 120
    assert body["ports"] == ["22/tcp", "8000/tcp"]
    assert body["env"] == {
        "SHOPPER_RENTAL_ID": "6f1c2e0a",  # the Vast-style "-p" key is not an env name: dropped
        "PUBLIC_KEY": KEY + "\nssh-rsa AAAAB3second other",
        "SHOPPER_ONSTART": "echo hi",
    }
    assert shlex.split(body["args"]) == ["bash", "-c", START_COMMAND]
    rsps.add(responses.POST, RP_URL + "/pods", json=CREATE["created"]["body"], status=201,
             match=[matchers.json_params_matcher(body, strict_match=True)])  # fmt: skip
    assert rp.create_instance(request) == POD


def _run_start_command(tmp_path: Path, with_start_sh: bool) -> str:
    """Run START_COMMAND in a real bash with its absolute paths moved into tmp_path."""
    script = START_COMMAND.replace("/shopper-onstart.sh", str(tmp_path / "onstart.sh"))
    script = script.replace("/var/log/shopper-onstart.log", str(tmp_path / "onstart.log"))
    script = script.replace("/start.sh", str(tmp_path / "start.sh"))
    script = script.replace("/root/.ssh", str(tmp_path / "ssh")).replace("ssh-keygen -A", "true")
    script = script.replace("(service ssh start || /usr/sbin/sshd)", f"touch {tmp_path}/sshd")
    script = script.replace("exec sleep infinity", "exit 0")
    if with_start_sh:
        (tmp_path / "start.sh").write_text(f"#!/bin/sh\necho started > {tmp_path}/image-start\n")
        (tmp_path / "start.sh").chmod(0o755)
    onstart = f'echo "agent $SHOPPER_RENTAL_ID" > {tmp_path}/agent\n'
    env = {
        "PATH": os.environ["PATH"],
        "SHOPPER_ONSTART": onstart,
        "PUBLIC_KEY": KEY,
        "SHOPPER_RENTAL_ID": "r1",
    }
    subprocess.run(["bash", "-c", script], env=env, check=True, timeout=20)
    for _ in range(200):  # the agent runs in the background; wait for its file (bounded)
        if (tmp_path / "agent").exists() and (tmp_path / "agent").read_text():
            break
        subprocess.run(["sleep", "0.05"], check=True)
    return (tmp_path / "agent").read_text()


def test_start_command_runs_the_agent_and_still_the_images_start(tmp_path):
    assert _run_start_command(tmp_path, with_start_sh=True) == "agent r1\n"
    assert (tmp_path / "image-start").read_text() == "started\n"  # sshd via the image's /start.sh
    assert not (tmp_path / "sshd").exists()


def test_start_command_without_start_sh_installs_the_key_and_sshd(tmp_path):
    assert _run_start_command(tmp_path, with_start_sh=False) == "agent r1\n"
    assert (tmp_path / "ssh" / "authorized_keys").read_text() == KEY + "\n"
    assert (tmp_path / "sshd").exists()


@pytest.mark.parametrize(
    ("variant", "error"),
    [
        ("no_capacity", OfferUnavailable),
        ("validation_422", PermanentError),
        ("insufficient_balance", InsufficientFunds),
        ("unauthorized", AuthFailed),
        ("forbidden", OfferUnavailable),  # on create: the pool is not accessible (RP2)
        ("upstream_error", Transient),
    ],
)
def test_create_errors(rsps, rp, variant, error):
    add_variant(rsps, responses.POST, RP_URL + "/pods", CREATE[variant])
    with pytest.raises(error) as err:
        rp.create_instance(_request())
    assert type(err.value) is error
    assert err.value.status == CREATE[variant]["status"]
    assert API_KEY not in str(err.value)
    assert len(rp.session.calls) == 1  # nothing retried: it was refused, not rate-limited


def test_create_retries_without_start_ssh_when_a_422_names_it(rsps, rp):
    refused = {
        "title": "Unprocessable Entity",
        "status": 422,
        "detail": "Request validation failed.",
        "errors": ["$: additional properties 'startSsh' not allowed"],
    }
    rsps.add(responses.POST, RP_URL + "/pods", json=refused, status=422,
             match=[matchers.json_params_matcher(_expected_body(), strict_match=True)])  # fmt: skip
    without = _expected_body()
    del without["startSsh"]
    rsps.add(responses.POST, RP_URL + "/pods", json=CREATE["created"]["body"], status=201,
             match=[matchers.json_params_matcher(without, strict_match=True)])  # fmt: skip
    assert rp.create_instance(_request()) == POD


def test_create_rate_limited_waits_retry_after_then_succeeds(rsps, rp):
    add_variant(rsps, responses.POST, RP_URL + "/pods", CREATE["rate_limited"])
    add_variant(rsps, responses.POST, RP_URL + "/pods", CREATE["created"])
    assert rp.create_instance(_request()) == POD
    assert rp.limiter.penalties == [12.0] and rp.limiter.waits == 2


def test_create_rate_limited_gives_up(rsps, rp):
    for _ in range(rp.max_retries_on_429 + 1):
        add_variant(rsps, responses.POST, RP_URL + "/pods", CREATE["rate_limited"])
    with pytest.raises(RateLimited) as err:
        rp.create_instance(_request())
    assert err.value.retry_after == 12.0


@pytest.mark.parametrize(
    ("status", "body", "match"),
    [
        (410, {"title": "Gone", "status": 410, "detail": "v1 retired"}, "retired RunPod API"),
        (400, {"error": "invalid gpuTypeId"}, "retired v1 API"),  # v1's envelope
        (201, {"status": "PROVISIONING"}, "no pod id"),
        (400, {"title": "Bad Request", "status": 400, "detail": "disk too small"}, "disk too small"),
    ],
)
def test_create_other_failures_are_permanent(rsps, rp, status, body, match):
    rsps.add(responses.POST, RP_URL + "/pods", json=body, status=status)
    with pytest.raises(PermanentError, match=match) as err:
        rp.create_instance(_request())
    assert not isinstance(err.value, OfferUnavailable | InsufficientFunds | AuthFailed)


@pytest.mark.parametrize(
    "offer", ["", "SECURE:EU-RO-1:1", "ALL:EU-RO-1:1:x", "SECURE::1:x", "SECURE:EU:0:x", "SECURE:EU:a:x"]
)
def test_malformed_offer_id_sends_nothing(rsps, rp, offer):
    with pytest.raises(PermanentError, match="malformed offer id"):
        rp.create_instance(_request(offer_id=offer))
    assert rp.session.calls == []


# ------------------------------------------------------------------------------------- read
def _get(rsps, variant, pod_id=POD):
    add_variant(rsps, responses.GET, f"{RP_URL}/pods/{pod_id}", variant, match=[AUTH])


@pytest.mark.parametrize(
    ("variant", "state"),
    [
        ("provisioning", STATE_PENDING),
        ("starting", STATE_BOOTING),
        ("exited", STATE_STOPPED),
        ("error", STATE_FAILED),
    ],
)
def test_get_instance_states(rsps, rp, variant, state):
    pod = GET[variant]["body"]
    _get(rsps, GET[variant], pod["id"])
    inst = rp.get_instance(pod["id"])
    assert (inst.state, inst.raw_status, inst.label) == (state, pod["status"].lower(), LABEL)
    assert inst.ssh_host == "" and inst.ssh_port is None and inst.ssh_endpoints == ()  # never the proxy
    assert inst.price_per_hour == Decimal(str(pod["cost"])).quantize(Decimal("0.0001"))


def test_get_running_instance_has_direct_ssh(rsps, rp):
    _get(rsps, GET["running"])
    inst = rp.get_instance(POD)
    assert inst.state == STATE_RUNNING and inst.provider == "runpod" and inst.instance_id == POD
    assert (inst.ssh_host, inst.ssh_port, inst.ssh_user) == ("194.68.245.31", 22031, "root")
    assert inst.ssh_endpoints == (("194.68.245.31", 22031),)
    assert inst.ports == {22: ("194.68.245.31", 22031)}
    assert inst.price_per_hour == Decimal("0.5900")
    assert inst.started_at is not None and inst.started_at.isoformat() == "2026-12-07T10:00:00+00:00"


def test_get_running_falls_back_to_runtime_ports(rsps, rp):
    variant = copy.deepcopy(GET["running"])
    variant["body"]["ssh"]["direct"] = None
    _get(rsps, variant)
    inst = rp.get_instance(POD)
    assert inst.state == STATE_RUNNING and (inst.ssh_host, inst.ssh_port) == ("194.68.245.31", 22031)


def test_running_without_public_ip_is_not_running(rsps, rp):
    pod = GET["running_without_public_ip"]["body"]
    _get(rsps, GET["running_without_public_ip"], pod["id"])
    inst = rp.get_instance(pod["id"])
    assert inst.state == STATE_BOOTING and inst.raw_status == "running"
    assert inst.ssh_host == "" and inst.ports == {} and "proxy is interactive only" in inst.status_message


def test_create_answer_runtime_empty_object_parses(rsps, rp):
    _get(rsps, CREATE["created"])  # runtime {} rather than null (UNCONFIRMED which)
    assert rp.get_instance(POD).state == STATE_PENDING


@pytest.mark.parametrize("status", ["TERMINATED", "terminated"])
def test_get_terminated_is_not_found(rsps, rp, status):
    variant = copy.deepcopy(GET["exited"])
    variant["body"]["status"] = status
    _get(rsps, variant)
    with pytest.raises(NotFound):
        rp.get_instance(POD)


def test_get_404_is_not_found(rsps, rp):
    _get(rsps, GET["not_found"])
    with pytest.raises(NotFound):
        rp.get_instance(POD)


def test_get_403_is_auth_failed_outside_create(rsps, rp):
    _get(rsps, CREATE["forbidden"])
    with pytest.raises(AuthFailed):
        rp.get_instance(POD)


def test_ids_stay_one_path_segment(rsps, rp):
    rsps.add(
        responses.GET, RP_URL + "/pods/..%2Faccount%2Fssh-keys", json=GET["not_found"]["body"], status=404
    )
    with pytest.raises(NotFound):
        rp.get_instance("../account/ssh-keys")


# ------------------------------------------------------------------------------------- list
def test_list_filters_by_label_prefix(rsps, rp):
    add_variant(
        rsps,
        responses.GET,
        RP_URL + "/pods",
        LIST["single_page"],
        match=[AUTH, matchers.query_string_matcher("")],
    )
    found = rp.list_instances("shopper-")
    assert [(i.instance_id, i.state) for i in found] == [
        ("x7k2p9q4r1s8t3", STATE_RUNNING),
        ("a1b2c3d4e5f6g7", STATE_BOOTING),
    ]


def test_list_exact_label(rsps, rp):
    add_variant(rsps, responses.GET, RP_URL + "/pods", LIST["single_page"])
    assert [i.instance_id for i in rp.list_instances(LABEL)] == [POD]


def test_list_follows_the_cursor(rsps, rp):
    add_variant(
        rsps, responses.GET, RP_URL + "/pods", LIST["paged_page1"], match=[matchers.query_string_matcher("")]
    )
    add_variant(rsps, responses.GET, RP_URL + "/pods", LIST["paged_page2"],
                match=[AUTH, matchers.query_param_matcher({"cursor": "eyJvIjoyfQ"})])  # fmt: skip
    assert [i.label for i in rp.list_instances("")] == [
        LABEL,
        "shopper-9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
        "manual-notebook",
    ]


def test_list_empty(rsps, rp):
    add_variant(rsps, responses.GET, RP_URL + "/pods", LIST["empty"])
    assert rp.list_instances("shopper-") == []


def test_list_drops_terminated_pods(rsps, rp):
    variant = copy.deepcopy(LIST["single_page"])
    variant["body"]["pods"][0]["status"] = "TERMINATED"
    add_variant(rsps, responses.GET, RP_URL + "/pods", variant)
    assert [i.instance_id for i in rp.list_instances("shopper-")] == ["a1b2c3d4e5f6g7"]


@pytest.mark.parametrize(
    "body",
    [
        {"data": []},  # an unknown shape
        {"pods": [], "pagination": {"hasNextPage": True, "nextCursor": None}},  # no cursor to follow
    ],
)
def test_list_never_reads_a_broken_answer_as_empty(rsps, rp, body):
    rsps.add(responses.GET, RP_URL + "/pods", json=body)
    with pytest.raises(PermanentError):
        rp.list_instances("shopper-")


def test_list_repeating_cursor_raises(rsps, rp):
    add_variant(rsps, responses.GET, RP_URL + "/pods", LIST["paged_page1"])
    add_variant(rsps, responses.GET, RP_URL + "/pods", LIST["paged_page1"])
    with pytest.raises(PermanentError, match="broken pagination"):
        rp.list_instances("shopper-")


@pytest.mark.parametrize(("status", "error"), [(500, Transient), (401, AuthFailed), (403, AuthFailed)])
def test_list_errors_raise(rsps, rp, status, error):
    rsps.add(responses.GET, RP_URL + "/pods", json={"title": "x", "status": status}, status=status)
    with pytest.raises(error):
        rp.list_instances("shopper-")


# ------------------------------------------------------------------------------------- delete
def test_destroy_deletes(rsps, rp):
    add_variant(rsps, responses.DELETE, f"{RP_URL}/pods/{POD}", DELETE["deleted"], match=[AUTH])
    assert rp.destroy_instance(POD) is None
    assert [c["method"] for c in rp.session.calls] == ["DELETE"]  # not the "terminate" action


def test_destroy_gone_is_not_found(rsps, rp):
    add_variant(rsps, responses.DELETE, f"{RP_URL}/pods/{POD}", DELETE["not_found"])
    with pytest.raises(NotFound):
        rp.destroy_instance(POD)


def test_destroy_cluster_member_is_permanent(rsps, rp):
    add_variant(rsps, responses.DELETE, f"{RP_URL}/pods/{POD}", DELETE["cluster_member"])
    with pytest.raises(PermanentError) as err:
        rp.destroy_instance(POD)
    assert err.value.status == 409 and not isinstance(err.value, NotFound)


def test_destroy_server_error_is_transient(rsps, rp):
    add_variant(rsps, responses.DELETE, f"{RP_URL}/pods/{POD}", CREATE["upstream_error"])
    with pytest.raises(Transient):
        rp.destroy_instance(POD)


# ------------------------------------------------------------------------------------- registry
def test_registry_without_key_is_disabled_and_says_so():
    from django.test import override_settings

    from inventory.providers import ProviderDisabled, get_provider, provider_statuses

    with override_settings(RUNPOD_API_KEY=""):
        status = {s["name"]: s for s in provider_statuses()}["runpod"]
        assert status == {
            "name": "runpod",
            "display_name": "RunPod",
            "enabled": False,
            "reason": "no API key set (RUNPOD_API_KEY)",
        }
        with pytest.raises(ProviderDisabled, match="RUNPOD_API_KEY"):
            get_provider("runpod")


def test_registry_with_key_builds_the_adapter_on_v2(settings):
    from django.test import override_settings

    from inventory.providers import get_provider

    assert settings.RUNPOD_API_URL == "https://api.runpod.io/v2"
    limiter = object()
    with override_settings(RUNPOD_API_KEY=" rk "):
        provider = get_provider("runpod", limiter=limiter)
    assert isinstance(provider, RunPod) and provider.api_key == "rk"
    assert provider.base_url == RP_URL and provider.limiter is limiter


def test_registry_paces_runpod_through_the_shared_limiter():
    from django.test import override_settings

    from inventory.providers import get_provider
    from inventory.providers.ratelimit import SharedRateLimiter

    with override_settings(RUNPOD_API_KEY="rk", PROVIDER_MIN_INTERVAL_SECONDS=None):
        provider = get_provider("runpod")
    assert isinstance(provider.limiter, SharedRateLimiter)
    assert provider.limiter.min_interval == 1.0 and provider.limiter.key.startswith("runpod@" + RP_URL)


def test_community_offer_ids_are_refused_before_any_call(rsps, rp):
    with pytest.raises(PermanentError, match="only SECURE Cloud"):
        rp.create_instance(_request(offer_id="COMMUNITY:EU-CZ-1:1:NVIDIA GeForce RTX 3090"))
    assert rp.get_offer("COMMUNITY:EU-CZ-1:1:NVIDIA GeForce RTX 3090") is None
    assert rp.session.calls == []


def test_fields_added_after_v2_9_are_ignored(rsps, rp):
    variant = copy.deepcopy(GET["running"])
    variant["body"]["gpu"].update({"vcpuCount": 16, "memory": 62})  # seen after v2.9.0 (4.3)
    variant["body"]["newThing"] = {"x": 1}
    _get(rsps, variant)
    assert rp.get_instance(POD).state == STATE_RUNNING
