"""The offline kill switch: ``gpu-shopper cleanup-orphans --deployment ID`` (shopper/killswitch.py).

Real processes, no server: the sandbox cloud runs as a subprocess, machines are created in it
through the real adapters under several labels, and the command runs as its own process with
only provider keys and URLs in its environment (no DJANGO_SETTINGS_MODULE, no DATABASE_URL, no
shopper running). On the old code the subcommand does not exist (exit 2, usage error), so every
test here fails there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from inventory.providers.base import CreateRequest, NotFound
from inventory.providers.tensordock import TensorDock
from inventory.providers.vastai import VastAI
from inventory.sandbox.testing import PROJECT_ROOT, running_sandbox
from sessions.deployment import make_label
from tests.sandbox._util import make_key


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    with running_sandbox(tmp_path_factory.mktemp("killswitch"), boot_delay=0) as sb:
        yield sb


@pytest.fixture
def fleet(sandbox, tmp_path):
    """Machines of deployment "prod" on both providers, beside staging's, an unscoped one and a
    stranger's: {name: (adapter, instance id)}."""
    sandbox.reset()
    _, public_key = make_key(tmp_path)
    vast = VastAI(base_url=sandbox.vastai_url, api_key="sandbox-key", min_interval=0.02)
    td = TensorDock(base_url=sandbox.tensordock_url, api_key="sandbox-token", min_interval=0.02)
    vast_offers = iter(o.provider_offer_id for o in vast.search_offers() if o.gpu_count == 1)
    td_offers = iter(o.provider_offer_id for o in td.search_offers() if o.gpu_count == 1)
    wanted = {
        "prod_vast_1": (vast, vast_offers, make_label("prod", uuid.uuid4())),
        "prod_vast_2": (vast, vast_offers, make_label("prod", uuid.uuid4())),
        "prod_td": (td, td_offers, make_label("prod", uuid.uuid4())),
        "staging_vast": (vast, vast_offers, make_label("staging", uuid.uuid4())),
        "prodeu_td": (td, td_offers, make_label("prodeu", uuid.uuid4())),
        "unscoped_td": (td, td_offers, f"shopper-{uuid.uuid4()}"),
        "stranger_vast": (vast, vast_offers, "my-own-training-box"),
    }
    out = {}
    for name, (adapter, offers, label) in wanted.items():
        request = CreateRequest(offer_id=next(offers), label=label, ssh_public_key=public_key)
        out[name] = (adapter, adapter.create_instance(request))
    return out


def exists(adapter, instance_id: str) -> bool:
    try:
        adapter.get_instance(instance_id)
    except NotFound:
        return False
    return True


def kill_switch(sandbox, *args: str, stdin: str = ""):
    """The command as its own process, with provider keys and URLs only."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "VASTAI_API_KEY": "sandbox-key",
        "VASTAI_API_URL": sandbox.vastai_url,
        "TENSORDOCK_API_TOKEN": "sandbox-token",
        "TENSORDOCK_API_URL": sandbox.tensordock_url,
        "PROVIDER_MIN_INTERVAL_SECONDS": "0.02",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "shopper.cli", "cleanup-orphans", *args],
        cwd=PROJECT_ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_it_lists_only_the_deployments_machines_with_age_and_price(sandbox, fleet):
    code, out, err = kill_switch(sandbox, "--deployment", "prod")

    assert code == 0, err
    for name in ("prod_vast_1", "prod_vast_2", "prod_td"):
        assert fleet[name][1] in out
    for name in ("staging_vast", "prodeu_td", "unscoped_td", "stranger_vast"):
        assert f" {fleet[name][1]} " not in out
    assert "3 machine(s) of deployment prod" in out
    assert "age" in out and "$/h" in out
    assert "ImproperlyConfigured" not in err and "Traceback" not in err
    assert all(exists(*fleet[name]) for name in fleet)  # listing destroys nothing


def test_a_wrong_confirmation_destroys_nothing(sandbox, fleet):
    code, out, _ = kill_switch(sandbox, "--deployment", "prod", "--destroy", stdin="staging\n")

    assert code == 1
    assert "Nothing was destroyed" in out
    assert all(exists(*fleet[name]) for name in fleet)


def test_destroy_after_the_typed_id_destroys_each_and_waits_for_the_provider(sandbox, fleet):
    code, out, err = kill_switch(
        sandbox, "--deployment", "prod", "--destroy", "--interval", "0.2", stdin="prod\n"
    )

    assert code == 0, out + err
    assert "3 destroyed and confirmed gone, 0 not confirmed" in out
    for name in ("prod_vast_1", "prod_vast_2", "prod_td"):
        assert not exists(*fleet[name]), name
    for name in ("staging_vast", "prodeu_td", "unscoped_td", "stranger_vast"):
        assert exists(*fleet[name]), name

    # Run again (a script with --yes): nothing left of prod.
    code, out, _ = kill_switch(sandbox, "--deployment", "prod", "--destroy", "--yes")
    assert code == 0 and "0 machine(s) of deployment prod" in out


def test_unscoped_labels_only_when_asked(sandbox, fleet):
    code, out, _ = kill_switch(sandbox, "--deployment", "staging", "--unscoped")

    assert code == 0
    assert fleet["staging_vast"][1] in out and fleet["unscoped_td"][1] in out
    assert "2 machine(s) of deployment staging" in out


def test_a_failing_listing_is_an_error_never_nothing_there(sandbox, fleet):
    failing = {"dialect": "vastai", "op": "list", "error_rate": 1.0, "error_status": 503}
    sandbox.set_faults({"rules": [failing]})
    try:
        code, out, err = kill_switch(sandbox, "--deployment", "prod", "--destroy", "--yes")
    finally:
        sandbox.set_faults({"rules": []})

    assert code == 1
    assert "vastai: listing failed" in out + err
    assert not exists(*fleet["prod_td"])  # the provider that answered is still cleaned up
    assert exists(*fleet["prod_vast_1"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--deployment", "Prod-EU"], "is not valid"),
        (["--deployment", ""], "is not valid"),
    ],
)
def test_bad_input_is_a_clear_usage_error_and_touches_nothing(sandbox, fleet, args, message):
    code, out, err = kill_switch(sandbox, *args, "--destroy", "--yes")
    assert code == 2 and message in out + err
    assert all(exists(*fleet[name]) for name in fleet)


def test_no_provider_key_is_a_clear_usage_error(sandbox):
    proc = subprocess.run(
        [sys.executable, "-m", "shopper.cli", "cleanup-orphans", "--deployment", "prod"],
        cwd=PROJECT_ROOT,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "no provider key" in proc.stdout + proc.stderr
