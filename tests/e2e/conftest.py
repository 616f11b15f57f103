"""End-to-end: the real sandbox cloud process, the real adapters, real SSH logins.

Provisioning and teardown run inline (Q_SYNC) when the rental's transaction commits, so these
tests use ``transactional_db``.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from rest_framework.test import APIClient

from inventory.sandbox.testing import running_sandbox
from inventory.services import offers_refresh
from shopper.models import ApiToken

E2E_SETTINGS = {
    "PROVIDER_TIMEOUT_SECONDS": 10,
    "PROVIDER_MIN_INTERVAL_SECONDS": 0.05,
    "SHOPPER_SSH_VERIFY_TIMEOUT_SECONDS": 30,
    "SHOPPER_BOOT_TIMEOUT_SECONDS": 60,
    "SHOPPER_POLL_INTERVAL_SECONDS": 0.2,
    "SHOPPER_CREATE_SETTLE_SECONDS": 0,
    "SHOPPER_TEARDOWN_BUDGET_SECONDS": 60,
    "SHOPPER_DESTROY_MAX_BACKOFF_SECONDS": 1,
}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    with running_sandbox(tmp_path_factory.mktemp("sandbox"), boot_delay=0.5) as sb:
        yield sb


@pytest.fixture
def cloud(sandbox, settings, transactional_db):
    """Point the real adapters at the sandbox and fill the menu from it."""
    settings.VASTAI_API_URL = sandbox.vastai_url
    settings.VASTAI_API_KEY = "sandbox-key"
    settings.TENSORDOCK_API_URL = sandbox.tensordock_url
    settings.TENSORDOCK_API_TOKEN = "sandbox-token"
    settings.RUNPOD_API_URL = sandbox.runpod_url
    settings.RUNPOD_API_KEY = "sandbox-key"
    settings.LAMBDA_API_URL = sandbox.lambda_url
    settings.LAMBDA_API_KEY = "sandbox-key"
    for name, value in E2E_SETTINGS.items():
        setattr(settings, name, value)
    sandbox.set_faults({"rules": []})
    sandbox.reset()
    results = {r.provider: r.outcome for r in offers_refresh(force=True)}
    assert results == {
        "vastai": "refreshed",
        "tensordock": "refreshed",
        "runpod": "refreshed",
        "lambda": "refreshed",
    }, results
    yield sandbox
    sandbox.set_faults({"rules": []})


@pytest.fixture
def api(user):
    _, raw = ApiToken.issue(user=user, name="e2e")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    return client


def ssh_login(tmp_path, private_key: str, ssh: dict, command: str) -> subprocess.CompletedProcess:
    """A real OpenSSH login with the handed-off key, exactly as a user would paste it."""
    key_file = tmp_path / "id_shopper"
    key_file.write_text(private_key)
    os.chmod(key_file, 0o600)
    return subprocess.run(
        ["ssh", "-i", str(key_file), "-p", str(ssh["port"]), "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
         f"{ssh['user']}@{ssh['host']}", command],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
