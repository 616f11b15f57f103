from __future__ import annotations

import pytest

from inventory.models import Offer
from sessions.models import Rental

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def cheapest(provider: str, **filters) -> Offer:
    return Offer.objects.visible().filter(provider=provider, **filters).order_by("price_per_hour").first()


def rent(api, offer, **body):
    return api.post(
        "/api/v1/sessions", {"offer_id": str(offer.pk), "reservation_hours": 1, **body}, format="json"
    )


@pytest.mark.parametrize("provider", ["vastai", "tensordock"])
def test_rent_ssh_done_destroyed_against_the_sandbox(cloud, api, tmp_path, provider):
    from tests.e2e.conftest import ssh_login

    offer = cheapest(provider)
    response = rent(api, offer)
    assert response.status_code == 201, response.json()
    private_key = response.json()["ssh_private_key"]
    session = api.get(f"/api/v1/sessions/{response.json()['id']}").json()
    assert session["status"] == "active", session
    assert session["ssh"]["command"].startswith("ssh ")

    login = ssh_login(tmp_path, private_key, session["ssh"], "nvidia-smi")
    assert login.returncode == 0, login.stderr
    model_words = [w for w in offer.gpu_type.split()[:-1] if w != "RTX"]  # "A100 PCIE 80GB" -> A100, PCIE
    assert any(w in login.stdout for w in model_words), login.stdout
    assert len(cloud.instances()) == 1

    done = api.post(f"/api/v1/sessions/{session['id']}/done")
    assert done.status_code == 202
    final = api.get(f"/api/v1/sessions/{session['id']}").json()
    assert final["status"] == "destroyed", final
    assert cloud.instances() == []
    events = [
        e["to_status"] for e in api.get(f"/api/v1/sessions/{session['id']}/events").json() if e["to_status"]
    ]
    assert events == ["pending", "provisioning", "booting", "verifying", "active", "stopping", "destroyed"]


def test_a_key_that_was_not_handed_off_is_refused(cloud, api, tmp_path):
    from sessions.keys import keypair_generate
    from tests.e2e.conftest import ssh_login

    session = rent(api, cheapest("vastai")).json()
    session = api.get(f"/api/v1/sessions/{session['id']}").json()
    _, stranger = keypair_generate("stranger")
    login = ssh_login(tmp_path, stranger, session["ssh"], "true")
    assert login.returncode != 0
    api.delete(f"/api/v1/sessions/{session['id']}")
    assert cloud.instances() == []


@pytest.mark.parametrize(
    "provider,rules,expected",
    [
        ("vastai", [{"dialect": "vastai", "op": "create", "rate_limit_burst": 2}], "active"),
        ("tensordock", [{"dialect": "tensordock", "op": "get", "rate_limit_burst": 2}], "active"),
        ("vastai", [{"dialect": "vastai", "op": "create", "fail_next": 1, "error_status": 502}], "failed"),
        ("vastai", [{"dialect": "vastai", "create_error_but_created": 1}], "active"),
        ("tensordock", [{"dialect": "tensordock", "create_error_but_created": 1}], "active"),
        (
            "vastai",
            [{"dialect": "vastai", "create_error_but_created": 1, "create_error_mode": "success_false"}],
            "stopping",
        ),
        ("vastai", [{"dialect": "vastai", "create_error_but_created": 1}, {"listing_lag_s": 1}], "active"),
        ("vastai", [{"dialect": "vastai", "op": ["get", "list"], "slow_ms": 300}], "active"),
    ],
)
def test_injected_faults_end_with_no_instance_left(cloud, api, settings, provider, rules, expected):
    settings.SHOPPER_LABEL_LOOKUP_INTERVAL_SECONDS = 0.5
    cloud.set_faults({"rules": rules})
    response = rent(api, cheapest(provider))
    assert response.status_code == 201, response.json()
    rental = Rental.objects.get(pk=response.json()["id"])
    statuses = list(rental.events.exclude(to_status="").values_list("to_status", flat=True))
    assert expected in statuses, (statuses, list(rental.events.values_list("reason", flat=True)))
    cloud.set_faults({"rules": []})
    api.delete(f"/api/v1/sessions/{rental.pk}")
    rental.refresh_from_db()
    assert rental.status in ("destroyed", "failed")
    assert cloud.instances() == []


def test_destroy_failing_several_times_is_retried_until_confirmed(cloud, api):
    cloud.set_faults({"rules": [{"destroy_fail_times": 3}]})
    session = rent(api, cheapest("tensordock")).json()
    response = api.post(f"/api/v1/sessions/{session['id']}/done")
    assert response.status_code == 202
    rental = Rental.objects.get(pk=session["id"])
    assert rental.status == "destroyed"
    assert rental.events.filter(kind="error", data__cause="destroy_failed").count() == 3
    assert cloud.instances() == []
