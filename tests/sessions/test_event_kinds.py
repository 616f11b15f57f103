"""Events are found by kind and data keys, never by their sentence (issue 13): the chaos run's
figures and the migration that gave old events their kind."""

from __future__ import annotations

import importlib

import pytest
from django.apps import apps

from sessions.models import DEADLINE_AGENT_SILENT, EventCause, EventKind, RentalEvent
from tests.factories import RentalFactory
from tools.chaos import deadline_lags, field_faults_seen

pytestmark = pytest.mark.django_db


def event(rental, kind, reason, **data) -> RentalEvent:
    return RentalEvent.objects.create(rental=rental, kind=kind, reason=reason, data=data)


def test_chaos_field_faults_are_found_by_cause_and_provider_words_whatever_our_sentence():
    a, b, c = RentalFactory(), RentalFactory(), RentalFactory()
    # Our sentences reworded freely; the provider's own words kept verbatim in provider_error.
    event(a, EventKind.ERROR, "Nope", cause=EventCause.CREATE_FAILED, code="offer_unavailable",
          provider_error="tensordock create: No available public IPs on hostnode")  # fmt: skip
    event(a, EventKind.TRANSITION, "Gone", cause=EventCause.BOOT_TIMEOUT, provision_failed=True)
    event(b, EventKind.WARNING, "Retrying", cause=EventCause.CREATE_401, code="auth_failed")
    event(b, EventKind.TRANSITION, "Broken GPUs", cause=EventCause.GPU_NO_DRIVER)
    event(b, EventKind.ERROR, "Full", cause=EventCause.CREATE_FAILED, code="offer_unavailable",
          provider_error="instance-operations/launch/insufficient-capacity: Not enough capacity")  # fmt: skip
    event(c, EventKind.TRANSITION, "Bad", cause=EventCause.INSTANCE_FAILED,
          provider_error="created Error: OCI runtime create failed: runc")  # fmt: skip
    event(c, EventKind.TRANSITION, "Lied", cause=EventCause.GPU_MISMATCH)
    # The old sentences without a cause count for nothing.
    event(c, EventKind.INFO, "The instance did not start within the boot timeout; no working NVIDIA driver")

    assert field_faults_seen() == {
        "no_public_ip": 1,
        "stale_location": 0,
        "auth_401": 1,
        "no_such_ask": 0,
        "oci_failed": 1,
        "boot_timeout": 1,
        "no_driver": 1,
        "gpu_refused": 2,
        "runpod_capacity": 0,
        "lambda_capacity": 1,
    }


def test_deadline_lags_come_from_deadline_events_only():
    rental = RentalFactory()
    event(rental, EventKind.DEADLINE, "Stopped at its deadline", lag_seconds=4.5,
          deadline_kind=DEADLINE_AGENT_SILENT)  # fmt: skip
    event(rental, EventKind.INFO, "Deadline enforced", lag_seconds=99)
    assert deadline_lags() == [4.5]


def test_the_migration_gives_old_events_their_kind_and_cause():
    rental = RentalFactory()
    deadline = event(rental, EventKind.INFO, "Deadline enforced", lag_seconds=2)
    idle = event(rental, EventKind.INFO, "Idle stop enforced")
    destroy = event(rental, EventKind.ERROR, "Destroy attempt 1 failed: transient: 502", attempt=1)
    other = event(rental, EventKind.ERROR, "Create answered transient: 502")
    migration = importlib.import_module("sessions.migrations.0012_event_kinds")

    migration.kinds_from_sentences(apps, None)

    for e in (deadline, idle, destroy, other):
        e.refresh_from_db()
    assert (deadline.kind, deadline.data) == (EventKind.DEADLINE, {"lag_seconds": 2})
    assert idle.kind == EventKind.IDLE_STOP
    assert destroy.data == {"attempt": 1, "cause": EventCause.DESTROY_FAILED}
    assert (other.kind, other.data) == (EventKind.ERROR, {})
