"""Value figures on the menu (API, page, rent page), the value sort and the min_cuda filter, and
the compare view (page and API). Figures worked out by hand from inventory/data/gpu_specs.csv."""

from __future__ import annotations

import io
import re
from datetime import timedelta

import pytest
import time_machine
from django.core.management import call_command
from django.utils import timezone

from inventory import menu as menu_module
from inventory.models import ProviderFeed
from inventory.specs import CSV_PATH

pytestmark = pytest.mark.django_db


@pytest.fixture
def offers(make_offer):
    call_command("load_gpu_specs", stdout=io.StringIO())  # a transactional test may have flushed it
    return {
        # 0.35/165.2, 0.35/24, 0.35/1.008
        "4090": make_offer(gpu_type="RTX 4090 24GB", price_per_hour="0.3500", cuda_version="12.8"),
        # 2.1 per GPU: 2.1/989, 2.1/80, 2.1/3.35
        "h100": make_offer(
            gpu_type="H100 SXM 80GB", vram_gb=80, gpu_count=2, price_per_hour="4.2000", cuda_version="12.10"
        ),
        # 0.9/312
        "a100": make_offer(
            gpu_type="A100 PCIE 40GB",
            vram_gb=40,
            price_per_hour="0.9000",
            provider="tensordock",
            cuda_version="12.4",
        ),
        # 1.2 per GPU: 1.2/312
        "a100x8": make_offer(gpu_type="A100 SXM4 80GB", vram_gb=80, gpu_count=8, price_per_hour="9.6000"),
        "unknown": make_offer(
            gpu_type="Imaginary 9000 8GB", vram_gb=8, price_per_hour="0.0100", cuda_version="12.9"
        ),
    }


def by_id(response) -> dict:
    return {row["id"]: row for row in response.json()["results"]}


def ids(response) -> list[str]:
    return [row["id"] for row in response.json()["results"]]


def test_the_api_gives_value_figures_or_null(offers, api_client):
    rows = by_id(api_client.get("/api/v1/inventory"))
    got = rows[str(offers["4090"].pk)]
    assert (got["usd_per_tflop_hour"], got["usd_per_vram_gb_hour"], got["usd_per_tbps_hour"]) == (
        "0.002119",
        "0.014583",
        "0.347222",
    )
    got = rows[str(offers["h100"].pk)]
    assert (got["usd_per_tflop_hour"], got["usd_per_vram_gb_hour"], got["usd_per_tbps_hour"]) == (
        "0.002123",
        "0.026250",
        "0.626866",
    )
    got = rows[str(offers["unknown"].pk)]
    assert (got["usd_per_tflop_hour"], got["usd_per_vram_gb_hour"], got["usd_per_tbps_hour"]) == (
        None,
        None,
        None,
    )
    one = api_client.get(f"/api/v1/inventory/{offers['a100'].pk}").json()
    assert one["usd_per_tflop_hour"] == "0.002885"


def test_sort_by_value_cheapest_tflop_hour_first_unknown_last_both_ways(offers, api_client):
    order = [str(offers[k].pk) for k in ("4090", "h100", "a100", "a100x8")]
    assert ids(api_client.get("/api/v1/inventory", {"sort": "value"})) == [*order, str(offers["unknown"].pk)]
    assert ids(api_client.get("/api/v1/inventory", {"sort": "-value"})) == [
        *order[::-1],
        str(offers["unknown"].pk),
    ]


def test_min_cuda_compares_versions_not_text(offers, api_client):
    # 12.10 > 12.9 > 12.8 > 12.4; an offer without a CUDA version never passes.
    got = ids(api_client.get("/api/v1/inventory", {"min_cuda": "12.9"}))
    assert sorted(got) == sorted([str(offers["h100"].pk), str(offers["unknown"].pk)])
    assert ids(api_client.get("/api/v1/inventory", {"min_cuda": "12.10"})) == [str(offers["h100"].pk)]
    assert len(ids(api_client.get("/api/v1/inventory", {"min_cuda": "12"}))) == 4
    # A patch version is a version too (one min_cuda with min_driver's parser: specs.version_key).
    assert ids(api_client.get("/api/v1/inventory", {"min_cuda": "12.9.1"})) == [str(offers["h100"].pk)]


@pytest.mark.parametrize("bad", ["twelve", "12.4.1.0", "١٢", "-1", "12.", "1234"])
def test_a_bad_min_cuda_is_a_400_naming_it(offers, api_client, bad):
    response = api_client.get("/api/v1/inventory", {"min_cuda": bad})
    assert response.status_code == 400
    assert "min_cuda" in response.json()["errors"]


def test_the_offers_page_shows_the_value_column_and_a_dash_without_a_spec_row(offers, client_logged_in):
    html = client_logged_in.get("/offers/", {"sort": "value"}).content.decode()
    assert "$/TFLOP·h" in html
    assert "$0.002119" in html  # the 4090
    assert "This GPU is not in the spec table" in html  # the unknown GPU's "—"
    rows = html[html.index("<tbody>") :]  # the GPU picker above lists the models too
    assert rows.index("RTX 4090 24GB") < rows.index("H100 SXM 80GB") < rows.index("Imaginary 9000 8GB")
    assert '<option value="value" selected>Value (best first)</option>' in html


def test_the_rent_page_shows_the_value_figures(offers, client_logged_in):
    html = client_logged_in.get(f"/offers/{offers['4090'].pk}/rent/").content.decode()
    assert "$0.002119 per TFLOP·h" in html and "$0.014583 per GB VRAM·h" in html
    assert "$0.347222 per TB/s·h" in html
    html = client_logged_in.get(f"/offers/{offers['unknown'].pk}/rent/").content.decode()
    assert "This GPU is not in the spec table" in html


def test_a_spec_reload_rebuilds_the_menu_with_the_new_figures(offers, api_client, tmp_path):
    api_client.get("/api/v1/inventory")
    built = menu_module.holder.menu
    path = tmp_path / "specs.csv"
    old, new = "Ada Lovelace,24,1008,82.6,165.2,", "Ada Lovelace,24,1008,82.6,175,"
    path.write_text(CSV_PATH.read_text().replace(old, new))
    call_command("load_gpu_specs", str(path), stdout=io.StringIO())
    with time_machine.travel(timezone.now() + timedelta(seconds=menu_module.CHECK_SECONDS + 1)):
        row = by_id(api_client.get("/api/v1/inventory"))[str(offers["4090"].pk)]
    assert menu_module.holder.menu is not built
    assert row["usd_per_tflop_hour"] == "0.002000"  # 0.35 / 175


def test_the_schema_documents_the_value_fields_sort_and_filter(api_client):
    schema = api_client.get("/api/v1/schema/", {"format": "json"}).json()
    offer = schema["components"]["schemas"]["Offer"]["properties"]
    for field in ("usd_per_tflop_hour", "usd_per_vram_gb_hour", "usd_per_tbps_hour"):
        assert offer[field]["nullable"] is True and offer[field]["readOnly"] is True
    params = {p["name"]: p for p in schema["paths"]["/api/v1/inventory"]["get"]["parameters"]}
    assert {"value", "-value"} <= set(params["sort"]["schema"]["enum"])
    assert "min_cuda" in params
    gpus = schema["paths"]["/api/v1/gpus"]["get"]["responses"]["200"]
    assert gpus["content"]["application/json"]["schema"]["$ref"].endswith("/GpuList")


def test_the_compare_api_ranks_models_by_value(offers, make_offer, api_client):
    make_offer(gpu_type="RTX 4090 24GB", price_per_hour="0.8000", gpu_count=2, provider="tensordock")
    make_offer(gpu_type="RTX 4090 24GB", price_per_hour="0.2000", available=False)  # withdrawn
    make_offer(
        gpu_type="RTX 4090 24GB", price_per_hour="0.1000", hidden_until=timezone.now() + timedelta(hours=1)
    )
    rows = api_client.get("/api/v1/gpus").json()["results"]
    assert [r["gpu_type"] for r in rows] == [
        "RTX 4090 24GB",
        "H100 SXM 80GB",
        "A100 PCIE 40GB",
        "A100 SXM4 80GB",
        "Imaginary 9000 8GB",
    ]
    rtx = rows[0]
    assert rtx["offers"] == 2 and rtx["vram_gb"] == 24
    assert rtx["cheapest_price_per_gpu_hour"] == "0.3500"
    assert rtx["providers"] == [
        {"provider": "vastai", "cheapest_price_per_gpu_hour": "0.3500", "offers": 1},
        {"provider": "tensordock", "cheapest_price_per_gpu_hour": "0.4000", "offers": 1},
    ]
    # No outcomes yet: the best of the providers' priors (vastai 0.7, tensordock 0.3).
    assert (rtx["usd_per_tflop_hour"], rtx["tflops"], rtx["best_confidence"]) == (
        "0.002119",
        "165.20",
        "0.700",
    )
    assert rows[-1]["usd_per_tflop_hour"] is None and rows[-1]["tflops"] is None


def test_each_model_shows_the_best_confidence_of_its_visible_offers(
    offers, make_offer, api_client, client_logged_in
):
    """Not the best-value offer's confidence: the highest among the model's offers on the menu."""
    from inventory.models import OutcomeKind, ProvisionOutcome

    dearer = make_offer(gpu_type="RTX 4090 24GB", price_per_hour="0.8000", gpu_count=2, provider="tensordock")
    hidden = make_offer(  # the only runpod offer, so its history reaches no other offer
        gpu_type="RTX 4090 24GB",
        price_per_hour="0.1000",
        provider="runpod",
        hidden_until=timezone.now() + timedelta(hours=1),
    )
    with time_machine.travel(timezone.now(), tick=False):
        for offer in (dearer, hidden):
            for _ in range(8):  # (4 * 0.3 + 8) / (4 + 8) for the tensordock offer
                ProvisionOutcome.objects.create(
                    provider=offer.provider,
                    provider_offer_id=offer.provider_offer_id,
                    host=offer.host,
                    location=offer.location,
                    gpu_type=offer.gpu_type,
                    kind=OutcomeKind.SUCCESS,
                )
        rows = {r["gpu_type"]: r for r in api_client.get("/api/v1/gpus").json()["results"]}
        html = client_logged_in.get("/gpus/").content.decode()
    assert rows["RTX 4090 24GB"]["best_confidence"] == "0.767"  # the hidden offer's 0.833 is not shown
    assert rows["RTX 4090 24GB"]["usd_per_tflop_hour"] == "0.002119"  # still the vastai offer's value
    assert rows["H100 SXM 80GB"]["best_confidence"] == "0.700"  # vastai's prior: no vastai history
    row = html[html.index('data-gpu="RTX 4090 24GB"') :]
    assert '<td class="num">77%</td>' in row[: row.index("</tr>")]


def test_the_compare_page_links_each_model_to_the_filtered_menu(offers, client_logged_in):
    html = client_logged_in.get("/gpus/").content.decode()
    assert 'href="/gpus/" aria-current="page"' in html  # in the nav
    assert 'href="/offers/?gpu=H100%20SXM%2080GB"' in html
    assert html.index("RTX 4090 24GB") < html.index("A100 SXM4 80GB") < html.index("Imaginary 9000 8GB")


def test_the_compare_page_and_api_need_a_login(client, offers):
    assert client.get("/gpus/").status_code == 302
    assert client.get("/api/v1/gpus").status_code == 401


def test_the_compare_rows_follow_a_new_menu(offers, make_offer, api_client):
    assert len(api_client.get("/api/v1/gpus").json()["results"]) == 5
    make_offer(gpu_type="L4 24GB", price_per_hour="0.2000")
    ProviderFeed.objects.create(provider="vastai", last_attempt_at=timezone.now())  # a new menu version
    with time_machine.travel(timezone.now() + timedelta(seconds=menu_module.CHECK_SECONDS + 1)):
        names = [r["gpu_type"] for r in api_client.get("/api/v1/gpus").json()["results"]]
    assert "L4 24GB" in names


def test_the_value_header_sorts_by_value_and_turns_around(offers, client_logged_in):
    html = client_logged_in.get("/offers/").content.decode()
    assert re.search(r'<th [^>]*><a class="sort" href="\?sort=value"[^>]*>\$/TFLOP·h</a></th>', html)
    html = client_logged_in.get("/offers/", {"sort": "value"}).content.decode()
    assert re.search(r'<th [^>]*aria-sort="ascending"[^>]*><a class="sort" href="\?sort=-value"', html)
