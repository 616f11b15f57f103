"""`make run` starts the sandbox with the field-notes fault mix unless SANDBOX_FAULTS says
otherwise, and every page's sandbox banner says so."""

from __future__ import annotations

import pytest

from inventory.sandbox import faults
from tools.devserver import sandbox_faults


def test_make_run_defaults_to_the_field_mix_and_names_it():
    env: dict = {}
    words = sandbox_faults(env)
    assert env["SANDBOX_FAULTS"] == "field"
    assert faults.parse(env["SANDBOX_FAULTS"]) == faults.FIELD_MIX
    assert "TensorDock hosts without public IPs" in words and "slow Vast loads" in words


def test_none_turns_them_off():
    env = {"SANDBOX_FAULTS": "none"}
    assert sandbox_faults(env) == ""
    assert env["SANDBOX_FAULTS"] == "none"


def test_own_json_is_kept_and_a_bad_value_stops_make_run():
    env = {"SANDBOX_FAULTS": '[{"dialect": "vastai", "oci_fail": 0.5}]'}
    assert sandbox_faults(env) == "Vast containers that never start"
    with pytest.raises(SystemExit, match="SANDBOX_FAULTS"):
        sandbox_faults({"SANDBOX_FAULTS": "sometimes"})


@pytest.mark.django_db
def test_the_sandbox_banner_says_what_is_injected_and_how_to_turn_it_off(client, settings):
    settings.SHOPPER_SANDBOX = True
    settings.SHOPPER_SANDBOX_FAULTS = "stale TensorDock offers"
    page = client.get("/accounts/login/").content.decode()
    assert "stale TensorDock offers" in page and "SANDBOX_FAULTS=none make run" in page
    settings.SHOPPER_SANDBOX_FAULTS = ""
    page = client.get("/accounts/login/").content.decode()
    assert "Sandbox cloud." in page and "SANDBOX_FAULTS=none" not in page
