"""What renters compare on (issue 18), from Vast's offer rows: network speed, verification,
datacenter hosting and the longest rental allowed."""

from __future__ import annotations

import responses

from .conftest import load
from .test_vastai import BUNDLES, add_search, by_id


def test_search_keeps_network_verification_hosting_and_duration(rsps, vast):
    add_search(rsps, load("vastai_offers_search.json"))
    v100 = by_id(vast.search_offers())["21831724"]
    # inet_down 5243.4 / inet_up 1928.6 Mbps, "verified", hosting_type 0, duration 2653630 s.
    assert (v100.inet_down_mbps, v100.inet_up_mbps) == (5243, 1928)
    assert (v100.verified, v100.datacenter) == (True, False)
    assert v100.max_duration_hours == 737  # 2653630 // 3600
    assert v100.max_disk_gb == 482  # disk_space: the disk a rental can have


def test_missing_or_odd_values_are_unknown_not_invented(rsps, vast):
    base = load("vastai_offers_search.json")["offers"][0]
    variants = [
        {"id": 1, "inet_down": None, "inet_up": "fast", "verification": None, "hosting_type": None},
        {"id": 2, "duration": -5.0, "verification": "deverified", "hosting_type": 2},
        {"id": 3, "duration": None, "verification": "", "inet_down": -1},
    ]
    rows = [{k: v for k, v in {**base, **variant}.items()} for variant in variants]
    rsps.add(responses.POST, BUNDLES, json={"offers": rows})
    rsps.add(responses.POST, BUNDLES, json={"offers": []})
    o = by_id(vast.search_offers())
    assert (o["1"].inet_down_mbps, o["1"].inet_up_mbps, o["1"].verified, o["1"].datacenter) == (
        None,
        None,
        None,
        None,
    )
    assert (o["2"].max_duration_hours, o["2"].verified, o["2"].datacenter) == (None, False, True)
    assert (o["3"].max_duration_hours, o["3"].verified, o["3"].inet_down_mbps) == (None, None, None)
