"""Every command against the real app served over HTTP (pytest-django's ``live_server``)."""

from __future__ import annotations

import json
import re
import stat
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from sessions import services
from sessions.models import Rental, Status
from shopper import cli
from tests.factories import RentalFactory

VALID_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHq7vQ7N4fK8m0s6p7D0J8u1g9xk8aZq6JQnq1m6tq1a me@laptop"


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- inventory ------------------------------------------------------------------------------
def test_inventory_prints_an_aligned_table(shopper, run, make_offer):
    cheap = make_offer(gpu_type="RTX 3090 24GB", price_per_hour="0.3000", location="Oregon, US")
    big = make_offer(
        provider="tensordock", gpu_type="A100 SXM4 80GB", vram_gb=80, gpu_count=4, price_per_hour="6.0000"
    )
    code, out, err = run("inventory")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "GPU", "COUNT", "VRAM", "$/H", "$/GPU·H", "LOCATION", "RELIABILITY",
                                "CONFIDENCE", "PROVIDER", "$/TFLOP·H"]  # fmt: skip
    # No history yet: the provider's prior, labelled "new" (inventory/confidence.py PRIORS).
    assert "new 70%" in lines[2] and "new 30%" in lines[3]
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].split()[0] == str(cheap.pk) and "RTX 3090 24GB" in lines[2] and "0.3000" in lines[2]
    assert lines[3].split()[0] == str(big.pk) and "1.5000" in lines[3] and "tensordock" in lines[3]
    # aligned: text columns start together, number columns end together
    assert lines[0].index("GPU ") == lines[2].index("RTX") == lines[3].index("A100")
    assert lines[0].index("PROVIDER") == lines[2].index("vastai") == lines[3].index("tensordock")
    ends = {lines[0].index("$/H") + 3, lines[2].index("0.3000") + 6, lines[3].index("6.0000") + 6}
    assert len(ends) == 1
    assert lines[-1] == "2 of 2 offers"


def test_inventory_filters_sort_and_json(shopper, run, make_offer):
    make_offer(gpu_type="RTX 3090 24GB", price_per_hour="0.3000")
    a100 = make_offer(gpu_type="A100 SXM4 80GB", vram_gb=80, price_per_hour="2.0000")
    h100 = make_offer(gpu_type="H100 SXM5 80GB", vram_gb=80, price_per_hour="3.0000")
    code, out, _ = run("inventory", "--min-vram", "48", "--sort", "-price", "--json")
    assert code == 0
    page = json.loads(out)
    assert [o["id"] for o in page["results"]] == [str(h100.pk), str(a100.pk)]
    assert page["count"] == 2 and page["results"][0]["price_per_hour"] == "3.0000"
    code, out, _ = run("inventory", "--gpu", "a100", "--max-price", "5", "--json")
    assert [o["id"] for o in json.loads(out)["results"]] == [str(a100.pk)]
    code, out, _ = run("inventory", "--page-size", "1", "--page", "2")
    assert code == 0 and "2 of 3 offers" not in out and "1 of 3 offers (page 2; next: --page 3)" in out
    code, out, _ = run("inventory", "--gpu", "nothing-like-this")
    assert code == 0 and out.strip() == "No offers match."


def test_a_bad_filter_is_exit_1_with_the_servers_message(shopper, run):
    code, out, err = run("inventory", "--min-reliability", "2")
    assert code == 1 and out == ""
    assert err.startswith("error: min_reliability: ") and err.rstrip().endswith("(invalid)")
    assert err.count("\n") == 1
    code, _, err = run("inventory", "--page-size", "0")
    assert code == 1 and "page_size" in err


# --- auth -----------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["inventory"], ["sessions"], ["costs"], ["provision", "1", "--hours", "1"]])
def test_a_bad_token_is_exit_2_with_one_line(shopper, run, monkeypatch, argv):
    monkeypatch.setenv(cli.ENV_TOKEN, "not-a-real-token")
    code, out, err = run(*argv)
    assert code == 2 and out == ""
    assert err == "error: Invalid, expired or revoked token. (invalid_token)\n"
    assert not Rental.objects.exists()


def test_the_saved_config_works_without_environment(live_server, token, run, make_offer):
    offer = make_offer()
    assert run("config", "--url", live_server.url, "--token", token)[0] == 0
    code, out, _ = run("inventory", "--json")
    assert code == 0 and json.loads(out)["results"][0]["id"] == str(offer.pk)


def test_the_environment_overrides_a_stale_config(shopper, token, run, monkeypatch):
    monkeypatch.delenv(cli.ENV_URL)
    monkeypatch.delenv(cli.ENV_TOKEN)
    run("config", "--url", "http://127.0.0.1:9", "--token", "stale-token-000000")
    assert run("sessions")[0] == 4  # the saved URL is dead
    monkeypatch.setenv(cli.ENV_URL, shopper.url)
    assert run("sessions")[0] == 2  # reached, but the saved token is bad
    monkeypatch.setenv(cli.ENV_TOKEN, token)
    assert run("sessions") == (0, "No sessions.\n", "")


# --- provision ------------------------------------------------------------------------------
def test_provision_saves_the_generated_key_0600_where_the_ssh_command_expects_it(
    shopper, run, offer, cloud, home
):
    code, out, err = run("provision", str(offer.pk), "--hours", "2")
    assert code == 0, err
    rental = Rental.objects.get()
    assert cloud == [("sessions.tasks.provision", rental.pk)]
    key = home / ".ssh" / f"shopper-{str(rental.pk)[:8]}.pem"
    assert key.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert mode(key) == 0o600 and mode(key.parent) == 0o700
    assert f"Session {rental.pk} created" in out and f"Private key saved to {key}" in out
    assert f"gpu-shopper show {rental.pk}" in out
    assert rental.reservation_ends_at - rental.created_at == timedelta(hours=2)

    # the server's ssh command names exactly that file
    services.rental_transition(rental, Status.PROVISIONING)
    services.rental_transition(rental, Status.BOOTING)
    services.rental_transition(rental, Status.VERIFYING)
    services.rental_transition(
        rental, Status.ACTIVE, ssh_host="203.0.113.5", ssh_port=41201, ssh_user="root",
        active_since=timezone.now(),
    )  # fmt: skip
    code, out, _ = run("show", str(rental.pk)[:8])
    assert code == 0
    command = f"ssh -i ~/.ssh/{key.name} -p 41201 root@203.0.113.5"
    assert command in out and "not on this machine" not in out
    key.unlink()
    assert "not on this machine" in run("show", str(rental.pk))[1]


def test_provision_wait_prints_progress_then_the_ssh_command(shopper, run, offer, monkeypatch, home):
    steps = [
        (Status.PROVISIONING, "Creating the instance", {}),
        (Status.BOOTING, "Booting", {}),
        (Status.VERIFYING, "Checking SSH", {}),
        (Status.ACTIVE, "Ready", dict(ssh_host="198.51.100.7", ssh_port=2222, ssh_user="root")),
    ]
    sleeps = []

    def step(seconds):  # instead of sleeping, the "worker" moves the session one status on
        sleeps.append(seconds)
        status, reason, fields = steps.pop(0)
        services.rental_transition(Rental.objects.get(), status, reason=reason, **fields)

    monkeypatch.setattr(cli, "_sleep", step)
    code, out, err = run("provision", str(offer.pk), "--hours", "1.5", "--wait")
    assert code == 0, err
    rental = Rental.objects.get()
    stamp = re.compile(r"^\[\d\d:\d\d:\d\d \+\d+:\d\d\] ")  # clock time, time since the wait began
    progress = [stamp.sub("", line) for line in out.splitlines() if stamp.match(line)]
    assert progress == [
        "pending",
        "provisioning: Creating the instance",
        "booting: Booting",
        "verifying: Checking SSH",
        "active: Ready",
    ]
    assert sleeps == [2, 2, 2, 2]
    key = f"~/.ssh/shopper-{str(rental.pk)[:8]}.pem"
    assert re.search(r"\nActive after \d+:\d\d\. Connect with:\n", out)
    assert out.rstrip().endswith(f"Connect with:\n  ssh -i {key} -p 2222 root@198.51.100.7")
    assert (home / ".ssh" / key[len("~/.ssh/") :]).exists()


def test_provision_wait_prints_each_failover(shopper, run, offer, make_offer, monkeypatch):
    """Issue 15: the rental moves on to another offer by itself; --wait says so, then goes on."""
    other = make_offer(provider="clicloud", provider_offer_id="o-2", gpu_count=2, price_per_hour="1.2500")
    steps = [
        (Status.PROVISIONING, "Creating the instance", {}),
        (Status.PENDING, "Failover 1/3: the offer was gone (no_such_ask); renting clicloud offer", {
            "offer": other, "provider_offer_id": "o-2", "price_per_hour": Decimal("1.2500"),
        }),
        (Status.PROVISIONING, "Creating the instance", {}),
        (Status.BOOTING, "Booting", {}),
        (Status.VERIFYING, "Checking SSH", {}),
        (Status.ACTIVE, "Ready", dict(ssh_host="198.51.100.7", ssh_port=2222, ssh_user="root")),
    ]  # fmt: skip

    def step(seconds):
        status, reason, fields = steps.pop(0)
        services.rental_transition(Rental.objects.get(), status, reason=reason, **fields)

    monkeypatch.setattr(cli, "_sleep", step)
    code, out, err = run("provision", str(offer.pk), "--hours", "1", "--wait", "--max-price", "1.30")
    assert code == 0, err
    stamp = re.compile(r"^\[\d\d:\d\d:\d\d \+\d+:\d\d\] ")
    progress = [stamp.sub("", line) for line in out.splitlines() if stamp.match(line)]
    assert progress[:4] == [
        "pending",
        "provisioning: Creating the instance",
        f"failover: now clicloud offer {other.pk} (RTX 4090 24GB ×2) at $1.2500/h",
        "pending: Failover 1/3: the offer was gone (no_such_ask); renting clicloud offer",
    ]
    assert Rental.objects.get().max_price_per_hour == Decimal("1.3000")


def test_provision_wait_fails_with_exit_1_when_the_session_fails(shopper, run, offer, monkeypatch):
    def fail(seconds):
        services.rental_transition(Rental.objects.get(), Status.FAILED, reason="The provider said no")

    monkeypatch.setattr(cli, "_sleep", fail)
    code, out, err = run("provision", str(offer.pk), "--hours", "1", "--wait", "--interval", "0.01")
    assert code == 1
    assert "failed: The provider said no" in out
    assert err.startswith("error: session ") and "will not become active" in err and err.count("\n") == 1


def test_provision_wait_gives_up_after_the_timeout(shopper, run, offer):
    code, _, err = run("provision", str(offer.pk), "--hours", "1", "--wait", "--timeout", "0")
    assert code == 1 and "still pending after 0 s" in err and "gpu-shopper done" in err
    assert Rental.objects.get().status == Status.PENDING  # waiting less changes nothing


def test_provision_with_a_public_key_file_installs_it_and_saves_nothing(shopper, run, offer, home, tmp_path):
    pub = tmp_path / "id_ed25519.pub"
    pub.write_text(VALID_KEY + "\n")
    code, out, err = run("provision", str(offer.pk), "--hours", "1", "--key", str(pub), "--json")
    assert code == 0, err
    body = json.loads(out)
    assert body["ssh_private_key_file"] is None and "ssh_private_key" not in body
    assert Rental.objects.get().ssh_public_key == VALID_KEY
    assert not (home / ".ssh").exists()


def test_a_private_key_file_is_never_sent(shopper, run, offer, tmp_path):
    private = tmp_path / "id_ed25519"
    private.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n-----END OPENSSH PRIVATE KEY-----\n")
    code, _, err = run("provision", str(offer.pk), "--hours", "1", "--key", str(private))
    assert code == 1 and "is a private key" in err and not Rental.objects.exists()
    (tmp_path / "id_ed25519.pub").write_text(VALID_KEY)  # its .pub companion is used instead
    assert run("provision", str(offer.pk), "--hours", "1", "--key", str(private))[0] == 0
    assert Rental.objects.get().ssh_public_key == VALID_KEY


@pytest.mark.parametrize(
    "argv,exit_code,words",
    [
        (["--hours", "0"], 1, "reservation_hours: "),
        (["--hours", "soon"], 1, "reservation_hours: "),
        (["--hours", "1000"], 1, "hard maximum"),
    ],
)
def test_provision_bad_input_is_the_servers_message(shopper, run, offer, argv, exit_code, words):
    code, out, err = run("provision", str(offer.pk), *argv)
    assert code == exit_code and out == "" and words in err and err.count("\n") == 1
    assert not Rental.objects.exists()


def test_provision_an_unknown_offer_is_exit_3(shopper, run):
    code, _, err = run("provision", "987654", "--hours", "1")
    assert code == 3 and "(not_found)" in err


def test_the_key_is_never_overwritten(home):
    first = cli.save_private_key("abcdef12-0000-0000-0000-000000000000", "KEY ONE")
    second = cli.save_private_key("abcdef12-0000-0000-0000-000000000000", "KEY TWO")
    assert first.name == "shopper-abcdef12.pem" and second.name == "shopper-abcdef12-1.pem"
    assert first.read_text() == "KEY ONE\n" and second.read_text() == "KEY TWO\n"
    assert mode(second) == 0o600
    session = {"id": "abcdef12-0000", "ssh": {"command": "ssh -i ~/.ssh/shopper-abcdef12.pem -p 1 root@h"}}
    assert cli.ssh_command(session, second) == "ssh -i ~/.ssh/shopper-abcdef12-1.pem -p 1 root@h"


# --- sessions, show, done, shutdown, extend -------------------------------------------------
def test_sessions_lists_mine_in_a_table(shopper, run, user, other_user):
    mine = RentalFactory(consumer=user, provider="clicloud", active_since=timezone.now() - timedelta(hours=1))
    RentalFactory(consumer=other_user)
    code, out, _ = run("sessions")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "GPU", "PROVIDER", "CREATED", "LEFT", "COST"]
    assert lines[2].split()[:2] == [str(mine.pk)[:8], "active"]
    assert "RTX 4090 24GB ×1" in lines[2] and "clicloud" in lines[2] and "$0.50" in lines[2]
    assert lines[-1] == "1 of 1 sessions"
    assert json.loads(run("sessions", "--json")[1])["results"][0]["id"] == str(mine.pk)
    assert run("sessions", "--status", "pending")[1] == "No sessions.\n"


def test_show_prints_details_and_accepts_a_unique_prefix(shopper, run, user, other_user):
    rental = RentalFactory(consumer=user, ssh_host="203.0.113.5", ssh_port=41201, ssh_user="root")
    code, out, _ = run("show", str(rental.pk)[:6])
    assert code == 0
    assert "id:" in out and str(rental.pk) in out and "status:" in out and "active" in out
    assert "ssh -p 41201 root@203.0.113.5" in out
    assert json.loads(run("show", str(rental.pk), "--json")[1])["id"] == str(rental.pk)
    services.rental_event(rental, "info", "hello")
    assert "hello" in run("show", str(rental.pk), "--events")[1]

    theirs = RentalFactory(consumer=other_user)
    code, _, err = run("show", str(theirs.pk))
    assert code == 3 and err == "error: Not found. (not_found)\n"
    code, _, err = run("show", str(theirs.pk)[:8])
    assert code == 3 and "no session id starts with" in err
    code, _, err = run("show", "zz-not-an-id")
    assert code == 3


def test_an_ambiguous_prefix_is_refused(shopper, run, user):
    import uuid

    RentalFactory(consumer=user, id=uuid.UUID("abcd0000-0000-4000-8000-000000000001"))
    RentalFactory(consumer=user, id=uuid.UUID("abcd1111-0000-4000-8000-000000000002"))
    code, _, err = run("done", "abcd")
    assert code == 1 and "matches 2 sessions" in err
    assert set(Rental.objects.values_list("status", flat=True)) == {Status.ACTIVE}


def test_done_then_done_again_is_the_servers_409(shopper, run, user, cloud):
    rental = RentalFactory(consumer=user, running=True)
    code, out, _ = run("done", str(rental.pk))
    assert code == 0 and "stopping" in out
    rental.refresh_from_db()
    assert rental.status == Status.STOPPING and cloud == [("sessions.tasks.teardown", rental.pk)]
    Rental.objects.filter(pk=rental.pk).update(status=Status.DESTROYED)
    code, out, err = run("done", str(rental.pk)[:8])
    assert code == 1 and out == "" and err.rstrip().endswith("(already_ended)")


def test_shutdown_forces_teardown_and_is_harmless_twice(shopper, run, user, cloud):
    rental = RentalFactory(consumer=user)
    code, out, _ = run("shutdown", str(rental.pk))
    assert code == 0 and "Shutdown requested" in out
    assert Rental.objects.get().status == Status.STOPPING
    Rental.objects.filter(pk=rental.pk).update(status=Status.DESTROYED)
    code, out, _ = run("shutdown", str(rental.pk))
    assert code == 0 and "already ended (destroyed)" in out


def test_extend_moves_the_reservation_and_past_the_hard_max_is_exit_2(shopper, run, user):
    rental = RentalFactory(consumer=user)
    before = rental.reservation_ends_at
    code, out, _ = run("extend", str(rental.pk), "--hours", "1", "--reason", "one more epoch")
    assert code == 0 and "extended" in out
    rental.refresh_from_db()
    assert rental.reservation_ends_at - before == timedelta(hours=1)
    assert rental.events.get(kind="extend").reason.endswith("one more epoch")
    code, out, err = run("extend", str(rental.pk), "--hours", "20", "--reason", "x")
    assert code == 2 and err.rstrip().endswith("(hard_max_exceeded)") and "hard maximum" in err
    code, _, err = run("extend", str(rental.pk), "--hours", "0")
    assert code == 1 and "hours: " in err


# --- costs ----------------------------------------------------------------------------------
def test_costs_prints_totals_and_series(shopper, run, user):
    now = timezone.now()
    # Two hours inside one UTC day (yesterday, 09:00-11:00): a window ending "now" splits the
    # spend in two rows whenever the suite runs shortly after midnight.
    start = (now - timedelta(days=1)).replace(hour=9, minute=0, second=0, microsecond=0)
    RentalFactory(
        consumer=user,
        provider="clicloud",
        status=Status.DESTROYED,
        price_per_hour=Decimal("1.5000"),
        active_since=start,
        ended_at=start + timedelta(hours=2),
    )
    day = start.date().isoformat()
    argv = ["costs", "--period", "day", "--from", day, "--to", now.date().isoformat()]
    code, out, err = run(*argv)
    assert code == 0, err
    assert "Spend of alice" in out and "total: $3.00" in out and "hours: 2.00" in out
    assert re.search(rf"^{day}\s+\$3\.00\s+\$3\.00\s+2\.00$", out, re.M)
    assert "RTX 4090 24GB" in out and "clicloud" in out
    body = json.loads(run(*argv, "--json")[1])
    assert body["total"] == "3.00" and body["consumer"] == "alice"
    code, _, err = run("costs", "--from", "yesterday")
    assert code == 1 and err.startswith("error: from: ")
    code, _, err = run("costs", "--consumer", "bob")
    assert code == 2 and "(forbidden)" in err


# --- idle stop ------------------------------------------------------------------------------
def test_idle_stop_sets_and_clears_and_bad_minutes_are_the_servers_400(shopper, run, user):
    rental = RentalFactory(consumer=user)
    code, out, _ = run("idle-stop", str(rental.pk), "45")
    assert code == 0 and "stops after 45 min" in out
    rental.refresh_from_db()
    assert rental.idle_stop_minutes == 45
    code, out, _ = run("idle-stop", str(rental.pk), "off")
    assert code == 0 and "idle stop off" in out
    rental.refresh_from_db()
    assert rental.idle_stop_minutes is None
    code, _, err = run("idle-stop", str(rental.pk), "soon")
    assert code == 1 and "idle_stop_minutes" in err
    rental.refresh_from_db()
    assert rental.idle_stop_minutes is None


def test_provision_with_an_idle_stop(shopper, run, offer):
    code, out, _ = run("provision", str(offer.pk), "--hours", "1", "--idle-stop", "30", "--json")
    assert code == 0, out
    assert Rental.objects.get().idle_stop_minutes == 30


def test_provision_passes_the_rent_time_choices(shopper, run, offer, cloud):
    code, _, err = run(
        "provision", str(offer.pk), "--hours", "1", "--preset", "pytorch", "--disk-gb", "40",
        "--port", "8888", "--port", "6006", "--onstart", "pip install wandb",
    )  # fmt: skip
    assert code == 0, err
    rental = Rental.objects.get()
    assert (rental.preset, rental.disk_gb, rental.ports, rental.onstart) == (
        "pytorch", 40, [8888, 6006], "pip install wandb"
    )  # fmt: skip


def test_provision_with_a_port_the_server_refuses_says_why(shopper, run, offer, cloud):
    code, out, err = run("provision", str(offer.pk), "--hours", "1", "--port", "22")
    assert code == 1 and out == ""
    assert "ports: Port 22 cannot be exposed: port 22 is SSH" in err
    assert not Rental.objects.exists()
