"""Vast.ai adapter against bodies shaped like FIELD_NOTES (inventory/providers/vastai/fixtures/VA-*.json).

Each test names the field-notes id it covers; each failed on the adapter before issue 14.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import pytest
import responses

from inventory.providers.base import CreateRequest, OfferUnavailable, PermanentError
from inventory.providers.vastai.adapter import onstart_script

from .conftest import VAST_URL, add_variant, load

BUNDLES = VAST_URL + "/api/v0/bundles/"
ASK = VAST_URL + "/api/v0/asks/29907796/"


def by_id(offers):
    return {o.provider_offer_id: o for o in offers}


def serve_offers(rsps, offers, *, cap=None, method=responses.POST):
    """A search endpoint that honours ``id`` gt/eq filters and ``order`` by id, and answers at
    most ``cap`` offers whatever ``limit`` asks (FIELD_NOTES VA-LISTING). Returns the queries."""
    queries: list[dict] = []

    def answer(request):
        if request.method == "GET":
            q = json.loads(parse_qs(urlsplit(request.url).query)["q"][0])
        else:
            q = json.loads(request.body)
        queries.append(q)
        rows = sorted(offers, key=lambda o: o["id"])
        cond = q.get("id", {})
        if "gt" in cond:
            rows = [o for o in rows if o["id"] > cond["gt"]]
        if "eq" in cond:
            rows = [o for o in rows if o["id"] == cond["eq"]]
        rows = rows[: min(q.get("limit", 10**9), cap or 10**9)]
        return 200, {}, json.dumps({"offers": rows})

    rsps.add_callback(method, BUNDLES, callback=answer, content_type="application/json")
    return queries


# ------------------------------------------------------------------------------ offer fields
def test_offer_fields_reliability2_cpu_ram_and_gpu_names(rsps, vast):
    serve_offers(rsps, load("VA-OFFER-FIELDS.json")["offers"])
    o = by_id(vast.search_offers())
    # reliability missing: reliability2 is used (was None, so min_reliability hid the offer).
    assert o["30000001"].reliability == Decimal("0.9734")
    # cpu_cores_effective missing: 64 cores x gpu_frac 0.25 = 16 vCPUs, 515000 MB x 0.25 = 128 GB.
    assert (o["30000002"].cpu_cores, o["30000002"].ram_gb) == (16, 128)
    # cpu_cores null: effective 16 vCPUs, RAM share by gpu_frac: 257980 MB x 0.5 = 128 GB.
    assert (o["30000003"].cpu_cores, o["30000003"].ram_gb) == (16, 128)
    # nvidia-smi spellings group with the canonical names.
    assert o["30000004"].gpu_type == o["30000005"].gpu_type == "RTX 4090 24GB"
    assert o["30000006"].gpu_type == o["30000007"].gpu_type == "A100 PCIE 40GB"
    assert o["30000008"].gpu_type == "A100 PCIE 80GB" and o["30000008"].vram_gb == 80
    assert o["30000009"].gpu_type == "H100 SXM 80GB"


def test_cuda_max_good_is_a_version_string(rsps, vast):
    """VA-CUDA-LIE: the advertised CUDA is stored as the offer's claim, as "major.minor"."""
    serve_offers(rsps, load("VA-CUDA-LIE.json")["offers"])
    o = by_id(vast.search_offers())
    assert (o["29907796"].cuda_version, o["29907796"].driver_version) == ("12.9", "570.124.04")
    assert o["29907796"].gpu_type == "RTX 5090 32GB"
    assert o["29907797"].cuda_version == "13.0"  # an int 13 was stored as "13"
    assert o["29907798"].cuda_version == "12.8"  # a string is accepted
    assert (o["29907799"].cuda_version, o["29907799"].driver_version) == ("", "")


# ------------------------------------------------------------------------------ search paging
def test_search_is_never_silently_capped(rsps, vast):
    """VA-LISTING: a server that answers at most 64 offers still yields all 150."""
    fx = load("VA-LISTING.json")
    offers = [dict(fx["offer"], id=fx["offer"]["id"] + i) for i in range(150)]
    queries = serve_offers(rsps, offers, cap=fx["cap"])
    found = vast.search_offers()
    assert len(found) == 150 and len({o.provider_offer_id for o in found}) == 150
    # 64 + 64 + 22, then an empty page proves the end.
    assert [q.get("id") for q in queries] == [None, {"gt": 40000064}, {"gt": 40000128}, {"gt": 40000150}]
    assert (vast.last_search_pages, vast.last_search_returned) == (4, 150)


def test_search_that_never_ends_raises_instead_of_truncating(rsps, vast, monkeypatch):
    from inventory.providers.vastai import adapter as vastai

    monkeypatch.setattr(vastai, "MAX_SEARCH_PAGES", 2)
    fx = load("VA-LISTING.json")
    serve_offers(rsps, [dict(fx["offer"], id=fx["offer"]["id"] + i) for i in range(150)], cap=64)
    with pytest.raises(vastai.Transient, match="more than 2 pages"):
        vast.search_offers()


def test_search_answered_405_to_post_is_retried_as_get_with_q(rsps, vast):
    fx = load("VA-SEARCH-GET.json")
    add_variant(rsps, responses.POST, BUNDLES, fx["post_refused"])
    queries = serve_offers(rsps, fx["offers"], method=responses.GET)
    assert sorted(by_id(vast.search_offers())) == ["50000001", "50000002"]
    assert queries[0]["rentable"] == {"eq": True} and queries[0]["order"] == [["id", "asc"]]
    # The GET form is remembered: the next search does not try POST again.
    assert vast.search_method == ("GET", "/api/v0/bundles/")
    before = len(rsps.calls)
    vast.search_offers()
    assert all(c.request.method == "GET" for c in rsps.calls[before:])


def test_get_offer_asks_for_the_one_offer(rsps, vast):
    offers = load("VA-OFFER-FIELDS.json")["offers"]
    queries = serve_offers(rsps, offers)
    offer = vast.get_offer("30000004")
    assert offer is not None and offer.gpu_type == "RTX 4090 24GB"
    assert len(queries) == 1 and queries[0]["id"] == {"eq": 30000004} and queries[0]["limit"] == 1
    assert vast.get_offer("30000099") is None  # gone: the answer is empty
    assert vast.get_offer("../etc") is None and len(queries) == 2  # never sent


# ------------------------------------------------------------------------------ create
def _request(**kw) -> CreateRequest:
    args = dict(offer_id="29907796", label="shopper-x", ssh_public_key="ssh-ed25519 AAAA a@b")
    return CreateRequest(**{**args, **kw})


def test_no_such_ask_inside_invalid_args_is_offer_gone(rsps, vast):
    """VA-NOSUCHASK: the live body is a 400 invalid_args whose msg says no_such_ask."""
    fx = load("VA-NOSUCHASK.json")
    add_variant(rsps, responses.PUT, ASK, fx["create_offer_gone"])
    with pytest.raises(OfferUnavailable) as err:
        vast.create_instance(_request())
    assert err.value.status == 400 and err.value.instance_id is None
    # A real invalid_args stays permanent (not "offer gone").
    rsps.replace(responses.PUT, ASK, json=fx["create_invalid_args"]["body"], status=400)
    with pytest.raises(PermanentError) as err:
        vast.create_instance(_request())
    assert not isinstance(err.value, OfferUnavailable)


def test_onstart_gives_plain_shells_and_installs_every_key_itself(rsps, vast):
    """~/.no_auto_tmux, and the user's keys written by the container itself: neither Vast's
    account-level keys nor the attach call alone are relied on (VA-SSH)."""
    keys = "ssh-ed25519 AAAA first@x\n\nssh-rsa BBBB second@y it's\n"
    rsps.add(responses.PUT, ASK, json={"success": True, "new_contract": 7})
    assert vast.create_instance(_request(ssh_public_key=keys, onstart="echo agent")) == "7"
    body = json.loads(rsps.calls[0].request.body)
    assert "ssh_key" not in body and "ssh_key_ids" not in body  # nothing account-level
    script = body["onstart"]
    assert script.splitlines()[0] == "touch ~/.no_auto_tmux" and script.endswith("echo agent")
    assert script == onstart_script(keys, "echo agent")


def test_onstart_script_runs_and_writes_keys_once(tmp_path):
    """The script really works in a shell: both keys land once, even when run twice (a reboot)."""
    keys = "ssh-ed25519 AAAA first@x\nssh-rsa BBBB second@y it's"
    script = onstart_script(keys, "echo started > ~/agent.log")
    for _ in range(2):
        subprocess.run(
            ["bash", "-c", script], env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}, check=True
        )
    assert (tmp_path / ".no_auto_tmux").exists()
    assert (tmp_path / ".ssh/authorized_keys").read_text().splitlines() == keys.splitlines()
    assert (tmp_path / "agent.log").read_text() == "started\n"
    assert shlex.quote("ssh-rsa BBBB second@y it's") in script


# ------------------------------------------------------------------------------ SSH endpoints
def test_instance_exposes_direct_and_proxy_ssh(rsps, vast):
    """VA-SSH: direct first (what ssh-url prints), the proxy kept as the fallback."""
    fx = load("VA-SSH.json")
    add_variant(rsps, responses.GET, VAST_URL + "/api/v0/instances/31234567/", fx["both_paths"])
    add_variant(rsps, responses.GET, VAST_URL + "/api/v0/instances/31234568/", fx["ports_22_null"])
    both = vast.get_instance("31234567")
    assert both.ssh_endpoints == (("142.112.39.215", 41201), ("ssh4.vast.ai", 34566))
    assert (both.ssh_host, both.ssh_port) == ("142.112.39.215", 41201)
    proxy_only = vast.get_instance("31234568")
    assert proxy_only.ssh_endpoints == (("ssh9.vast.ai", 21044),)
    assert (proxy_only.ssh_host, proxy_only.ssh_port) == ("ssh9.vast.ai", 21044)


def test_rate_limit_bodies_are_retried(rsps, vast):
    """VA-RATELIMIT: JSON and plain-text 429s without Retry-After back off and retry."""
    fx = load("VA-RATELIMIT.json")
    add_variant(rsps, responses.POST, BUNDLES, fx["json"])
    add_variant(rsps, responses.POST, BUNDLES, fx["text"])
    serve_offers(rsps, load("VA-SEARCH-GET.json")["offers"])
    assert len(vast.search_offers()) == 2
    assert vast.limiter.penalties == [None, None]
