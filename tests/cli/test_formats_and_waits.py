"""What the CLI shows while waiting and in its tables (the web's number formats), and the
argument checks of ``cp`` that run before anything is contacted."""

from __future__ import annotations

import re
import signal
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from django.utils import timezone

from sessions import services
from sessions.models import Rental, Status
from shopper import cli
from tests.factories import RentalFactory


# --- sessions, show, inventory: the web's formats -------------------------------------------
def test_sessions_show_time_left_and_costs_under_a_cent_like_the_web(shopper, run, user):
    now = timezone.now()
    fresh = RentalFactory(consumer=user, active_since=now - timedelta(seconds=10))  # $0.50/h: 0.0014
    older = RentalFactory(consumer=user, active_since=now - timedelta(hours=3), reservation_hours=0.5)
    ended = RentalFactory(
        consumer=user,
        status=Status.DESTROYED,
        active_since=now - timedelta(hours=2),
        ended_at=now - timedelta(hours=1),
    )
    never = RentalFactory(consumer=user, status=Status.FAILED)
    code, out, err = run("sessions")
    assert code == 0, err
    rows = {line.split()[0]: " ".join(line.split()) for line in out.splitlines()[2:-1]}
    assert rows[str(fresh.pk)[:8]].endswith("1 h 59 min < $0.01")  # never "$0.00" for billed time
    assert rows[str(older.pk)[:8]].endswith("UTC 29 min $1.50")
    assert rows[str(ended.pk)[:8]].endswith("$0.50") and "min" not in rows[str(ended.pk)[:8]]
    assert rows[str(never.pk)[:8]].endswith("$0.00")  # nothing billed: a real zero
    out = run("show", str(fresh.pk))[1]
    assert re.search(r"^cost so far: +< \$0\.01$", out, re.M)
    assert re.search(r"^time left: +1 h 59 min$", out, re.M)


def test_inventory_shows_reliability_as_a_percent(shopper, run, make_offer):
    make_offer(gpu_type="RTX 3090 24GB", price_per_hour="0.3000", reliability=Decimal("0.9876"))
    make_offer(provider="tensordock", gpu_type="A40 48GB", price_per_hour="0.5000", reliability=None)
    lines = run("inventory")[1].splitlines()
    assert "99%" in lines[2] and "0.9876" not in lines[2]
    assert "n/a" in lines[3]


def test_inventory_shows_confidence_and_filters_and_sorts_on_it(shopper, run, make_offer):
    """Issue 15: the CONFIDENCE column ("usually works 82%"), --min-confidence and best_bet."""
    from inventory.models import OutcomeKind, ProvisionOutcome

    flaky = make_offer(provider="tensordock", gpu_type="A40 48GB", price_per_hour="0.2000")
    solid = make_offer(gpu_type="A40 48GB", price_per_hour="0.3000")
    for _ in range(4):
        ProvisionOutcome.objects.create(
            provider="vastai", provider_offer_id=solid.provider_offer_id, kind=OutcomeKind.SUCCESS
        )
    lines = run("inventory", "--sort", "best_bet")[1].splitlines()
    # (4 × 0.7 + 4) / (4 + 4) = 0.85: 0.30 / 0.85 = 0.353 beats 0.20 / 0.3 = 0.667
    assert lines[2].split()[0] == str(solid.pk) and "usually works 85%" in lines[2]
    assert lines[3].split()[0] == str(flaky.pk) and "new 30%" in lines[3]
    lines = run("inventory", "--min-confidence", "0.5")[1].splitlines()
    assert [line.split()[0] for line in lines[2:-1]] == [str(solid.pk)]
    code, _, err = run("inventory", "--min-confidence", "2")
    assert code != 0 and "min_confidence" in err


def test_inventory_lists_all_four_providers_and_filters_by_each(shopper, run, make_offer):
    for i, provider in enumerate(("vastai", "tensordock", "runpod", "lambda")):
        make_offer(provider=provider, provider_offer_id=f"o-{i}", gpu_type="A100 SXM4 80GB", reliability=None)
    out = run("inventory")[1]
    assert all(p in out for p in ("vastai", "tensordock", "runpod", "lambda")), out
    for provider in ("runpod", "lambda"):
        rows = run("inventory", "--provider", provider)[1].splitlines()[2:-1]
        assert rows and all(provider in row for row in rows), rows


def test_formats_match_the_web_filters():
    assert [cli.money(v) for v in ("0", "0.004", "0.01", "12.345", None)] == [
        "$0.00", "< $0.01", "$0.01", "$12.35", "",
    ]  # fmt: skip
    assert cli.money("0.00", billed=True) == "< $0.01"
    assert [cli.percent(v) for v in ("0.9950", "1", "0.5", None)] == ["100%", "100%", "50%", "n/a"]
    now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    left = {"status": "active", "reservation_ends_at": "2026-12-07T13:05:30Z"}
    assert cli.time_left(left, now) == "1 h 05 min"
    assert cli.time_left({**left, "reservation_ends_at": "2026-12-07T12:00:30Z"}, now) == "30 s"
    assert cli.time_left({**left, "reservation_ends_at": "2026-12-07T11:59:00Z"}, now) == "due now"
    assert cli.time_left({**left, "status": "stopping"}, now) == ""
    assert [cli.clock(s) for s in (0, 75, 3725)] == ["0:00", "1:15", "1:02:05"]


# --- done / shutdown --wait -----------------------------------------------------------------
def test_done_wait_follows_the_teardown_until_the_provider_confirms(shopper, run, user, monkeypatch):
    rental = RentalFactory(consumer=user, active_since=timezone.now() - timedelta(minutes=30))
    sleeps = []

    def step(seconds):  # the "worker": still stopping once, then the provider confirms
        sleeps.append(seconds)
        if len(sleeps) == 2:
            services.rental_transition(
                Rental.objects.get(), Status.DESTROYED, reason="Provider confirmed", ended_at=timezone.now()
            )

    monkeypatch.setattr(cli, "_sleep", step)
    code, out, err = run("done", str(rental.pk)[:8], "--wait", "--interval", "0.5")
    assert code == 0, err
    stamp = re.compile(r"^\[\d\d:\d\d:\d\d \+\d+:\d\d\] ")
    progress = [stamp.sub("", line) for line in out.splitlines() if stamp.match(line)]
    assert progress == ["stopping: Done: the work is finished", "destroyed: Provider confirmed"]
    assert sleeps == [0.5, 0.5]
    assert re.search(r"^Ended after \d+:\d\d: the provider confirmed the machine is gone\.$", out, re.M)
    assert out.rstrip().endswith("Cost: $0.25")


def test_shutdown_wait_gives_up_after_the_timeout_and_says_the_teardown_goes_on(shopper, run, user):
    rental = RentalFactory(consumer=user)
    code, _, err = run("shutdown", str(rental.pk), "--wait", "--timeout", "0")
    assert code == 1 and "still stopping after 0 s" in err and "keeps tearing it down" in err
    assert Rental.objects.get().status == Status.STOPPING  # the request itself went through


def test_done_wait_on_an_ended_session_is_the_servers_409(shopper, run, user):
    rental = RentalFactory(consumer=user, status=Status.DESTROYED)
    code, _, err = run("done", str(rental.pk), "--wait")
    assert code == 1 and "(already_ended)" in err


# --- cp: bad input is refused before anything is contacted -----------------------------------
def test_cp_bad_arguments_are_usage_errors_and_touch_nothing(run, tmp_path):
    # no shopper is configured: each of these must be refused before the CLI looks for one
    (tmp_path / "here.txt").write_text("x")
    local = str(tmp_path / "here.txt")
    cases = [
        (["cp", local, str(tmp_path / "there")], 2, "one side must be a session"),
        (["cp", "abcd1234:/a", "ffff0000:/b"], 2, "one session"),
        (["cp", local, "abcd1234:/a", str(tmp_path)], 2, "one session"),
        (["cp", str(tmp_path / "missing"), "abcd1234:/a"], 1, "no such file or folder here"),
    ]
    for argv, code, words in cases:
        got, out, err = run(*argv)
        assert (got, out) == (code, ""), argv
        assert words in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here.txt", "home"]
    assert not any((tmp_path / "home").iterdir()) and not (tmp_path / "xdg").exists()


SESSION = {"id": "abcdef12-0000-4000-8000-000000000000", "ssh": {"host": "2001:db8::7", "port": 41022}}


def test_rsync_command_line(home):
    key = Path("/k/shopper-abcdef12.pem")
    up = cli.rsync_argv(["data/", "b"], "/workspace", SESSION, key, upload=True)
    assert up[:4] == ["rsync", "-a", "--partial", "--info=progress2"]
    assert up[-3:] == ["data", "b", "[2001:db8::7]:/workspace"]  # a folder copied as itself, like scp
    shell = up[up.index("-e") + 1]
    for opt in ("Port=41022", "User=root", "HostKeyAlias=shopper-abcdef12", "IdentitiesOnly=yes",
                "IdentityFile=/k/shopper-abcdef12.pem", "StrictHostKeyChecking=accept-new"):  # fmt: skip
        assert f"-o {opt}" in shell
    down = cli.rsync_argv(["/w/out/"], ".", SESSION, None, upload=False)
    assert down[-2:] == ["[2001:db8::7]:/w/out", "."] and "IdentityFile" not in " ".join(down)


def test_scp_command_line(home):
    up = cli.scp_argv(["a", "b"], "/w", SESSION, None, upload=True)
    assert up[:3] == ["scp", "-r", "-p"] and up[-3:] == ["a", "b", "[2001:db8::7]:/w"]
    assert "Port=41022" in up and "HostKeyAlias=shopper-abcdef12" in up
    down = cli.scp_argv(["/w/x"], "dst", SESSION, None, upload=False)
    assert down[-2:] == ["[2001:db8::7]:/w/x", "dst"]


def test_an_unterminated_ssh_config_block_is_refused_and_left_alone(run, home):
    config = home / "cfg"
    text = f"{cli.SSH_BLOCK_BEGIN}\nHost shopper-1\n    Port 1\n"
    config.write_text(text)
    code, _, err = run("ssh-config", "--remove", "--file", str(config))
    assert code == 1 and "has no end line" in err
    assert config.read_text() == text


def test_ssh_config_skips_sessions_whose_key_only_their_owner_may_fetch(live_server, run, staff, user, home):
    """Staff list everyone's sessions; another user's generated key is theirs alone (404)."""
    from shopper.models import ApiToken

    mine = RentalFactory(consumer=staff, running=True, ssh_host="203.0.113.1", ssh_port=40001, with_key=True)
    theirs = RentalFactory(consumer=user, running=True, ssh_host="203.0.113.2", ssh_port=40002, with_key=True)
    _, raw = ApiToken.issue(user=staff, name="cli")
    cli.config_write({"url": live_server.url, "token": raw})
    target = home / "cfg"
    code, _, err = run("ssh-config", "--file", str(target))
    assert code == 0, err
    assert f"skipped shopper-{str(theirs.pk)[:8]}: " in err and "did not give it" in err
    text = target.read_text()
    assert f"Host shopper-{str(mine.pk)[:8]}" in text and "shopper-" + str(theirs.pk)[:8] not in text
    assert (home / ".ssh" / f"shopper-{str(mine.pk)[:8]}.pem").is_file()
    # ssh to their session names the problem instead of a bare "Not found"
    code, _, err = run("ssh", str(theirs.pk), "--", "true")
    assert code == 3 and "is not on this machine" in err and "-i FILE" in err


def test_ctrl_c_reaches_the_tool_and_not_the_cli():
    """While ssh/scp/rsync run, Ctrl-C is theirs: the tool keeps the default SIGINT (an ignored
    signal would be inherited and scp or rsync could not be stopped), the CLI waits for it."""
    code = cli._run_tool(["sh", "-c", "kill -INT $$; echo survived"])
    assert code == -signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # given back


def test_progress_keeps_counting_on_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr(cli.sys.stdout, "isatty", lambda: True)
    progress = cli.Progress()
    progress.show("booting", "Booting")
    progress.show("booting", "Booting")  # no change: the last line counts on
    progress.show("verifying", "")
    out = capsys.readouterr().out
    assert re.search(
        r"\] booting: Booting\n  … booting for 0:0\d\r\x1b\[K\[\d\d:\d\d:\d\d \+0:0\d\] verifying\n$", out
    )


def test_cp_auto_uses_scp_when_rsync_is_missing_here(monkeypatch):
    real = cli.shutil.which
    monkeypatch.setattr(cli.shutil, "which", lambda name: None if name == "rsync" else real(name))
    calls = []
    monkeypatch.setattr(cli, "_run_tool", lambda argv: calls.append(argv) or 0)
    monkeypatch.setattr(cli, "remote_has_rsync", lambda *a: True)
    monkeypatch.setattr(cli, "ssh_target", lambda client, ident: SESSION)
    monkeypatch.setattr(cli.Client, "from_config", classmethod(lambda cls: None))
    assert cli.main(["cp", "abcdef12:/w/x", "."]) == 0
    assert calls[0][0] == "scp"
