"""TensorDock adapter against bodies shaped like FIELD_NOTES (providers/tensordock/fixtures/TD-*.json).

Each test names the field-notes id it covers; each failed on the adapter before issue 14.
"""

from __future__ import annotations

import json
import subprocess
from decimal import Decimal

import pytest
import responses

from inventory.providers.base import CreateRequest, OfferUnavailable, PermanentError
from inventory.providers.tensordock import TensorDock

from .conftest import TD_URL, add_variant, load

JOPLIN = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
MANASSAS = "5c2b6f1e-8a4d-4b7e-9c3f-1d2e3f4a5b6c"
KEYS = "ssh-ed25519 AAAA first@x\n\nssh-rsa BBBB second@y it's\n"


def _request(**kw) -> CreateRequest:
    args = dict(offer_id=f"{MANASSAS}:geforcertx4090-pcie-24gb:1", label="shopper-x", ssh_public_key=KEYS)
    return CreateRequest(**{**args, **kw})


def test_hosts_without_a_dedicated_ip_are_not_offered(rsps, td):
    """TD-NOPUBLICIP: we always create with useDedicatedIp, so such hosts fail every create."""
    rsps.add(responses.GET, TD_URL + "/locations", json=load("TD-NOPUBLICIP.json")["locations"])
    offers = sorted(o.provider_offer_id for o in td.search_offers())
    assert offers == [f"{JOPLIN}:geforcertx3090-pcie-24gb:1", f"{JOPLIN}:geforcertx3090-pcie-24gb:2"]


@pytest.mark.parametrize(
    ("fixture", "variant"),
    [
        ("TD-NOPUBLICIP.json", "create"),
        ("TD-STALE-NONODES.json", "no_nodes"),
        ("TD-STALE-NONODES.json", "out_of_stock_in_body"),
        ("TD-STALE-NONODES.json", "out_of_stock_array"),
    ],
)
def test_capacity_answers_are_offer_gone(rsps, td, fixture, variant):
    add_variant(rsps, responses.POST, TD_URL + "/instances", load(fixture)[variant])
    with pytest.raises(OfferUnavailable) as err:
        td.create_instance(_request())
    assert err.value.instance_id is None  # nothing was created: nothing to destroy


def test_a_validation_error_stays_permanent(rsps, td):
    body = [{"code": "custom", "message": "SSH port (22) must be forwarded for Ubuntu VMs", "path": ["x"]}]
    rsps.add(responses.POST, TD_URL + "/instances", json=body, status=400)
    with pytest.raises(PermanentError) as err:
        td.create_instance(_request())
    assert not isinstance(err.value, OfferUnavailable) and "SSH port (22)" in err.value.message


@pytest.mark.parametrize("variant", ["null_locations", "empty_locations"])
def test_nothing_in_stock_is_an_empty_menu(rsps, td, variant):
    rsps.add(responses.GET, TD_URL + "/locations", json=load("TD-LOCATIONS.json")[variant])
    assert td.search_offers() == []


def test_gpu_without_pricing_and_odd_caps(rsps, td):
    rsps.add(responses.GET, TD_URL + "/locations", json=load("TD-LOCATIONS.json")["odd"])
    offers = {o.provider_offer_id: o for o in td.search_offers()}
    assert set(offers) == {
        f"{MANASSAS}:l4-pcie-24gb:1",
        f"{MANASSAS}:geforcertx4090-pcie-24gb:1",
        # max_vcpus 7 / max_ram_gb 30 round down to what the API accepts: 6 vCPUs, 24 GB.
        f"{MANASSAS}:geforcertx4090-pcie-24gb:2:6:24",
    }
    # No pricing block: priced from what the API gives, the GPU price (was: not offered at all).
    assert offers[f"{MANASSAS}:l4-pcie-24gb:1"].price_per_hour == Decimal("0.2250")
    capped = offers[f"{MANASSAS}:geforcertx4090-pcie-24gb:2:6:24"]
    assert (capped.cpu_cores, capped.ram_gb) == (6, 24)
    # 0.37*2 + 0.003*6 + 0.002*24 + 0.00005*100 = 0.811
    assert capped.price_per_hour == Decimal("0.8110")


def test_several_keys_go_through_cloud_init_and_one_in_ssh_key(rsps, td):
    """TD-SSHKEY-LATE: ``ssh_key`` takes one key (and installs none); cloud-init writes all."""
    rsps.add(responses.POST, TD_URL + "/instances", json={"data": {"id": "vm-1", "status": "creating"}})
    assert td.create_instance(_request()) == "vm-1"
    attributes = json.loads(rsps.calls[0].request.body)["data"]["attributes"]
    assert attributes["ssh_key"] == "ssh-ed25519 AAAA first@x"
    runcmd = "\n".join(attributes["cloud_init"]["runcmd"])
    for key in ("ssh-ed25519 AAAA first@x", "ssh-rsa BBBB second@y it's"):
        assert runcmd.count(key.split()[1]) == 2  # root and user


def test_cloud_init_runcmd_really_writes_every_key(tmp_path):
    """Run the commands in a shell (paths moved under tmp) and read the files back."""
    # Not the driver repair: it would run apt-get on this machine (its own test is in the sandbox).
    commands = [c for c in TensorDock.cloud_init_runcmd(KEYS) if "shopper-driver-repair" not in c]
    script = "\n".join(commands)
    script = script.replace("/root/", f"{tmp_path}/root/").replace("/home/user/", f"{tmp_path}/user/")
    script = script.replace("chown -R user:user", "true")
    subprocess.run(["bash", "-euc", script], check=True)
    expected = ["ssh-ed25519 AAAA first@x", "ssh-rsa BBBB second@y it's"]
    assert (tmp_path / "root/.ssh/authorized_keys").read_text().splitlines() == expected
    assert (tmp_path / "user/.ssh/authorized_keys").read_text().splitlines() == expected
