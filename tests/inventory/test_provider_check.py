"""``manage.py provider_check``: read-only, counts, and a non-zero exit on anything unparsable.

Against the real sandbox process (what an operator sees with working keys) and against
``responses``-mocked bodies carrying nulls and unknown statuses (what the real APIs sent in the
field, FIELD_NOTES)."""

from __future__ import annotations

import io
import re

import pytest
import requests
import responses
from django.core.management import call_command
from django.core.management.base import CommandError

from inventory.sandbox.testing import running_sandbox

VAST = "https://vast.test"
TD = "https://td.test/api/v2"
KEY = "sk-check-0123456789-SECRET"
WRITE_OPS = ("create", "destroy", "attach_key", "label", "power")


def run_check(*args: str) -> tuple[str, str, CommandError | None]:
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("provider_check", *args, stdout=out, stderr=err)
    except CommandError as exc:
        return out.getvalue(), err.getvalue(), exc
    return out.getvalue(), err.getvalue(), None


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    with running_sandbox(tmp_path_factory.mktemp("check"), boot_delay=0) as sb:
        yield sb


@pytest.fixture
def on_sandbox(sandbox, settings):
    settings.VASTAI_API_URL, settings.VASTAI_API_KEY = sandbox.vastai_url, "check-key"
    settings.TENSORDOCK_API_URL, settings.TENSORDOCK_API_TOKEN = sandbox.tensordock_url, "check-token"
    settings.RUNPOD_API_URL, settings.RUNPOD_API_KEY = sandbox.runpod_url, "check-key"
    settings.LAMBDA_API_URL, settings.LAMBDA_API_KEY = sandbox.lambda_url, "check-key"
    settings.PROVIDER_MIN_INTERVAL_SECONDS = 0
    sandbox.set_faults({})
    sandbox.reset()
    return sandbox


@pytest.mark.django_db
def test_against_the_sandbox_it_counts_and_rents_nothing(on_sandbox):
    ask = requests.post(f"{on_sandbox.vastai_url}/api/v0/bundles/", json={"limit": 1}).json()["offers"][0][
        "id"
    ]
    created = requests.put(
        f"{on_sandbox.vastai_url}/api/v0/asks/{ask}/",
        json={"label": "shopper-11111111-1111-1111-1111-111111111111", "disk": 10},
        headers={"Authorization": "Bearer check-key"},
    )
    assert created.status_code == 200
    before_calls, before = on_sandbox.calls(), on_sandbox.instances()

    out, err, failed = run_check()

    assert failed is None, out + err
    assert "vastai: auth ok" in out and "vastai: account: credit 100000.0, balance 100000.0" in out
    assert re.search(r"vastai: search: [1-9]\d+ offers usable of \d+ rows in 2 page\(s\)", out), out
    assert "vastai: instances: 1 (1 labelled shopper-…)" in out
    assert "tensordock: auth ok" in out and "tensordock: search:" in out
    assert re.search(r"runpod: search: [1-9]\d+ Secure Cloud offers from 1\d GPU types", out), out
    assert re.search(r"lambda: search: [1-9]\d* offers from 15 instance types \([1-9]\d* sold out\)", out), (
        out
    )
    assert "runpod: auth ok" in out and "lambda: auth ok" in out
    assert "lambda: SSH keys: 0 labelled shopper-…" in out
    assert "provider_check: 4 provider(s) OK" in out
    after = on_sandbox.calls()
    for op in WRITE_OPS:
        for dialect in ("vastai", "tensordock", "runpod", "lambda"):
            assert after.get(f"{dialect}.{op}", 0) == before_calls.get(f"{dialect}.{op}", 0), op
    assert on_sandbox.instances() == before


@pytest.mark.django_db
def test_a_refused_key_is_a_problem(on_sandbox, settings):
    settings.VASTAI_API_KEY = "invalid"  # the sandbox's refused key
    _, err, failed = run_check("--provider", "vastai")
    assert failed is not None and "problem" in str(failed)
    assert "vastai: PROBLEM: account failed: auth_failed" in err
    assert "invalid" not in err.replace("invalid_args", "")  # the key itself is never printed


@pytest.mark.django_db
def test_a_faulty_sandbox_is_reported_not_hidden(on_sandbox):
    on_sandbox.set_faults([{"dialect": "tensordock", "op": "list", "fail_next": 5, "error_status": 503}])
    _, err, failed = run_check("--provider", "tensordock")
    assert failed is not None
    assert "tensordock: PROBLEM: list instances (auth) failed: transient" in err


@pytest.mark.django_db
@pytest.mark.parametrize("provider", ["runpod", "lambda"])
def test_runpod_and_lambda_refused_keys_and_faults_are_problems(on_sandbox, settings, provider):
    setattr(settings, f"{provider.upper()}_API_KEY", "invalid")
    _, err, failed = run_check("--provider", provider)
    assert failed is not None and f"{provider}: PROBLEM: search (auth) failed: auth_failed" in err
    setattr(settings, f"{provider.upper()}_API_KEY", "check-key")
    on_sandbox.set_faults([{"dialect": provider, "op": "list", "fail_next": 5, "error_status": 503}])
    _, err, failed = run_check("--provider", provider)
    assert failed is not None and f"{provider}: PROBLEM: list instances failed: transient" in err


@pytest.mark.django_db
def test_runpod_and_lambda_unknown_statuses_and_nulls_fail_the_check(on_sandbox):
    # The real catalogs come from the sandbox; the listings answer drifted rows (mocked here).
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add_passthru(on_sandbox.url)
        rsps.get(
            f"{on_sandbox.runpod_url}/pods",
            json={"pods": [{"id": "p1", "name": None, "status": "HIBERNATING"}]},
        )
        rsps.get(
            f"{on_sandbox.lambda_url}/instances",
            json={"data": [{"id": "i1", "name": "shopper-x", "status": "sleeping", "instance_type": None}]},
        )
        _, err, failed = run_check()
    assert failed is not None
    assert "runpod: PROBLEM: 1 instance(s) with unknown status 'hibernating'" in err
    assert "runpod: PROBLEM: 1 of 1 instances have 'name' null" in err
    assert "lambda: PROBLEM: 1 instance(s) with unknown status 'sleeping'" in err
    assert "lambda: PROBLEM: 1 of 1 instances have 'instance_type' null" in err


@pytest.mark.django_db
def test_a_provider_without_key_named_on_the_command_line_is_a_problem(settings):
    settings.TENSORDOCK_API_TOKEN = ""
    _, err, failed = run_check("--provider", "tensordock")
    assert failed is not None and "no API key set (TENSORDOCK_API_TOKEN)" in err


@pytest.mark.django_db
def test_no_keys_at_all_checks_nothing_and_says_so(settings):
    settings.VASTAI_API_KEY = settings.TENSORDOCK_API_TOKEN = ""
    _, err, failed = run_check()
    assert failed is not None and "nothing was checked" in err


@pytest.fixture
def mocked(settings):
    settings.VASTAI_API_URL, settings.VASTAI_API_KEY = VAST, KEY
    settings.TENSORDOCK_API_URL, settings.TENSORDOCK_API_TOKEN = TD, KEY
    settings.PROVIDER_MIN_INTERVAL_SECONDS = 0
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


GOOD_OFFER = {"id": 101, "gpu_name": "RTX 4090", "num_gpus": 1, "gpu_ram": 24564, "dph_total": 0.41}


@pytest.mark.django_db
def test_vast_nulls_and_unknown_statuses_are_listed_and_fail_the_check(mocked):
    mocked.get(f"{VAST}/api/v0/users/current/", json={"credit": 12.5, "balance": None})
    mocked.post(
        f"{VAST}/api/v0/bundles/",
        json={
            "offers": [GOOD_OFFER, {**GOOD_OFFER, "id": 102, "gpu_name": None}, {"id": 103, "num_gpus": 2}]
        },
    )
    mocked.post(f"{VAST}/api/v0/bundles/", json={"offers": []})
    mocked.get(
        f"{VAST}/api/v1/instances/",
        json={
            "success": True,
            "next_token": None,
            "instances": [
                {"id": 1, "actual_status": "running", "label": "shopper-a", "dph_total": 0.4},
                {"id": 2, "actual_status": "hibernating", "label": "other", "dph_total": 0.4},
                {"id": 3, "actual_status": None, "label": None, "dph_total": None},
            ],
        },
    )
    out, err, failed = run_check("--provider", "vastai")
    assert failed is not None
    assert "vastai: search: 1 offers usable of 3 rows" in out
    assert "vastai: instances: 3 (1 labelled shopper-…)" in out
    assert "1 of 1 account answers have 'balance' null" in err
    assert "1 of 3 offers have 'gpu_name' null" in err
    assert "1 of 3 offers have no 'dph_total' field" in err and "no 'gpu_name' field" in err
    assert "1 instance(s) with unknown actual_status 'hibernating'" in err
    assert "1 of 3 instances have 'dph_total' null" in err
    assert "actual_status' null" not in err  # null is Vast's "not yet", a known state
    assert KEY not in out + err


@pytest.mark.django_db
def test_tensordock_nulls_and_unknown_statuses_are_listed_and_fail_the_check(mocked):
    gpu = {
        "v0Name": "geforcertx4090-pcie-24gb",
        "displayName": "RTX 4090",
        "max_count": 2,
        "price_per_hr": 0.35,
        "network_features": {"dedicated_ip_available": True},
    }
    locations = [
        {"id": "loc-1", "city": "Joplin", "gpus": [gpu, {**gpu, "price_per_hr": None}]},
        {"id": "loc-2", "gpus": [{**gpu, "v0Name": "mystery-gpu"}]},
    ]
    mocked.get(f"{TD}/locations", json={"data": {"locations": locations}})
    mocked.get(
        f"{TD}/instances",
        json={
            "data": [
                {
                    "id": "a",
                    "type": "virtualmachine",
                    "attributes": {"name": "shopper-x", "status": "running"},
                },
                {"id": "b", "type": "virtualmachine", "attributes": {"name": "vm", "status": "Hibernating"}},
                {"id": "c", "type": "virtualmachine", "attributes": {"name": None, "status": "Stopped"}},
            ]
        },
    )
    out, err, failed = run_check("--provider", "tensordock")
    assert failed is not None
    assert "tensordock: search: 2 offers from 2 locations (3 GPU entries)" in out  # counts 1 and 2
    assert "tensordock: instances: 3 (1 labelled shopper-…)" in out
    assert "1 of 3 GPU entries have 'price_per_hr' null" in err
    assert "GPU names without a memory size: ['mystery-gpu']" in err
    assert "1 instance(s) with unknown status 'hibernating'" in err
    assert "1 of 3 instances have 'name' null" in err
    assert KEY not in out + err


@pytest.mark.django_db
def test_clean_mocked_answers_pass(mocked):
    mocked.get(f"{VAST}/api/v0/users/current/", json={"credit": 3.0, "balance": 0.0})
    mocked.post(f"{VAST}/api/v0/bundles/", json={"offers": [GOOD_OFFER]})
    mocked.post(f"{VAST}/api/v0/bundles/", json={"offers": []})
    mocked.get(f"{VAST}/api/v1/instances/", json={"success": True, "instances": [], "next_token": None})
    out, err, failed = run_check("--provider", "vastai")
    assert failed is None, err
    assert "vastai: search: 1 offers usable of 1 rows in 2 page(s)" in out
    assert [c.request.method for c in mocked.calls] == ["GET", "POST", "POST", "GET"]  # reads only


def test_the_command_exits_non_zero_on_a_problem():
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, DEBUG="True", SECRET_KEY="x" * 40, VASTAI_API_KEY="", TENSORDOCK_API_TOKEN="")
    done = subprocess.run(
        [sys.executable, "manage.py", "provider_check"], cwd=root, env=env, capture_output=True, text=True
    )
    assert done.returncode == 1 and "nothing was checked" in done.stderr
