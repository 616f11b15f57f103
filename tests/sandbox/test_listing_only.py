"""Listing-only instances: large listings for benchmarks, without an SSH listener per instance."""

from __future__ import annotations

import requests

from ._util import AUTH, vast_get, vast_search


def _list_all(base: str) -> tuple[list[dict], int]:
    """Every instance of the paged v1 listing, and how many pages it took."""
    params = {"limit": "25"}
    instances, pages = [], 0
    while True:
        r = requests.get(f"{base}/api/v1/instances/", params=params, headers=AUTH, timeout=10)
        r.raise_for_status()
        pages += 1
        instances += r.json()["instances"]
        token = r.json()["next_token"]
        if not token:
            return instances, pages
        params["after_token"] = token


def test_listing_only_instances_are_listed_running_without_ssh(sandbox):
    offers_before = len(vast_search(sandbox.vastai_url, {"limit": 5000}))
    labels = [f"shopper-bench-{i}" for i in range(30)]
    created = sandbox.add_listing_only("vastai", labels)
    assert [c["label"] for c in created] == labels
    assert len({c["id"] for c in created}) == 30

    listed, pages = _list_all(sandbox.vastai_url)
    assert pages == 2
    assert sorted(i["label"] for i in listed) == sorted(labels)
    assert {i["actual_status"] for i in listed} == {"running"}
    one = vast_get(sandbox.vastai_url, int(created[0]["id"]))
    assert one["label"] == labels[0] and one["actual_status"] == "running"
    admin = sandbox.instances()
    assert len(admin) == 30 and not any(i["ssh_open"] for i in admin)
    # They exist only in listings: the menu keeps their offers.
    assert len(vast_search(sandbox.vastai_url, {"limit": 5000})) == offers_before


def test_listing_only_instances_are_destroyed_like_any_other(sandbox):
    created = sandbox.add_listing_only("vastai", ["shopper-a", "shopper-b"])
    gone = requests.delete(
        f"{sandbox.vastai_url}/api/v0/instances/{created[0]['id']}/", headers=AUTH, timeout=10
    )
    assert gone.status_code == 200
    assert vast_get(sandbox.vastai_url, int(created[0]["id"])) is None
    assert [i["label"] for i in sandbox.instances()] == ["shopper-b"]
    assert sandbox.reset() == 1
    assert sandbox.instances() == []


def test_listing_only_instances_survive_a_restart_and_ids_never_repeat(sandbox):
    first = sandbox.add_listing_only("vastai", ["shopper-x"])
    sandbox.restart()
    assert [i["label"] for i in sandbox.instances()] == ["shopper-x"]
    second = sandbox.add_listing_only("vastai", ["shopper-y"])
    assert int(second[0]["id"]) > int(first[0]["id"])


def test_listing_only_refuses_bad_requests(sandbox):
    url = f"{sandbox.url}/_sandbox/instances/listing-only"
    assert requests.post(url, json={"dialect": "tensordock", "labels": ["x"]}, timeout=10).status_code == 400
    assert requests.post(url, json={"dialect": "vastai", "labels": "x"}, timeout=10).status_code == 400
    assert requests.post(url, data=b"{not json", timeout=10).status_code == 400
    assert sandbox.instances() == []
