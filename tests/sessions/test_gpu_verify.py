"""The handoff proves the GPU: before a rental is active, nvidia-smi over SSH must show the GPUs
that were sold. Against the fake cloud (tests/fakes.py): every FIELD_NOTES node failure mode gets
the right response (no billing, offer hidden, the user told in plain words, no key left behind).

Old code logged in with ``nvidia-smi -L || echo no-gpu-tool`` and called anything that answered
``active``: each provisioning test below that expects ``stopping`` fails there (it went active and
billed), and ``gpu_verified`` did not exist."""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from dataclasses import replace
from datetime import timedelta

import pytest
from django.urls import reverse

from inventory.models import Offer
from inventory.providers.base import STATE_STOPPED
from inventory.providers.tensordock.names import tensordock_gpu_type
from inventory.providers.vastai.names import vast_gpu_type
from inventory.sandbox import catalog
from sessions import provisioning
from sessions.models import EventCause, RentalEvent, Status
from sessions.provisioning import rental_provision
from sessions.ssh import GpuReport, gpu_mismatch, gpu_report_parse
from sessions.teardown import rental_teardown
from shopper import cli
from tests.fakes import FakeCloud

from .conftest import START, events, fresh, new_public_key

pytestmark = pytest.mark.django_db
S = Status
SMI_FAILED = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running."
)


def provision(rental, waits=None):
    rental_provision(rental_id=rental.pk, waits=waits or FakeCloud.cloud.waits)
    return fresh(rental)


# --- parsing and comparing -----------------------------------------------------------------------
def test_the_report_of_a_working_machine():
    out = (
        "NVIDIA H100 80GB HBM3, 81559, 580.126.09\nNVIDIA H100 80GB HBM3, 81559, 580.126.09\n"
        "shopper-rc=0\nCUDA Version: 13.0\n"
    )
    assert gpu_report_parse(out) == GpuReport(
        name="NVIDIA H100 80GB HBM3", count=2, memory_gb=79.6, driver="580.126.09", cuda="13.0"
    )


@pytest.mark.parametrize(
    ("output", "error"),
    [
        (f"{SMI_FAILED}\nshopper-rc=9\n", f"nvidia-smi failed (exit 9): {SMI_FAILED}"[:300]),
        (
            "sh: 1: nvidia-smi: not found\nshopper-rc=127\n",
            "nvidia-smi failed (exit 127): sh: 1: nvidia-smi: not found",
        ),
        ("shopper-rc=0\n", "nvidia-smi lists no GPU"),
        (
            "No devices were found\nshopper-rc=0\n",
            "nvidia-smi answered something unexpected: No devices were found",
        ),
        ("", "nvidia-smi failed (exit ?): no output"),
    ],
)
def test_a_machine_without_a_working_driver_is_an_error(output, error):
    assert gpu_report_parse(output).error == error


def _smi_names():
    for g in catalog.VAST_GPUS:
        yield vast_gpu_type(g.name, g.ram_mb)[0], g.smi_name, g.ram_mb
    for g in catalog.TD_GPUS:
        yield tensordock_gpu_type(g.v0_name)[0], g.smi_name, g.mem_mib


@pytest.mark.parametrize(("gpu_type", "smi_name", "mem_mib"), list(_smi_names()))
def test_every_catalog_gpu_matches_what_its_nvidia_smi_prints(gpu_type, smi_name, mem_mib):
    """A false mismatch destroys a good machine: every name the sandbox (from real nvidia-smi
    output) prints matches its offer's canonical type, with its real memory size."""
    vram = int(gpu_type.rsplit(" ", 1)[1].removesuffix("GB"))
    found = GpuReport(name=smi_name, count=1, memory_gb=round(mem_mib / 1024, 1), driver="570", cuda="12.8")
    assert gpu_mismatch(found, gpu_type=gpu_type, gpu_count=1, vram_gb=vram) == ""


def test_what_is_not_what_was_sold():
    h100 = GpuReport(name="NVIDIA H100 80GB HBM3", count=2, memory_gb=79.6, driver="570.124.04", cuda="12.8")
    sold = dict(gpu_type="H100 SXM 80GB", gpu_count=2, vram_gb=80)
    assert gpu_mismatch(h100, **sold) == ""
    a100 = GpuReport(name="NVIDIA A100-SXM4-80GB", count=2, memory_gb=80.0, driver="570", cuda="12.8")
    assert gpu_mismatch(a100, **sold) == (
        "the machine has 2× NVIDIA A100-SXM4-80GB, not the 2× H100 SXM 80GB that was rented"
    )
    assert "not the 4 that were rented" in gpu_mismatch(h100, **{**sold, "gpu_count": 4})
    assert "not the 94 GB" in gpu_mismatch(h100, **{**sold, "vram_gb": 94})
    assert gpu_mismatch(h100, **sold, cuda="12.9") == (
        "the machine runs CUDA 12.8 (driver 570.124.04), older than the CUDA 12.9 the offer advertised"
    )
    assert gpu_mismatch(h100, **sold, cuda="12.8") == gpu_mismatch(h100, **sold, cuda="12.4") == ""


# --- provisioning ----------------------------------------------------------------------------------
@pytest.fixture
def rented(rent):
    return rent().rental


def test_a_driver_repaired_during_boot_is_waited_for_and_read_again(fake, rented):
    """TD-NODRIVER: the repair takes minutes; the check keeps asking and stores what it found after."""
    fake.gpu_broken_checks = 3
    fake.gpu = {"driver": "580.126.09", "cuda": "13.0"}
    rental = provision(rented)

    assert rental.status == S.ACTIVE
    assert rental.gpu_verified == {
        "name": "NVIDIA GeForce RTX 4090", "count": 2, "memory_gb": 24.0,
        "driver": "580.126.09", "cuda": "13.0",
    }  # fmt: skip
    [waiting] = [e for e in events(rental, "info") if "do not work yet" in e.reason]
    assert SMI_FAILED[:40] in waiting.reason
    # Billing starts only once the GPUs work: three polls after the first login.
    first_login = START + timedelta(seconds=sum(fake.sleeps[:-3]))
    assert rental.active_since == first_login + timedelta(seconds=15)


def test_a_driver_that_never_works_is_torn_down_unbilled_and_the_offer_hidden(
    fake, rented, settings, django_capture_on_commit_callbacks
):
    settings.SHOPPER_GPU_VERIFY_TIMEOUT_SECONDS = 300
    fake.gpu_broken_checks = 10_000
    with django_capture_on_commit_callbacks(execute=True):
        rental = provision(rented)

    assert rental.status == S.STOPPING and rental.active_since is None
    assert (
        rental.status_detail
        == (
            "The machine had no working NVIDIA driver after 5 min "
            f"(nvidia-smi failed (exit 9): {SMI_FAILED}). It was destroyed and you pay nothing."
        )[:500]
    )
    stop = RentalEvent.objects.get(rental=rental, to_status=S.STOPPING)
    assert stop.data["cause"] == EventCause.GPU_NO_DRIVER
    assert fake.enqueued == [("sessions.tasks.teardown", rental.pk)]
    offer = Offer.objects.get(pk=rental.offer_id)
    assert offer.hidden_until is not None and offer.hidden_until > fake.now  # hidden at once
    assert not Offer.objects.visible().filter(pk=offer.pk).exists()
    assert rental_teardown(rental_id=rental.pk, waits=fake.waits)
    rental = fresh(rental)
    assert rental.status == S.DESTROYED and rental.billed_seconds() == 0 and rental.gpu_verified is None


def test_the_gpu_deadline_has_per_provider_overrides(fake, rented, settings):
    settings.SHOPPER_GPU_VERIFY_TIMEOUT_SECONDS = 300
    settings.SHOPPER_GPU_VERIFY_TIMEOUT_OVERRIDES = {"fakecloud": 900}
    fake.gpu_broken_checks = 10_000
    rental = provision(rented)
    assert rental.status_detail.startswith("The machine had no working NVIDIA driver after 15 min")


def test_a_missing_nvidia_smi_is_told_as_such(fake, rented, settings):
    settings.SHOPPER_GPU_VERIFY_TIMEOUT_SECONDS = 60
    fake.gpu_broken_checks, fake.gpu_broken_rc = 10_000, 127
    fake.gpu_broken_output = "sh: 1: nvidia-smi: not found"
    rental = provision(rented)
    assert rental.status == S.STOPPING
    assert "after 1 min (nvidia-smi failed (exit 127): sh: 1: nvidia-smi: not found)" in rental.status_detail


@pytest.mark.parametrize(
    ("gpu", "told"),
    [
        (
            {"name": "NVIDIA GeForce RTX 3090"},
            "the machine has 2× NVIDIA GeForce RTX 3090, not the 2× RTX 4090 24GB",
        ),
        ({"count": 1}, "the machine has 1 GPU(s), not the 2 that were rented"),
        ({"mem_mib": 16384}, "the machine's GPUs have 16.0 GB of memory, not the 24 GB"),
    ],
)
def test_a_machine_that_is_not_what_was_sold_is_stopped_at_the_first_look(fake, rented, gpu, told):
    fake.gpu = gpu
    rental = provision(rented)
    assert rental.status == S.STOPPING and rental.active_since is None
    assert rental.status_detail.startswith(f"The machine is not what was rented: {told}")
    assert rental.status_detail.endswith("It was destroyed and you pay nothing.")
    assert len([c for c in fake.ssh_calls if c["command"] == provisioning.GPU_QUERY]) == 1  # no waiting
    event = RentalEvent.objects.filter(rental=rental, to_status=S.STOPPING).get()
    assert event.data["provision_failed"] is True and event.data["gpu_found"]["name"]
    assert event.data["cause"] == EventCause.GPU_MISMATCH


def test_a_cuda_lie_is_caught(fake, rented):
    """VA-CUDA-LIE: the offer said CUDA 12.9, the host has 12.8 (driver 570.124.04)."""
    Offer.objects.filter(pk=rented.offer_id).update(cuda_version="12.9")
    fake.gpu = {"cuda": "12.8", "driver": "570.124.04"}
    rental = provision(rented)
    assert rental.status == S.STOPPING
    assert "runs CUDA 12.8 (driver 570.124.04), older than the CUDA 12.9 the offer advertised" in (
        rental.status_detail
    )


def test_a_machine_that_stops_right_after_starting_is_given_up_at_once(fake, rented):
    """TD-STOPS / VA-DIES: no login will ever work; old code waited the whole SSH timeout (10 min)."""

    def stop_it(instance_id):
        inst = fake.instances[instance_id]
        if inst.ssh_port:  # it ran once
            inst.state = STATE_STOPPED

    fake.hooks["get"] = stop_it
    fake.ssh_down = True
    rental = provision(rented)
    assert rental.status == S.STOPPING and rental.active_since is None
    assert rental.status_detail.startswith("The machine stopped right after starting (stopped")
    assert rental.status_detail.endswith("It was destroyed and you pay nothing.")
    stop = RentalEvent.objects.get(rental=rental, to_status=S.STOPPING)
    assert stop.data["cause"] == EventCause.MACHINE_STOPPED
    assert sum(fake.sleeps) <= 10


def test_a_machine_that_dies_while_its_driver_is_repaired_is_given_up_at_once(fake, rented, monkeypatch):
    """VA-DIES after the first login: not a 10-minute wait for a driver on a dead machine."""
    fake.gpu_broken_checks = 10_000
    real_run = fake.ssh_run

    def run_then_die(**kw):
        out = real_run(**kw)
        if len(fake.ssh_calls) == 2:
            [inst] = fake.instances.values()
            inst.state = STATE_STOPPED
        return out

    rental = provision(rented, waits=replace(fake.waits, ssh_run=run_then_die))
    assert rental.status == S.STOPPING
    assert rental.status_detail.startswith("The machine stopped right after starting (stopped")
    assert sum(fake.sleeps) <= 20  # one boot poll, two checks, one failed login


def test_keys_that_arrive_late_are_waited_for(fake, rented):
    """VA-SSH / TD-SSHKEY-LATE: auth failures for a while are "not yet"."""
    fake.ssh_fail = ["PermissionDenied: Permission denied (publickey)"] * 12
    rental = provision(rented)
    assert rental.status == S.ACTIVE and rental.gpu_verified["count"] == 2


def test_a_users_own_key_rental_that_fails_the_check_leaves_no_key_of_ours(
    fake, rent, settings, django_capture_on_commit_callbacks
):
    settings.SHOPPER_GPU_VERIFY_TIMEOUT_SECONDS = 60
    fake.gpu_broken_checks = 10_000
    own = new_public_key("laptop")
    with django_capture_on_commit_callbacks(execute=True):
        rental = provision(rent(ssh_public_key=own).rental)
    assert rental.status == S.STOPPING
    assert rental.verify_private_key_encrypted  # still needed until the machine is gone
    assert rental_teardown(rental_id=rental.pk, waits=fake.waits)
    rental = fresh(rental)
    assert rental.status == S.DESTROYED and rental.verify_private_key_encrypted == ""


def test_the_verification_key_is_made_once_and_kept_in_the_database(fake, rent):
    """A check resumed by another worker process logs in with the key the machine got."""
    own = new_public_key("laptop")
    pending = rent(ssh_public_key=own).rental
    installed = provisioning._install_keys(pending)
    assert installed.splitlines()[0] == own and installed.splitlines()[1].endswith(" shopper-verify")
    assert provisioning._install_keys(fresh(pending)) == installed  # as another process reads it
    assert provisioning._public_of(provisioning._verify_key(fresh(pending))) == installed.splitlines()[1]


# --- shown to the user -----------------------------------------------------------------------------
def test_the_api_the_page_and_the_cli_show_what_was_found(fake, rented, api_client, client_logged_in):
    rental = provision(rented)
    found = rental.gpu_verified

    body = api_client.get(f"/api/v1/sessions/{rental.pk}").json()
    assert body["gpu_verified"] == found
    page = client_logged_in.get(reverse("sessions:detail", args=[rental.pk])).content.decode()
    assert "2× NVIDIA GeForce RTX 4090 · 24.0 GB each · driver 570.133.07 · CUDA 12.8" in page
    out = io.StringIO()
    with redirect_stdout(out):
        cli.print_session(body)
    assert "gpu verified:" in out.getvalue()
    assert "2× NVIDIA GeForce RTX 4090, 24.0 GB each, driver 570.133.07, CUDA 12.8" in out.getvalue()


def test_before_verification_it_is_null_and_the_page_says_not_yet(fake, rented, api_client, client_logged_in):
    assert api_client.get(f"/api/v1/sessions/{rented.pk}").json()["gpu_verified"] is None
    page = client_logged_in.get(reverse("sessions:detail", args=[rented.pk])).content.decode()
    assert "not yet (checked with nvidia-smi before the machine is handed over)" in page


def test_an_ended_rental_that_was_never_verified_says_so(fake, rented, client_logged_in, settings):
    settings.SHOPPER_GPU_VERIFY_TIMEOUT_SECONDS = 60
    fake.gpu_broken_checks = 10_000
    rental = provision(rented)
    assert rental_teardown(rental_id=rental.pk, waits=fake.waits)
    page = client_logged_in.get(reverse("sessions:detail", args=[rental.pk])).content.decode()
    assert "never (the machine was not handed over)" in page
    assert "had no working NVIDIA driver after 1 min" in page  # the reason, in plain words


def test_the_admin_never_shows_the_verification_key(fake, rent, client, staff):
    staff.is_superuser = True
    staff.save()
    pending = rent(ssh_public_key=new_public_key("laptop")).rental
    provisioning._install_keys(pending)
    secret = fresh(pending).verify_private_key_encrypted
    assert secret
    client.force_login(staff)
    page = client.get(reverse("admin:rentals_rental_change", args=[pending.pk]))
    assert page.status_code == 200
    assert secret not in page.content.decode() and "verify_private_key" not in page.content.decode()
