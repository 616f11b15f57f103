"""RunPod and Lambda end to end (issue 17): the real sandbox process speaking their dialects, the
real adapters, real SSH logins with the handed-off key, and reconciliation of orphans and ghosts."""

from __future__ import annotations

import uuid

import pytest
import requests

from inventory import providers as registry
from inventory.models import Offer
from inventory.providers.base import CreateRequest
from sessions.deployment import deployment_id, make_label
from sessions.models import Alert, AlertKind, Rental
from sessions.reconcile import reconcile

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
PROVIDERS = ["runpod", "lambda"]
AUTH = {"Authorization": "Bearer sandbox-key"}


def cheapest(provider: str) -> Offer:
    offer = Offer.objects.visible().filter(provider=provider).order_by("price_per_hour").first()
    assert offer is not None, f"no {provider} offer on the menu"
    return offer


def rent(api, offer: Offer, **choices) -> dict:
    response = api.post(
        "/api/v1/sessions", {"offer_id": str(offer.pk), "reservation_hours": 1, **choices}, format="json"
    )
    assert response.status_code == 201, response.json()
    return response.json()


def lambda_keys(cloud) -> list[str]:
    keys = requests.get(f"{cloud.lambda_url}/ssh-keys", headers=AUTH, timeout=10).json()["data"]
    return [k["name"] for k in keys]


def test_the_menu_shows_all_four_providers(cloud):
    providers = set(Offer.objects.visible().values_list("provider", flat=True))
    assert providers == {"vastai", "tensordock", "runpod", "lambda"}
    # One model across providers: an A100 SXM4 80GB from RunPod groups with Vast's and TensorDock's.
    a100 = set(Offer.objects.filter(gpu_type="A100 SXM4 80GB").values_list("provider", flat=True))
    assert {"vastai", "tensordock"} <= a100 and a100 & {"runpod", "lambda"}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_rent_verify_ssh_done_destroyed(cloud, api, tmp_path, provider):
    from tests.e2e.conftest import ssh_login

    offer = cheapest(provider)
    created = rent(api, offer)
    private_key = created["ssh_private_key"]
    session = api.get(f"/api/v1/sessions/{created['id']}").json()
    assert session["status"] == "active", session
    rental = Rental.objects.get(pk=session["id"])
    assert rental.gpu_verified and rental.gpu_verified["count"] >= offer.gpu_count, rental.gpu_verified
    assert session["ssh"]["user"] == ("ubuntu" if provider == "lambda" else "root")
    [instance] = cloud.instances()
    assert instance["dialect"] == provider and instance["label"] == rental.label
    if provider == "lambda":
        assert lambda_keys(cloud) == [rental.label]  # the rental's own key, named by its label

    login = ssh_login(tmp_path, private_key, session["ssh"], "nvidia-smi")
    assert login.returncode == 0, login.stderr
    assert "NVIDIA-SMI" in login.stdout and "MiB" in login.stdout

    done = api.post(f"/api/v1/sessions/{session['id']}/done")
    assert done.status_code == 202
    final = api.get(f"/api/v1/sessions/{session['id']}").json()
    assert final["status"] == "destroyed", final
    assert cloud.instances() == []
    if provider == "lambda":
        assert lambda_keys(cloud) == []  # deleted at teardown
    statuses = [
        e["to_status"] for e in api.get(f"/api/v1/sessions/{session['id']}/events").json() if e["to_status"]
    ]
    assert statuses == ["pending", "provisioning", "booting", "verifying", "active", "stopping", "destroyed"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_reconcile_destroys_an_orphan_and_closes_a_ghost(cloud, api, settings, provider):
    settings.SHOPPER_ORPHAN_GRACE_SECONDS = 0
    adapter = registry.get_provider(provider)
    # An orphan: our deployment's label, no rental (a create whose rental row was lost).
    orphan_label = make_label(deployment_id(), uuid.uuid4())
    offer = cheapest(provider)
    orphan_id = adapter.create_instance(
        CreateRequest(
            offer_id=offer.provider_offer_id,
            label=orphan_label,
            ssh_public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOrphanOrphanOrphanOrphanOrphanOrphanOrph x",
        )
    )
    # A ghost: an active rental whose instance vanished behind our back.
    session = api.get(f"/api/v1/sessions/{rent(api, cheapest(provider))['id']}").json()
    assert session["status"] == "active", session
    rental = Rental.objects.get(pk=session["id"])
    adapter.destroy_instance(rental.provider_instance_id)

    first = reconcile(provider_name=provider)
    assert first.aborted == "" and first.orphans_found == [orphan_id], first
    assert Alert.objects.filter(kind=AlertKind.ORPHAN, provider_instance_id=orphan_id).exists()
    second = reconcile(provider_name=provider)
    assert second.orphans_destroyed == [orphan_id] and second.ghosts == [str(rental.pk)], second
    rental.refresh_from_db()
    assert rental.status in ("destroyed", "stopping"), rental.status
    assert Alert.objects.filter(kind=AlertKind.GHOST, rental=rental).exists()
    assert cloud.instances() == []
    if provider == "lambda":
        # The orphan's key (registered by its create) went with it: destroy deletes the key too.
        assert lambda_keys(cloud) == []


def test_lambda_orphan_key_without_instance_is_deleted(cloud, settings):
    """A crash between registering the key and launching leaves a key and no instance."""
    label = make_label(deployment_id(), uuid.uuid4())
    requests.post(
        f"{cloud.lambda_url}/ssh-keys", json={"name": label, "public_key": "ssh-ed25519 AAAA x"}, headers=AUTH
    )
    requests.post(
        f"{cloud.lambda_url}/ssh-keys",
        json={"name": "alice-laptop", "public_key": "ssh-ed25519 BBBB a"},
        headers=AUTH,
    )
    result = reconcile(provider_name="lambda")
    assert result.orphan_keys_deleted == [label]
    assert lambda_keys(cloud) == ["alice-laptop"]


@pytest.mark.parametrize(
    "provider,rules,expected",
    [
        ("runpod", [{"dialect": "runpod", "no_capacity": 1.0}], "failed"),
        ("lambda", [{"dialect": "lambda", "no_capacity": 1.0}], "failed"),
        # With failover (the default), a full region moves the rental to a comparable offer.
        ("lambda", [{"dialect": "lambda", "no_capacity": 1.0}], "active-after-failover"),
        ("runpod", [{"dialect": "runpod", "start_ssh_422": True}], "active"),
        ("runpod", [{"dialect": "runpod", "key_delay_s": [1, 2]}], "active"),
        ("runpod", [{"dialect": "runpod", "op": "get", "rate_limit_burst": 2}], "active"),
        ("lambda", [{"dialect": "lambda", "op": "get", "rate_limit_burst": 2}], "active"),
        ("runpod", [{"dialect": "runpod", "create_error_but_created": 1}], "active"),
        ("lambda", [{"dialect": "lambda", "create_error_but_created": 1}], "active"),
    ],
)
def test_faults_end_with_nothing_left(cloud, api, settings, provider, rules, expected):
    settings.SHOPPER_LABEL_LOOKUP_INTERVAL_SECONDS = 0.2
    cloud.set_faults({"rules": rules})
    # Failed cases test the refusal itself: failover off (it has its own case and tests).
    created = rent(api, cheapest(provider), failover=expected != "failed")
    rental = Rental.objects.get(pk=created["id"])
    statuses = list(rental.events.exclude(to_status="").values_list("to_status", flat=True))
    reasons = list(rental.events.values_list("reason", flat=True))
    if expected == "active-after-failover":
        assert statuses[-1] == "active" and rental.events.filter(data__failover=True).exists(), reasons
        assert Rental.objects.get(pk=rental.pk).provider_offer_id != cheapest(provider).provider_offer_id
    else:
        assert expected in statuses, (statuses, reasons)
    cloud.set_faults({"rules": []})
    api.delete(f"/api/v1/sessions/{rental.pk}")
    rental.refresh_from_db()
    assert rental.status in ("destroyed", "failed")
    assert cloud.instances() == []
    if provider == "lambda":
        assert lambda_keys(cloud) == []


def test_runpod_pod_without_public_ip_never_hands_off(cloud, api, settings):
    """RP-NOPUBLICIP: running, but no direct SSH (the proxy is interactive only): it fails at the
    boot deadline and is destroyed, nothing billed."""
    settings.SHOPPER_BOOT_TIMEOUT_SECONDS = 3
    cloud.set_faults({"rules": [{"dialect": "runpod", "no_public_ip": 1.0}]})
    created = rent(api, cheapest("runpod"))
    rental = Rental.objects.get(pk=created["id"])
    assert rental.status in ("failed", "destroyed"), rental.status
    assert rental.active_since is None
    assert cloud.instances() == []
