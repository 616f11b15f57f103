"""Safety rule 5: reconciliation against the fake cloud's listing.

Orphans (our label, no live rental) are alerted at once and destroyed only after the grace
period, verified by get -> NotFound; instances without our prefix are never touched; ghosts (a
live rental's instance missing from two consecutive listings) are alerted and stopped; a failed or
empty listing aborts the cycle; the cycle's query count does not grow with the instances."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from inventory.providers.base import NotFound, PermanentError, Transient
from sessions.deployment import deployment_id, make_label
from sessions.models import LABEL_PREFIX, Alert, AlertKind, Rental, RentalEvent, Status
from sessions.reconcile import reconcile, reconcile_all
from sessions.teardown import rental_teardown
from tests.fakes import FakeCloud
from tests.safety.conftest import ADMIN_EMAIL
from tests.sessions.conftest import START, events, fresh, transitions

S = Status
GRACE = timedelta(seconds=120)


def cycle(capture, provider: str = "fakecloud"):
    with capture(execute=True):
        return reconcile(provider_name=provider)


def gone_at_provider(instance_id: str) -> bool:
    try:
        FakeCloud.cloud.get_instance(instance_id)
    except NotFound:
        return True
    return False


def stranger_label() -> str:
    """A label of this deployment that no rental here owns."""
    return make_label(deployment_id(), uuid.uuid4())


@pytest.fixture
def c(django_capture_on_commit_callbacks):
    return django_capture_on_commit_callbacks


# --- orphans ----------------------------------------------------------------------------------------


def test_an_unknown_instance_is_alerted_at_once_and_destroyed_only_after_the_grace(fake, c, mailoutbox):
    orphan = fake.add_instance(stranger_label(), state="running")

    first = cycle(c)

    assert first.aborted == "" and first.instances == 1
    assert first.orphans_found == [orphan.instance_id] and first.orphans_destroyed == []
    [alert] = Alert.objects.all()
    assert (alert.kind, alert.provider, alert.provider_instance_id) == (
        AlertKind.ORPHAN,
        "fakecloud",
        orphan.instance_id,
    )
    assert alert.rental is None and alert.resolved_at is None
    assert orphan.label in alert.message
    assert len(mailoutbox) == 1 and mailoutbox[0].to == [ADMIN_EMAIL]
    assert "Orphan instance" in mailoutbox[0].subject
    assert fake.count("destroy") == 0

    fake.traveller.shift(GRACE - timedelta(seconds=1))
    just_before = cycle(c)

    assert just_before.orphans_found == [orphan.instance_id] and just_before.orphans_destroyed == []
    assert fake.count("destroy") == 0 and not gone_at_provider(orphan.instance_id)
    assert Alert.objects.count() == 1 and len(mailoutbox) == 1  # no second alert, no second mail

    fake.traveller.shift(timedelta(seconds=1))
    after = cycle(c)

    assert after.orphans_destroyed == [orphan.instance_id]
    assert fake.args("destroy") == [orphan.instance_id]
    assert gone_at_provider(orphan.instance_id)
    alert.refresh_from_db()
    assert alert.resolved_at == timezone.now()

    # Gone: the next cycles find nothing and raise nothing.
    fake.traveller.shift(timedelta(seconds=30))
    later = cycle(c)
    assert later.orphans_found == [] and later.instances == 0
    assert Alert.objects.count() == 1 and len(mailoutbox) == 1
    assert fake.count("destroy") == 1


@pytest.mark.parametrize("status", [S.DESTROYED, S.FAILED])
def test_an_instance_whose_rental_ended_is_an_orphan(fake, c, make_rental, mailoutbox, status):
    ended = make_rental(status, ended_at=START - timedelta(hours=1))
    orphan = fake.add_instance(ended.label, state="running")

    first = cycle(c)

    assert first.orphans_found == [orphan.instance_id] and fake.count("destroy") == 0
    alert = Alert.objects.get(kind=AlertKind.ORPHAN)
    assert alert.provider_instance_id == orphan.instance_id
    assert f"its rental is {status}" in alert.message
    assert len(mailoutbox) == 1
    assert [e.reason for e in events(ended, "error")] == [
        f"Orphan instance {orphan.instance_id} found after the end"
    ]

    fake.traveller.shift(GRACE)
    assert cycle(c).orphans_destroyed == [orphan.instance_id]
    assert gone_at_provider(orphan.instance_id)
    assert fresh(ended).status == status  # the rental row itself is not touched
    assert Alert.objects.get(pk=alert.pk).resolved_at is not None


@pytest.mark.parametrize("status", [S.PENDING, S.PROVISIONING, S.BOOTING, S.STOPPING])
def test_an_instance_of_a_live_rental_is_never_an_orphan(fake, c, make_rental, status):
    """Provisioning may not have stored the id yet; stopping is the teardown's job."""
    rental = make_rental(status)
    fake.add_instance(rental.label, state="running")

    for _ in range(3):
        result = cycle(c)
        assert result.orphans_found == []
        fake.traveller.shift(GRACE)

    assert fake.count("destroy") == 0 and not Alert.objects.exists()
    assert fresh(rental).status == status


def test_an_orphan_destroy_that_fails_is_retried_and_the_alert_stays_open(fake, c, mailoutbox):
    orphan = fake.add_instance(stranger_label(), state="running")
    cycle(c)
    fake.traveller.shift(GRACE)
    fake.fail["destroy"] = [Transient("503 Service Unavailable", status=503)]

    failed = cycle(c)

    assert failed.orphans_destroyed == [] and not gone_at_provider(orphan.instance_id)
    assert Alert.objects.get().resolved_at is None

    fake.traveller.shift(timedelta(seconds=30))
    retried = cycle(c)

    assert retried.orphans_destroyed == [orphan.instance_id]
    assert gone_at_provider(orphan.instance_id)
    assert Alert.objects.get().resolved_at is not None
    assert len(mailoutbox) == 1


def test_an_orphan_alert_is_resolved_when_the_destroy_confirms_a_cycle_later(fake, c):
    """The provider accepts the destroy but still answers "deleting" to the get that follows (the
    fake then no longer lists the instance, as a provider that hides deleting machines does). The
    instance is gone a moment later; the orphan alert must not stay open for ever."""
    orphan = fake.add_instance(stranger_label(), state="running")
    cycle(c)
    fake.traveller.shift(GRACE)
    fake.destroy_lag = 1

    cycle(c)  # destroy sent, get answers "deleting": not confirmed yet
    assert fake.args("destroy") == [orphan.instance_id]
    assert gone_at_provider(orphan.instance_id)  # ... and now the provider says it is gone

    fake.traveller.shift(timedelta(seconds=30))
    cycle(c)
    fake.traveller.shift(timedelta(seconds=30))
    cycle(c)

    alert = Alert.objects.get(kind=AlertKind.ORPHAN)
    assert alert.resolved_at is not None, "orphan alert left open although the instance is gone"


def test_an_orphan_of_an_ended_rental_is_recorded_on_its_timeline_once(fake, c, make_rental):
    """The timeline is the audit log users read: one orphan, one entry, not one per cycle."""
    ended = make_rental(S.DESTROYED, ended_at=START - timedelta(hours=1))
    fake.add_instance(ended.label, state="running")

    for _ in range(4):  # four 30 s cycles inside the 120 s grace period
        cycle(c)
        fake.traveller.shift(timedelta(seconds=30))

    assert len(events(ended, "error")) == 1


# --- instances that are not ours ----------------------------------------------------------------


@pytest.fixture
def unfiltered_listing(fake, monkeypatch):
    """A provider whose listing ignores the prefix filter (returns every instance)."""

    def list_all(label_prefix):
        fake.calls.append(("list", label_prefix))
        return [inst.data() for inst in fake.instances.values() if inst.deleting_polls is None]

    monkeypatch.setattr(fake, "list_instances", list_all)


def test_instances_without_our_prefix_are_never_touched(fake, c, make_rental, mailoutbox, unfiltered_listing):
    strangers = [
        fake.add_instance("prod-db-1", state="running"),
        fake.add_instance("", state="running"),
        fake.add_instance(f"other-{uuid.uuid4()}", state="running"),
        fake.add_instance(f"SHOPPER-{uuid.uuid4()}", state="running"),
        fake.add_instance(f"x{LABEL_PREFIX}{uuid.uuid4()}", state="running"),
    ]

    for _ in range(4):
        result = cycle(c)
        assert result.aborted == "" and result.instances == 0 and result.orphans_found == []
        fake.traveller.shift(GRACE)

    assert fake.count("destroy") == 0 and fake.count("get") == 0
    assert all(s.instance_id in fake.instances for s in strangers)
    assert not Alert.objects.exists() and mailoutbox == []


def test_strangers_beside_an_orphan_are_left_alone(fake, c, unfiltered_listing):
    stranger = fake.add_instance("team-b-training", state="running")
    orphan = fake.add_instance(stranger_label(), state="running")

    cycle(c)
    fake.traveller.shift(GRACE)
    result = cycle(c)

    assert result.orphans_destroyed == [orphan.instance_id]
    assert fake.args("destroy") == [orphan.instance_id]
    assert stranger.instance_id in fake.instances and stranger.deleting_polls is None


# --- ghosts -------------------------------------------------------------------------------------------


@pytest.fixture
def two_live(active_rental):
    """Two active rentals; the second keeps the listing non-empty while the first goes missing."""
    return active_rental(), active_rental()


def test_missing_once_only_counts(fake, c, two_live, mailoutbox):
    ghost, witness = two_live
    del fake.instances[ghost.provider_instance_id]

    result = cycle(c)

    assert result.aborted == "" and result.ghosts == []
    assert fresh(ghost).missing_count == 1 and fresh(witness).missing_count == 0
    assert fresh(ghost).status == S.ACTIVE
    assert not Alert.objects.exists() and mailoutbox == []
    assert fake.enqueued == [] and transitions(ghost) == []
    assert fake.count("destroy") == 0


def test_a_ghost_soon_after_start_counts_against_its_offer(fake, c, two_live):
    """Issue 15, VA-DIES: an instance gone within 30 min of becoming active replaces its success
    outcome with "died soon after start" (inventory/confidence.py)."""
    from inventory.confidence import outcome_record
    from inventory.models import ProvisionOutcome

    ghost, _ = two_live
    outcome_record(ghost, "success")
    del fake.instances[ghost.provider_instance_id]
    cycle(c)
    fake.traveller.shift(timedelta(seconds=30))
    assert cycle(c).ghosts == [str(ghost.pk)]
    assert list(ProvisionOutcome.objects.values_list("rental_id", "kind")) == [(ghost.pk, "died_early")]


def test_missing_from_two_consecutive_listings_is_a_ghost(fake, c, two_live, mailoutbox):
    ghost, witness = two_live
    del fake.instances[ghost.provider_instance_id]

    cycle(c)
    fake.traveller.shift(timedelta(seconds=30))
    result = cycle(c)

    assert result.ghosts == [str(ghost.pk)]
    row = fresh(ghost)
    assert row.status == S.STOPPING and row.missing_count == 2
    assert transitions(ghost) == [(S.ACTIVE, S.STOPPING)]
    assert "missing from two listings" in row.status_detail
    [alert] = Alert.objects.all()
    assert (alert.kind, alert.rental_id) == (AlertKind.GHOST, ghost.pk)
    assert ghost.provider_instance_id in alert.message
    assert len(mailoutbox) == 1 and "Ghost rental" in mailoutbox[0].subject
    assert fake.enqueued == [("sessions.tasks.teardown", ghost.pk)]
    assert fresh(witness).status == S.ACTIVE and fresh(witness).missing_count == 0

    # A third cycle neither alerts again nor stops again.
    fake.traveller.shift(timedelta(seconds=30))
    assert cycle(c).ghosts == []
    assert Alert.objects.count() == 1 and len(mailoutbox) == 1
    assert len(fake.enqueued) == 1

    # The teardown asks the provider, which confirms the instance is gone: destroyed.
    assert rental_teardown(rental_id=ghost.pk, waits=fake.waits) is True
    assert fresh(ghost).status == S.DESTROYED
    assert fake.args("get")[-1] == ghost.provider_instance_id


def test_seen_again_after_one_miss_resets_the_counter(fake, c, two_live):
    ghost, _ = two_live
    inst = fake.instances[ghost.provider_instance_id]

    inst.hidden_lists = 1
    cycle(c)
    assert fresh(ghost).missing_count == 1

    cycle(c)  # listed again
    assert fresh(ghost).missing_count == 0

    inst.hidden_lists = 1
    result = cycle(c)  # one more miss: one, not two
    assert result.ghosts == []
    assert fresh(ghost).missing_count == 1 and fresh(ghost).status == S.ACTIVE
    assert not Alert.objects.exists()


def test_only_rentals_that_must_have_an_instance_are_counted(fake, c, make_rental, active_rental):
    """pending/provisioning may have no instance yet; stopping ones are being destroyed."""
    witness = active_rental()
    quiet = [
        make_rental(S.PENDING),
        make_rental(S.PROVISIONING),
        make_rental(S.PROVISIONING, provider_instance_id="4242"),
        make_rental(S.STOPPING, provider_instance_id="4343"),
        make_rental(S.DESTROYED, provider_instance_id="4444"),
    ]

    for _ in range(3):
        assert cycle(c).ghosts == []

    assert [fresh(r).missing_count for r in quiet] == [0] * len(quiet)
    assert [fresh(r).status for r in quiet] == [r.status for r in quiet]
    assert fresh(witness).missing_count == 0


def test_booting_and_verifying_rentals_are_counted(fake, c, make_rental, active_rental):
    active_rental()  # keeps the listing non-empty
    settled = START - timedelta(minutes=10)
    booting = make_rental(S.BOOTING, provider_instance_id="5151", created_at=settled)
    verifying = make_rental(S.VERIFYING, provider_instance_id="5252", created_at=settled)

    cycle(c)
    result = cycle(c)

    assert sorted(result.ghosts) == sorted([str(booting.pk), str(verifying.pk)])
    assert fresh(booting).status == S.STOPPING and fresh(verifying).status == S.STOPPING


# --- listings that cannot be believed -------------------------------------------------------------


@pytest.fixture
def messy(fake, make_rental, active_rental):
    """An orphan past its grace (alert already open), a rental missing once already, a witness."""
    orphan = fake.add_instance(stranger_label(), state="running")
    Alert.objects.create(
        kind=AlertKind.ORPHAN,
        provider="fakecloud",
        provider_instance_id=orphan.instance_id,
        message="orphan",
        created_at=START - timedelta(hours=1),
    )
    ghost = active_rental(missing_count=1)
    del fake.instances[ghost.provider_instance_id]
    witness = active_rental()
    return orphan, ghost, witness


def state_of_everything():
    return (
        sorted(Rental.objects.values_list("id", "status", "missing_count")),
        sorted(Alert.objects.values_list("id", "kind", "resolved_at")),
        RentalEvent.objects.count(),
    )


@pytest.mark.parametrize(
    "error",
    [
        Transient("503 Service Unavailable", status=503),
        PermanentError("401 Unauthorized", status=401),
    ],
    ids=["transient", "permanent"],
)
def test_a_listing_that_raises_aborts_the_cycle_and_changes_nothing(fake, c, messy, mailoutbox, error):
    orphan, ghost, _ = messy
    before = state_of_everything()
    fake.fail["list"] = [error]

    result = cycle(c)

    assert result.aborted.startswith("listing failed")
    assert result.orphans_found == [] and result.orphans_destroyed == [] and result.ghosts == []
    assert state_of_everything() == before
    assert fake.ops() == ["list"]  # no destroy, no get
    assert fake.enqueued == [] and mailoutbox == []
    assert orphan.instance_id in fake.instances
    assert fresh(ghost).missing_count == 1 and fresh(ghost).status == S.ACTIVE  # not counted again


def test_an_empty_listing_while_rentals_are_live_aborts_and_changes_nothing(
    fake, c, active_rental, mailoutbox
):
    rentals = [active_rental() for _ in range(3)]
    fake.instances.clear()  # the provider answers [] (an outage that looks like "all gone")
    before = state_of_everything()

    for _ in range(3):  # never counted, so never a ghost however often it happens
        result = cycle(c)
        assert result.aborted == "empty listing while rentals are live"
        assert result.ghosts == []
        fake.traveller.shift(timedelta(seconds=30))

    assert state_of_everything() == before
    assert [fresh(r).missing_count for r in rentals] == [0, 0, 0]
    assert [fresh(r).status for r in rentals] == [S.ACTIVE] * 3
    assert fake.enqueued == [] and mailoutbox == []


def test_an_empty_listing_without_live_rentals_is_fine(fake, c, make_rental):
    make_rental(S.DESTROYED)

    result = cycle(c)

    assert result.aborted == "" and result.instances == 0


def test_a_disabled_provider_aborts(fake, c, settings, active_rental):
    rental = active_rental()
    settings.FAKECLOUD_API_KEY = ""

    result = cycle(c)

    assert result.aborted.startswith("listing failed")
    assert fresh(rental).missing_count == 0 and fake.calls == []


def test_reconcile_all_covers_the_enabled_providers(fake, c, active_rental):
    active_rental()

    results = reconcile_all()

    assert [r.provider for r in results] == ["fakecloud"]
    assert results[0].aborted == "" and results[0].instances == 1


# --- cost: queries per cycle do not grow with the instances -----------------------------------


def count_queries(c) -> int:
    with CaptureQueriesContext(connection) as ctx:
        cycle(c)
    return len(ctx.captured_queries)


def live_fleet(n, active_rental):
    return [active_rental() for _ in range(n)]


def fleet_queries(fake, c, active_rental, n: int, *, missing: bool) -> int:
    fleet = live_fleet(n, active_rental)
    if missing:  # all but one go missing once (still counted, nobody is a ghost yet)
        for rental in fleet[1:]:
            del fake.instances[rental.provider_instance_id]
    queries = count_queries(c)
    assert Rental.objects.filter(missing_count=1).count() == (n - 1 if missing else 0)
    Rental.objects.all().delete()
    fake.instances.clear()
    return queries


@pytest.mark.parametrize("missing", [False, True], ids=["all-present", "missing-once"])
def test_queries_per_cycle_do_not_grow_with_live_rentals(fake, c, active_rental, missing):
    small = fleet_queries(fake, c, active_rental, 5, missing=missing)
    large = fleet_queries(fake, c, active_rental, 50, missing=missing)

    assert large == small, f"5 rentals: {small} queries, 50 rentals: {large}"


def known_orphans_queries(fake, c, make_rental, n: int, *, with_rentals: bool) -> int:
    """n orphans already alerted (inside the grace period) beside a live rental."""
    for _ in range(n):
        label = make_rental(S.DESTROYED).label if with_rentals else stranger_label()
        fake.add_instance(label, state="running")
    cycle(c)  # first sighting: the alerts are raised here
    assert Alert.objects.filter(kind=AlertKind.ORPHAN, resolved_at=None).count() == n
    fake.traveller.shift(timedelta(seconds=30))
    queries = count_queries(c)
    Alert.objects.all().delete()
    Rental.objects.all().delete()
    fake.instances.clear()
    return queries


def test_queries_per_cycle_do_not_grow_with_known_orphans(fake, c, make_rental):
    small = known_orphans_queries(fake, c, make_rental, 5, with_rentals=False)
    large = known_orphans_queries(fake, c, make_rental, 50, with_rentals=False)

    assert large == small, f"5 orphans: {small} queries, 50 orphans: {large}"


def test_queries_per_cycle_do_not_grow_with_known_orphans_of_ended_rentals(fake, c, make_rental):
    small = known_orphans_queries(fake, c, make_rental, 5, with_rentals=True)
    large = known_orphans_queries(fake, c, make_rental, 50, with_rentals=True)

    assert large == small, f"5 orphans: {small} queries, 50 orphans: {large}"


def test_new_orphans_cost_only_their_alert_writes(fake, c):
    def first_sighting(n):
        for _ in range(n):
            fake.add_instance(stranger_label(), state="running")
        queries = count_queries(c)
        Alert.objects.all().delete()
        fake.instances.clear()
        return queries

    small, large = first_sighting(5), first_sighting(50)

    # alert_raise: one "already open?" check and one insert per new orphan, nothing else.
    assert large - small <= 2 * 45, f"5 new orphans: {small} queries, 50: {large}"


# --- orphan SSH keys (Lambda registers one per rental, named by its label) ---------------------------


@pytest.fixture
def account_keys(fake, monkeypatch):
    """Give the fake provider Lambda's per-rental key calls; returns the account's key names."""
    from tests.fakes import FakeCloud

    class Names(list):
        refused: set[str]

    names = Names()
    names.refused = refused = set()

    def ssh_key_labels(self, label_prefix):
        return sorted(n for n in names if n.startswith(label_prefix))

    def delete_ssh_key(self, label):
        if label in refused:
            raise PermanentError(f"ssh-keys/key-in-use: {label}")
        before = len(names)
        names[:] = [n for n in names if n != label]
        return before - len(names)

    monkeypatch.setattr(FakeCloud, "ssh_key_labels", ssh_key_labels, raising=False)
    monkeypatch.setattr(FakeCloud, "delete_ssh_key", delete_ssh_key, raising=False)
    return names


@pytest.mark.parametrize("status", [S.DESTROYED, S.FAILED])
def test_the_ssh_key_of_an_ended_rental_is_deleted(fake, c, make_rental, account_keys, status):
    ended = make_rental(status, ended_at=START - timedelta(hours=1))
    stranger = stranger_label()
    account_keys += [ended.label, stranger, "alice-laptop", f"{LABEL_PREFIX}otherdeploy-{uuid.uuid4()}"]

    result = cycle(c)

    assert sorted(result.orphan_keys_deleted) == sorted([ended.label, stranger])
    # Someone else's key and another deployment's key are never touched.
    assert account_keys[:] == ["alice-laptop", account_keys[-1]] and "otherdeploy" in account_keys[-1]


@pytest.mark.parametrize("status", [S.PENDING, S.PROVISIONING, S.BOOTING, S.ACTIVE, S.STOPPING])
def test_the_ssh_key_of_a_live_rental_is_kept(fake, c, make_rental, account_keys, status):
    rental = make_rental(status)
    if status in (S.BOOTING, S.ACTIVE, S.STOPPING):
        fake.add_instance(rental.label, state="running")
    account_keys.append(rental.label)

    assert cycle(c).orphan_keys_deleted == []
    assert account_keys == [rental.label]


def test_an_ended_rentals_key_waits_while_its_instance_is_still_listed(fake, c, make_rental, account_keys):
    ended = make_rental(S.DESTROYED, ended_at=START - timedelta(hours=1))
    orphan = fake.add_instance(ended.label, state="running")
    account_keys.append(ended.label)

    assert cycle(c).orphan_keys_deleted == []  # the orphan instance is destroyed first
    fake.traveller.shift(GRACE)
    assert cycle(c).orphans_destroyed == [orphan.instance_id]
    assert cycle(c).orphan_keys_deleted == [ended.label] and account_keys == []


def test_a_refused_key_delete_is_retried_next_cycle(fake, c, make_rental, account_keys):
    ended = make_rental(S.FAILED, ended_at=START - timedelta(hours=1))
    account_keys.append(ended.label)
    account_keys.refused.add(ended.label)

    assert cycle(c).orphan_keys_deleted == [] and account_keys == [ended.label]
    account_keys.refused.clear()
    assert cycle(c).orphan_keys_deleted == [ended.label] and account_keys == []


def test_providers_without_per_rental_keys_are_not_asked(fake, c, make_rental):
    make_rental(S.DESTROYED, ended_at=START - timedelta(hours=1))
    assert cycle(c).orphan_keys_deleted == []
