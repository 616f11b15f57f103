"""Fixtures of the sandbox-cloud tests: one shared sandbox process per module (boot delay 0),
reset before each test so tests don't see each other's instances or faults."""

from __future__ import annotations

import pytest

from inventory.sandbox.testing import SandboxHandle, running_sandbox


@pytest.fixture(scope="module")
def shared_sandbox(tmp_path_factory) -> SandboxHandle:
    with running_sandbox(tmp_path_factory.mktemp("sandbox"), boot_delay=0) as sb:
        yield sb


@pytest.fixture
def sandbox(shared_sandbox: SandboxHandle) -> SandboxHandle:
    shared_sandbox.set_faults({})
    shared_sandbox.reset()
    return shared_sandbox
