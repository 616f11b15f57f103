"""Rent-time choices (issue 19) and honest prices (issue 14), against the fake cloud registered
under the real providers' names (so their limits apply): presets, disk, ports and the start-up
command are checked before anything is rented; the price at the disk asked for is the one shown,
reserved and stored; the instance's own rate is read back and billed; mapped ports and the
inference health check reach the session; "Rent again" finds a comparable offer."""

from __future__ import annotations

import http.server
import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from costs.pricing import charge, price_per_hour
from inventory.models import Offer
from sessions import presets, services
from sessions.models import Rental, Status
from sessions.provisioning import rental_health_check, rental_provision, rentals_health_check

from .conftest import events, fresh

pytestmark = pytest.mark.django_db
S = Status


@pytest.fixture
def fake_cloud(fake_cloud, request):
    """The fake cloud under a real provider's name (default vastai; parametrize to change)."""
    name = getattr(request, "param", "vastai")
    return lambda: fake_cloud(name)


@pytest.fixture
def offer(fake, make_offer):
    """$0.5000/h at the default disk, storage $0.000278 per GB·h (Vast: $0.20/GB/month), up to 200 GB."""
    fake.add_offer("v-1", "0.5000")
    limits = presets.limits_for(fake.name)
    return make_offer(
        provider=fake.name, provider_offer_id="v-1", price_per_hour="0.5000",
        storage_price_per_gb_hour=Decimal("0.000278"), disk_gb_default=limits.disk_default_gb,
        max_disk_gb=1000, inet_down_price_per_gb=Decimal("0.0050"), inet_up_price_per_gb=Decimal("0.0020"),
    )  # fmt: skip


def post(api_client, offer, **body):
    return api_client.post(
        "/api/v1/sessions", {"offer_id": str(offer.pk), "reservation_hours": "2", **body}, format="json"
    )


# --- honest prices ----------------------------------------------------------------------------
def test_the_price_shown_reserved_and_stored_is_the_machines_at_the_disk_asked(
    fake, offer, user, client, monkeypatch
):
    reserved = []
    import costs.services

    real = costs.services.budget_reserve
    monkeypatch.setattr(
        costs.services, "budget_reserve", lambda **kw: reserved.append(kw["estimated_cost"]) or real(**kw)
    )
    client.force_login(user)
    page = client.get(
        reverse("sessions:rent_estimate", args=[offer.pk]), {"reservation_hours": "2", "disk_gb": "100"}
    )

    created = services.rental_create(user=user, offer_id=offer.pk, reservation_hours=2, disk_gb=100)

    # 0.5000 + 90 GB × 0.000278 = 0.52502 -> 0.5250 per hour; the old code stored 0.5000.
    rental = created.rental
    assert rental.price_per_hour == rental.shown_price_per_hour == Decimal("0.5250")
    assert reserved == [charge(price_per_hour(Decimal("0.5250")), Decimal(2))]
    # The page's estimate is the reserved amount, to the cent, and names the traffic prices.
    html = page.content.decode()
    assert f"${reserved[0]}" in html and "$1.05" in html
    assert "with 100 GB disk" in html
    assert "$0.0050/GB down" in html
    assert '<span id="rent-price" hx-swap-oob="true">$0.5250/h</span>' in html  # the button's price


def test_a_disk_the_offer_has_no_storage_price_for_is_refused(fake, offer, user):
    Offer.objects.filter(pk=offer.pk).update(storage_price_per_gb_hour=None)
    with pytest.raises(Exception) as caught:
        services.rental_create(user=user, offer_id=offer.pk, reservation_hours=2, disk_gb=100)
    assert "does not say what storage costs" in str(caught.value)
    assert Rental.objects.count() == 0


def provisioned(fake, user, **choices) -> Rental:
    created = services.rental_create(user=user, offer_id=fake_offer_pk(), reservation_hours=2, **choices)
    rental_provision(rental_id=created.rental.pk, waits=fake.waits)
    return fresh(created.rental)


def fake_offer_pk() -> int:
    return Offer.objects.get(provider_offer_id="v-1").pk


def test_the_instances_own_rate_is_billed_and_a_difference_over_1_percent_is_on_the_timeline(
    fake, offer, user
):
    fake.instance_price = Decimal("0.6000")  # the provider bills 20 % more than the menu said

    rental = provisioned(fake, user)

    assert rental.status == S.ACTIVE
    assert rental.price_per_hour == Decimal("0.6000")
    assert rental.shown_price_per_hour == Decimal("0.5000")
    [warning] = events(rental, "warning")
    assert "$0.6000/h, +20.00% from the $0.5000/h you were shown" in warning.reason
    assert warning.data == {"price_shown": "0.5000", "price_billed": "0.6000", "difference_percent": "20.00"}
    # Billed at the read-back rate: one hour costs $0.60, not $0.50.
    assert rental.cost_so_far(now=rental.active_since + timedelta(hours=1)) == Decimal("0.60")


def test_a_read_back_within_1_percent_is_billed_without_a_warning(fake, offer, user):
    fake.instance_price = Decimal("0.5040")

    rental = provisioned(fake, user)

    assert rental.price_per_hour == Decimal("0.5040")
    assert events(rental, "warning") == []


def test_the_session_page_shows_a_billed_price_other_than_the_one_shown(fake, offer, user, client):
    fake.instance_price = Decimal("0.6000")
    rental = provisioned(fake, user)
    client.force_login(user)
    html = client.get(reverse("sessions:detail", args=[rental.pk])).content.decode()
    assert "bills this machine $0.6000/h; you were shown $0.5000/h" in html


# --- choices checked before anything is rented ---------------------------------------------
@pytest.mark.parametrize("fake_cloud", ["tensordock"], indirect=True)
@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ({"preset": "pytorch"}, "preset", "TensorDock rents virtual machines"),
        ({"preset": "vllm"}, "preset", "TensorDock rents virtual machines"),
        ({"image": "pytorch/pytorch:latest"}, "image", "not container images"),
        ({"ports": [8888]}, "ports", "TD-PORTFWD"),
        ({"disk_gb": 50}, "disk_gb", "100 to 1000 GB; you asked 50 GB"),
    ],
)
def test_tensordock_refuses_what_it_cannot_honour_with_the_reason_and_rents_nothing(
    fake, offer, api_client, body, field, reason
):
    response = post(api_client, offer, **body)

    assert response.status_code == 400, response.json()
    assert reason in " ".join(response.json()["errors"][field])
    assert Rental.objects.count() == 0
    assert fake.calls == []  # not even the offer re-check: nothing reached the provider


@pytest.mark.parametrize(
    ("fake_cloud", "body", "field", "reason"),
    [
        ("runpod", {"preset": "vllm"}, "preset", "images that start sshd"),
        ("runpod", {"disk_gb": 5}, "disk_gb", "10 to 1000 GB; you asked 5 GB"),
        ("lambda", {"preset": "vllm"}, "preset", "Lambda rents virtual machines"),
        ("lambda", {"image": "pytorch/pytorch:latest"}, "image", "not container images"),
        ("lambda", {"ports": [8888]}, "ports", "lets in only SSH"),
        ("lambda", {"disk_gb": 50}, "disk_gb", "fixed disk of 1000 GB"),
    ],
    indirect=["fake_cloud"],
)
def test_runpod_and_lambda_refuse_what_they_cannot_honour_and_rent_nothing(
    fake, offer, api_client, body, field, reason
):
    response = post(api_client, offer, **body)

    assert response.status_code == 400, response.json()
    assert reason in " ".join(response.json()["errors"][field])
    assert Rental.objects.count() == 0
    assert fake.calls == []


@pytest.mark.parametrize(
    ("provider", "body", "image", "disk", "ports"),
    [
        ("runpod", {}, "runpod/base:0.6.2-cuda12.4.1", 40, ()),
        ("runpod", {"preset": "pytorch", "ports": [8888]}, presets._RUNPOD_TORCH, 40, (8888,)),
        ("lambda", {}, "lambda-stack", None, ()),
        ("lambda", {"preset": "pytorch", "disk_gb": 1000}, "lambda-stack", 1000, ()),
    ],
)
def test_runpod_and_lambda_presets(provider, body, image, disk, ports):
    choices = presets.choices_check(provider=provider, max_disk_gb=1000, **body)
    assert (choices.image, choices.disk_gb, choices.ports) == (image, disk, ports)
    assert all(p["image"] or p["refused"] for p in presets.presets_for(provider))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"ports": [22]}, "ports"),
        ({"ports": [8799]}, "ports"),
        ({"ports": [70000]}, "ports"),
        ({"ports": "8888"}, "ports"),
        ({"disk_gb": 5}, "disk_gb"),
        ({"disk_gb": 1001}, "disk_gb"),
        ({"preset": "tensorflow"}, "preset"),
        ({"preset": "pytorch", "image": "ubuntu:22.04"}, "image"),
        ({"image": "two words"}, "image"),
        ({"onstart": "x" * 4001}, "onstart"),
    ],
)
def test_bad_choices_are_a_400_naming_the_field_and_change_nothing(fake, offer, api_client, body, field):
    response = post(api_client, offer, **body)

    assert response.status_code == 400, response.json()
    assert field in response.json()["errors"]
    assert Rental.objects.count() == 0
    assert fake.count("create") == 0


def test_a_vllm_preset_is_created_with_its_image_port_and_start_up_and_the_port_is_shown_once_active(
    fake, offer, api_client, user
):
    fake.boot_polls = 3
    response = post(api_client, offer, preset="vllm", onstart="echo hello > /root/hello")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["ports"] == [{"port": 8000, "address": None, "url": None}]
    assert (body["preset"], body["image"], body["disk_gb"]) == ("vllm", "vllm/vllm-openai:v0.6.6", 10)

    rental_provision(rental_id=body["id"], waits=fake.waits)

    [request] = fake.args("create")
    assert request.ports == (8000,)
    assert request.image == "vllm/vllm-openai:v0.6.6"
    # The preset's server and the user's command run in the background before the node agent starts.
    user_part, agent_part = request.onstart.split("# Cloud GPU Shopper: start the node agent")
    assert "vllm.entrypoints.openai.api_server" in user_part and "echo hello > /root/hello" in user_part
    assert "unset SHOPPER_AGENT_TOKEN" in user_part and "agent.py" in agent_part
    session = api_client.get(f"/api/v1/sessions/{body['id']}").json()
    [inst] = fake.instances.values()
    host, port = inst.ports[8000]
    assert session["status"] == "active"
    assert session["ports"] == [{"port": 8000, "address": f"{host}:{port}", "url": f"http://{host}:{port}/"}]


def test_explicit_ports_replace_the_presets_and_an_empty_list_exposes_none(fake, offer, api_client):
    assert post(api_client, offer, preset="vllm", ports=[]).json()["ports"] == []
    both = post(api_client, offer, preset="pytorch", ports=[8888, 6006, 8888]).json()["ports"]
    assert [p["port"] for p in both] == [8888, 6006]


# --- the inference health check ---------------------------------------------------------------
class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def health_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_the_page_says_when_the_inference_servers_health_check_answers(
    fake, make_rental, user, client, health_server
):
    rental = make_rental(
        S.ACTIVE,
        preset="vllm",
        ports=[8000],
        mapped_ports={"8000": "127.0.0.1:1"},
        active_since=timezone.now(),
    )
    client.force_login(user)
    assert not rental_health_check(rental)  # nothing listens on port 1
    assert (
        "waiting for the inference server"
        in client.get(reverse("sessions:detail", args=[rental.pk])).content.decode()
    )

    Rental.objects.filter(pk=rental.pk).update(mapped_ports={"8000": f"127.0.0.1:{health_server}"})
    assert rentals_health_check() == 1

    rental = fresh(rental)
    assert rental.health_ok_at is not None
    [info] = [e for e in events(rental, "info") if "health check" in e.reason]
    assert f"http://127.0.0.1:{health_server}/health" in info.reason
    html = client.get(reverse("sessions:detail", args=[rental.pk])).content.decode()
    assert "health check (<code>/health</code>) answered" in html
    assert rentals_health_check() == 0  # asked until it first answers, then never again


# --- rent again -------------------------------------------------------------------------------
def test_rent_again_opens_the_rent_page_of_a_fresh_comparable_offer_with_the_same_choices(
    fake, offer, make_offer, user, client
):
    rental = services.rental_create(
        user=user, offer_id=offer.pk, reservation_hours=2, preset="pytorch", disk_gb=40, ports=[8888, 6006],
        onstart="pip install wandb",
    ).rental  # fmt: skip
    Offer.objects.filter(pk=offer.pk).update(available=False)  # that offer is gone now
    other = make_offer(provider=fake.name, provider_offer_id="v-2", price_per_hour="0.7000", max_disk_gb=20)
    fresh_offer = make_offer(
        provider=fake.name, provider_offer_id="v-3", price_per_hour="0.9000", max_disk_gb=100,
        storage_price_per_gb_hour=Decimal("0.0003"), disk_gb_default=10,
    )  # fmt: skip
    client.force_login(user)

    response = client.get(reverse("sessions:rent_again", args=[rental.pk]))

    # v-2 is cheaper but cannot give 40 GB: the comparable offer is v-3.
    assert other.pk != fresh_offer.pk
    assert response.status_code == 200
    html = response.content.decode()
    assert f'action="{reverse("sessions:rent", args=[fresh_offer.pk])}"' in html
    assert 'value="pytorch" id="id_preset_pytorch" checked' in html
    assert 'value="40"' in html and 'value="8888, 6006"' in html and "pip install wandb</textarea>" in html
    assert 'value="2"' in html or 'value="2.0"' in html


def test_rent_again_without_a_comparable_offer_says_so(fake, offer, user, client):
    rental = services.rental_create(user=user, offer_id=offer.pk, reservation_hours=2).rental
    Offer.objects.filter(pk=offer.pk).update(available=False)
    client.force_login(user)
    response = client.get(reverse("sessions:rent_again", args=[rental.pk]), follow=True)
    assert "is offered now that fits this session" in response.content.decode()


def test_rent_again_of_another_users_session_is_a_404(fake, offer, user, client, django_user_model):
    rental = services.rental_create(user=user, offer_id=offer.pk, reservation_hours=2).rental
    client.force_login(django_user_model.objects.create_user("mallory", password="x"))
    assert client.get(reverse("sessions:rent_again", args=[rental.pk])).status_code == 404
