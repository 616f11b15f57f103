"""Deployment scoping (issue 16): two deployments sharing one provider account never touch each
other's machines.

Labels are ``shopper-<deployment id>-<rental uuid>``; reconciliation acts only on its own
deployment's labels. Another deployment's instances are listed on the safety page and never
touched; a pre-scoping label ``shopper-<uuid>`` is adopted while a live rental owns it, and
otherwise alerted and destroyed only by an admin's action.

On the old code every deployment labelled ``shopper-<uuid>`` and every such instance without a
row here was an orphan destroyed after the grace, so another deployment's machines were
destroyed: ``test_an_unscoped_instance_without_a_live_rental_is_alerted_never_destroyed_by_reconcile``
fails there (destroy count 2, orphan alerts); the label, id and page tests fail on import.
The same with real processes: tests/e2e/test_two_deployments.py.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from inventory.providers.base import Transient
from sessions import deployment
from sessions.deployment import InvalidDeploymentId, deployment_id, make_label, parse_label
from sessions.models import Alert, AlertKind, DeploymentIdentity, ForeignInstance, Rental, Status
from sessions.reconcile import reconcile
from tests.sessions.conftest import fresh

S = Status
GRACE = timedelta(seconds=120)


def cycle(capture):
    with capture(execute=True):
        return reconcile(provider_name="fakecloud")


@pytest.fixture
def c(django_capture_on_commit_callbacks):
    return django_capture_on_commit_callbacks


@pytest.fixture
def ours(settings):
    settings.SHOPPER_DEPLOYMENT_ID = "prod"
    return "prod"


# --- the id -----------------------------------------------------------------------------------


def test_the_setting_is_the_id_and_new_rentals_carry_it(ours, make_rental):
    rental = make_rental(S.PENDING)
    assert deployment_id() == "prod"
    assert rental.deployment_id == "prod"
    assert rental.label == f"shopper-prod-{rental.pk}"
    assert not DeploymentIdentity.objects.exists()  # nothing generated when it is set


def test_without_the_setting_one_is_generated_once_and_stored(settings, db):
    settings.SHOPPER_DEPLOYMENT_ID = ""
    deployment.reset_cache()
    first = deployment_id()
    assert deployment.DEPLOYMENT_ID_RE.match(first)
    assert DeploymentIdentity.objects.get().deployment_id == first
    # Another process (an empty cache) reads the stored one, never generates a second.
    deployment.reset_cache()
    assert deployment_id() == first
    assert DeploymentIdentity.objects.count() == 1


def test_the_longest_label_fits_every_providers_name_limit():
    # Lambda: instance and SSH key names 1-64 (RUNPOD_LAMBDA.md 2.4); RunPod pod names take more.
    from inventory.providers.lambdacloud.adapter import MAX_NAME

    longest = make_label("x" * deployment.MAX_DEPLOYMENT_ID, uuid.uuid4())
    assert len(longest) == deployment.MAX_LABEL == MAX_NAME
    assert deployment.validate_deployment_id("x" * deployment.MAX_DEPLOYMENT_ID)
    assert parse_label(longest).deployment == "x" * deployment.MAX_DEPLOYMENT_ID


@pytest.mark.parametrize("bad", ["Prod", "prod-eu", "", "x" * 20, "x" * 33, "pröd", "a b"])
def test_an_invalid_id_is_refused_clearly(bad):
    with pytest.raises(InvalidDeploymentId, match="not valid"):
        deployment.validate_deployment_id(bad)


def test_labels_parse_exactly():
    rid = uuid.uuid4()
    assert parse_label(f"shopper-{rid}") == deployment.ParsedLabel("", rid)
    assert parse_label(f"shopper-prod-{rid}") == deployment.ParsedLabel("prod", rid)
    assert parse_label(f"shopper-prod_eu-{rid}") == deployment.ParsedLabel("prod_eu", rid)
    # Never read as "prod": a longer id, or anything that is not exactly <id>-<uuid>.
    for label in (f"shopper-prod-eu-{rid}", f"shopper-prod-{rid}x", f"xshopper-prod-{rid}", "shopper-prod-1"):
        assert parse_label(label) is None or parse_label(label).deployment != "prod"


# --- reconcile --------------------------------------------------------------------------------


def test_another_deployments_instances_are_listed_and_never_touched(ours, fake, c, make_rental, mailoutbox):
    staging_live = fake.add_instance(make_label("staging", uuid.uuid4()), state="running")
    staging_other = fake.add_instance(make_label("staging", uuid.uuid4()), state="running")
    own_orphan = fake.add_instance(make_label("prod", uuid.uuid4()), state="running")

    first = cycle(c)
    fake.traveller.shift(GRACE + timedelta(seconds=1))
    after = cycle(c)

    assert sorted(first.foreign) == sorted([staging_live.instance_id, staging_other.instance_id])
    # Its own orphan is still destroyed; the other deployment's machines are not.
    assert after.orphans_destroyed == [own_orphan.instance_id]
    assert fake.args("destroy") == [own_orphan.instance_id]
    assert fake.args("get").count(staging_live.instance_id) == 0
    assert [a.provider_instance_id for a in Alert.objects.all()] == [own_orphan.instance_id]
    listed = ForeignInstance.objects.order_by("provider_instance_id")
    assert [(f.deployment, f.provider_instance_id) for f in listed] == [
        ("staging", staging_live.instance_id),
        ("staging", staging_other.instance_id),
    ]

    # Gone from the account (staging tore it down): gone from the list too.
    del fake.instances[staging_other.instance_id]
    cycle(c)
    assert list(ForeignInstance.objects.values_list("provider_instance_id", flat=True)) == [
        staging_live.instance_id
    ]


def test_a_pre_scoping_rental_keeps_its_label_and_is_adopted(ours, fake, c, active_rental):
    legacy = active_rental(deployment_id="")
    assert legacy.label == f"shopper-{legacy.pk}"
    fake.instances[legacy.provider_instance_id].label = legacy.label

    for _ in range(3):
        result = cycle(c)
        fake.traveller.shift(timedelta(seconds=200))

    assert result.instances == 1 and result.unscoped == [] and result.ghosts == []
    assert fresh(legacy).status == S.ACTIVE and fresh(legacy).missing_count == 0
    assert fake.count("destroy") == 0 and not Alert.objects.exists()


def test_an_unscoped_instance_without_a_live_rental_is_alerted_never_destroyed_by_reconcile(
    ours, fake, c, make_rental, mailoutbox
):
    ended = make_rental(S.DESTROYED, deployment_id="")
    unknown = fake.add_instance(f"shopper-{uuid.uuid4()}", state="running")
    of_ended = fake.add_instance(ended.label, state="running")

    for _ in range(3):
        result = cycle(c)
        fake.traveller.shift(GRACE)

    assert sorted(result.unscoped) == sorted([unknown.instance_id, of_ended.instance_id])
    assert result.orphans_found == [] and fake.count("destroy") == 0
    alerts = Alert.objects.filter(kind=AlertKind.UNSCOPED, resolved_at__isnull=True)
    alerted = sorted(a.provider_instance_id for a in alerts)
    assert alerted == sorted([unknown.instance_id, of_ended.instance_id])
    assert len(mailoutbox) == 2  # one each, not one per cycle


def test_an_admin_destroys_an_unscoped_instance_from_the_safety_page(ours, fake, c, client, staff, user):
    unknown = fake.add_instance(f"shopper-{uuid.uuid4()}", state="running")
    foreign = fake.add_instance(make_label("staging", uuid.uuid4()), state="running")
    cycle(c)
    alert = Alert.objects.get(kind=AlertKind.UNSCOPED)

    client.force_login(staff)
    page = client.get(reverse("sessions:safety"))
    assert page.status_code == 200
    body = page.content.decode()
    assert "prod" in body and foreign.instance_id in body and "staging" in body
    assert reverse("sessions:unscoped_destroy", args=[alert.pk]) in body

    # Not staff: 404; no such alert: 404; another kind of alert: refused with the reason. Each
    # time nothing is destroyed and no alert changes.
    client.force_login(user)
    assert client.post(reverse("sessions:unscoped_destroy", args=[alert.pk])).status_code == 404
    orphan_alert = Alert.objects.create(kind=AlertKind.ORPHAN, provider="fakecloud", provider_instance_id="1")
    client.force_login(staff)
    assert client.post(reverse("sessions:unscoped_destroy", args=[999999])).status_code == 404
    refused = client.post(reverse("sessions:unscoped_destroy", args=[orphan_alert.pk]), follow=True)
    assert "Nothing was destroyed" in refused.content.decode()
    assert fake.count("destroy") == 0
    assert not Alert.objects.exclude(destroy_approved_by="").exists()
    assert not Alert.objects.filter(resolved_at__isnull=False).exists()

    response = client.post(reverse("sessions:unscoped_destroy", args=[alert.pk]))
    assert response.status_code == 302
    assert fake.args("destroy") == [unknown.instance_id]
    alert.refresh_from_db()
    assert alert.resolved_at == timezone.now() and alert.destroy_approved_by == staff.get_username()
    assert foreign.instance_id in fake.instances


def test_an_approved_unscoped_destroy_is_retried_by_reconcile_until_confirmed(ours, fake, c, staff):
    from sessions.reconcile import unscoped_destroy

    unknown = fake.add_instance(f"shopper-{uuid.uuid4()}", state="running")
    cycle(c)
    alert = Alert.objects.get(kind=AlertKind.UNSCOPED)
    fake.fail["destroy"].append(Transient("destroy timed out"))

    assert unscoped_destroy(alert, actor="admin") is False
    alert.refresh_from_db()
    assert alert.resolved_at is None and alert.destroy_approved_by == "admin"

    cycle(c)
    alert.refresh_from_db()
    assert alert.resolved_at is not None
    assert fake.args("destroy") == [unknown.instance_id, unknown.instance_id]


def test_a_rental_labelled_under_a_former_id_is_still_ours(settings, fake, c, make_rental):
    """Changing SHOPPER_DEPLOYMENT_ID later must not make the old rentals' machines foreign:
    a rental row here with exactly that label is ours (its orphan is still destroyed)."""
    settings.SHOPPER_DEPLOYMENT_ID = "old"
    ended = make_rental(S.DESTROYED)
    inst = fake.add_instance(ended.label, state="running")
    settings.SHOPPER_DEPLOYMENT_ID = "new"

    cycle(c)
    fake.traveller.shift(GRACE)
    result = cycle(c)

    assert result.foreign == [] and result.orphans_destroyed == [inst.instance_id]


def test_rentals_from_before_the_migration_keep_an_empty_deployment(ours, make_rental):
    rental = make_rental(S.ACTIVE)
    Rental.objects.filter(pk=rental.pk).update(deployment_id="")
    assert fresh(rental).label == f"shopper-{rental.pk}"


def test_an_id_generated_in_a_rolled_back_transaction_is_not_kept(settings, db):
    """A rental refused after its default id was generated rolls the row back: this process
    must not go on labelling with an id that no other process will ever read."""
    import contextlib

    from django.db import transaction

    settings.SHOPPER_DEPLOYMENT_ID = ""
    deployment.reset_cache()
    with contextlib.suppress(RuntimeError), transaction.atomic():
        deployment_id()
        raise RuntimeError("refused")
    assert not DeploymentIdentity.objects.exists()
    again = deployment_id()
    assert DeploymentIdentity.objects.get().deployment_id == again


def test_a_bad_deployment_id_setting_fails_the_system_checks(settings):
    from sessions.models import deployment_id_check

    settings.SHOPPER_DEPLOYMENT_ID = "prod-eu"
    [error] = deployment_id_check(None)
    assert error.id == "rentals.E001" and "not valid" in error.msg
    settings.SHOPPER_DEPLOYMENT_ID = "prod_eu"
    assert deployment_id_check(None) == []
