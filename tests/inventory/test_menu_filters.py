"""The menu renters need (issue 18): the new filters, sorts and fields in the API and on the
offers page, and bad input refused clearly with nothing else changed."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest

from inventory import menu as menu_module
from inventory.models import Offer

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def menu(make_offer):
    return {
        "fast": make_offer(
            gpu_type="RTX 4090 24GB",
            price_per_hour="0.4000",
            cuda_version="12.8",
            driver_version="570.133.07",
            inet_down_mbps=5000,
            inet_up_mbps=2000,
            max_disk_gb=500,
            verified=True,
            datacenter=True,
            max_duration_hours=720,
            reliability=Decimal("0.9900"),
        ),
        "slow": make_offer(
            gpu_type="RTX 3090 24GB",
            price_per_hour="0.2000",
            cuda_version="12.2",
            driver_version="535.104.05",
            inet_down_mbps=100,
            inet_up_mbps=50,
            max_disk_gb=40,
            verified=False,
            datacenter=False,
            max_duration_hours=12,
            reliability=Decimal("0.9000"),
        ),
        # TensorDock: no network, verification, hosting or duration figures.
        "td": make_offer(
            provider="tensordock",
            gpu_type="A100 SXM4 80GB",
            vram_gb=80,
            price_per_hour="1.2000",
            cuda_version="",
            driver_version="",
            max_disk_gb=2000,
            reliability=None,
        ),
    }


def names(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [row["gpu_type"] for row in response.json()["results"]]


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"min_cuda": "12.4"}, ["RTX 4090 24GB"]),
        ({"min_cuda": "12"}, ["RTX 3090 24GB", "RTX 4090 24GB"]),
        ({"min_cuda": "12.10"}, []),  # 12.10 is newer than 12.8 (numbers, not text)
        ({"min_driver": "550"}, ["RTX 4090 24GB"]),
        ({"min_driver": "535.104.05"}, ["RTX 3090 24GB", "RTX 4090 24GB"]),
        ({"min_inet_down_mbps": "1000"}, ["RTX 4090 24GB"]),
        ({"min_inet_up_mbps": "50"}, ["RTX 3090 24GB", "RTX 4090 24GB"]),
        ({"min_disk_gb": "500"}, ["RTX 4090 24GB", "A100 SXM4 80GB"]),
        ({"min_duration_hours": "24"}, ["RTX 4090 24GB"]),
        ({"verified": "true"}, ["RTX 4090 24GB"]),
        ({"verified": "false"}, ["RTX 3090 24GB"]),
        ({"datacenter": "true"}, ["RTX 4090 24GB"]),
        ({"min_reliability": "0.95"}, ["RTX 4090 24GB"]),
        ({"min_reliability_pct": "95"}, ["RTX 4090 24GB"]),
        ({"min_reliability_pct": "90"}, ["RTX 3090 24GB", "RTX 4090 24GB"]),
        ({"gpu": ["4090", "a100"]}, ["RTX 4090 24GB", "A100 SXM4 80GB"]),
        ({"gpu": "4090, A100"}, ["RTX 4090 24GB", "A100 SXM4 80GB"]),
        ({"gpu": ["RTX 3090 24GB", "nothing"]}, ["RTX 3090 24GB"]),
    ],
)
def test_each_new_filter_in_the_api(api_client, menu, params, expected):
    assert names(api_client.get("/api/v1/inventory", params)) == expected


@pytest.mark.parametrize(
    "sort, expected",
    [
        # Unknown (TensorDock: NULL) sorts last both ways, on every database.
        ("-inet_down", ["RTX 4090 24GB", "RTX 3090 24GB", "A100 SXM4 80GB"]),
        ("inet_down", ["RTX 3090 24GB", "RTX 4090 24GB", "A100 SXM4 80GB"]),
        ("-disk", ["A100 SXM4 80GB", "RTX 4090 24GB", "RTX 3090 24GB"]),
        ("-max_duration", ["RTX 4090 24GB", "RTX 3090 24GB", "A100 SXM4 80GB"]),
        ("max_duration", ["RTX 3090 24GB", "RTX 4090 24GB", "A100 SXM4 80GB"]),
        ("-price_per_gpu", ["A100 SXM4 80GB", "RTX 4090 24GB", "RTX 3090 24GB"]),
    ],
)
def test_the_new_sorts(api_client, menu, sort, expected):
    assert names(api_client.get("/api/v1/inventory", {"sort": sort})) == expected


def test_the_api_shows_the_new_fields(api_client, menu):
    rows = {r["gpu_type"]: r for r in api_client.get("/api/v1/inventory").json()["results"]}
    fast, td = rows["RTX 4090 24GB"], rows["A100 SXM4 80GB"]
    assert (fast["cuda_version"], fast["driver_version"]) == ("12.8", "570.133.07")
    assert (fast["inet_down_mbps"], fast["inet_up_mbps"], fast["max_disk_gb"]) == (5000, 2000, 500)
    assert (fast["verified"], fast["datacenter"], fast["max_duration_hours"]) == (True, True, 720)
    assert fast["reliability"] == "0.9900"  # 0 to 1 in the API
    assert (td["inet_down_mbps"], td["verified"], td["datacenter"], td["max_duration_hours"]) == (
        None,
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    "params, name",
    [
        ({"min_cuda": "12.x"}, "min_cuda"),
        ({"min_cuda": "12.4.1.0"}, "min_cuda"),
        ({"min_driver": "v550"}, "min_driver"),
        ({"min_inet_down_mbps": "fast"}, "min_inet_down_mbps"),
        ({"min_inet_up_mbps": "-1"}, "min_inet_up_mbps"),
        ({"min_disk_gb": "1.5"}, "min_disk_gb"),
        ({"min_duration_hours": "forever"}, "min_duration_hours"),
        ({"verified": "maybe"}, "verified"),
        ({"datacenter": "1"}, "datacenter"),
        ({"min_reliability_pct": "101"}, "min_reliability_pct"),
        ({"min_reliability": "95"}, "min_reliability"),  # percent given to the 0-1 parameter
        ({"gpu": ["x" * 65]}, "gpu"),
        ({"gpu": ",".join(f"g{i}" for i in range(21))}, "gpu"),
        ({"gpu": "a\x00b"}, "gpu"),
        ({"sort": "cuda"}, "sort"),
    ],
)
def test_bad_input_is_a_clear_400_and_changes_nothing(api_client, menu, params, name):
    api_client.get("/api/v1/inventory")
    built, before = menu_module.holder.menu, list(Offer.objects.order_by("pk").values())
    response = api_client.get("/api/v1/inventory", params)
    assert response.status_code == 400
    assert list(response.json()["errors"]) == [name]
    assert menu_module.holder.menu is built
    assert list(Offer.objects.order_by("pk").values()) == before
    assert names(api_client.get("/api/v1/inventory")) == ["RTX 3090 24GB", "RTX 4090 24GB", "A100 SXM4 80GB"]


def test_the_schema_documents_the_new_filters_and_the_reliability_scale(api_client):
    text = api_client.get("/api/v1/schema/", HTTP_ACCEPT="application/json").content.decode()
    for name in (
        "min_cuda",
        "min_driver",
        "min_inet_down_mbps",
        "min_disk_gb",
        "min_duration_hours",
        "datacenter",
    ):
        assert f'"{name}"' in text
    assert "0 to 1, e.g. 0.95" in text and "percent, 0 to 100" in text
    assert "max_duration_hours" in text and "-max_duration" in text


# ---------------------------------------------------------------------------------------------
# The offers page
# ---------------------------------------------------------------------------------------------
def results_of(html: str) -> str:
    return html[html.index('<section id="offer-results"') :]


def test_the_page_shows_the_new_columns(client_logged_in, menu):
    html = results_of(client_logged_in.get("/offers/").content.decode())
    assert "12.8" in html and "570.133.07" in html
    assert "5000 / 2000" in html and "500 GB" in html and "30 d" in html and "12 h" in html
    assert ">verified<" in html and ">datacenter<" in html
    assert "99%" in html  # reliability in percent, as the form takes it


def test_headers_sort_by_link_with_aria_sort_and_turn_around(client_logged_in, menu):
    html = client_logged_in.get("/offers/", {"gpu": "RTX", "sort": "-inet_down"}).content.decode()
    header = re.search(r'<th scope="col" class="num keep-case" aria-sort="descending">.*?</th>', html)
    assert header and "Net" in header.group(0)
    # Clicking it again turns it around, keeping the filters; other headers start unsorted.
    assert 'href="?gpu=RTX&amp;sort=inet_down"' in header.group(0)
    assert 'href="?gpu=RTX&amp;sort=price_per_gpu"' in html
    assert html.count("aria-sort=") == 1
    assert "hx-push-url" in header.group(0)


def test_the_default_sort_is_marked_on_the_price_header(client_logged_in, menu):
    html = client_logged_in.get("/offers/").content.decode()
    assert re.search(r'aria-sort="ascending"><a class="sort" href="\?sort=-price"', html)


def test_the_reliability_field_takes_percent_and_says_so(client_logged_in, menu):
    html = client_logged_in.get("/offers/", {"min_reliability_pct": "95"}).content.decode()
    assert 'name="min_reliability_pct" value="95"' in html
    assert "Min reliability (%)" in html and "Percent, 0 to 100" in html
    assert names_in(html) == ["RTX 4090 24GB"]


def names_in(html: str) -> list[str]:
    return re.findall(r'<td class="gpu" data-label="GPU">([^<]*)</td>', results_of(html))


def test_a_refused_value_is_marked_on_its_field_and_not_applied(client_logged_in, menu):
    html = client_logged_in.get("/offers/", {"min_gpus": "100", "gpu": "RTX"}).content.decode()
    field = re.search(r'<input id="f-min_gpus"[^>]*>', html).group(0)
    assert 'aria-invalid="true"' in field and 'value="100"' in field
    error = re.search(r'<span class="field-error" id="f-min_gpus-error">([^<]*)</span>', html).group(1)
    assert error.startswith("Min GPUs: Ensure this value is less than or equal to 64.")
    results = results_of(html)
    assert "This filter was not applied" in results and 'data-error-field="min_gpus"' in results
    # The other filters still apply.
    assert sorted(names_in(html)) == ["RTX 3090 24GB", "RTX 4090 24GB"]


def test_the_partial_echoes_the_refusal_too(client_logged_in, menu):
    html = client_logged_in.get("/offers/", {"min_cuda": "twelve"}, HTTP_HX_REQUEST="true").content.decode()
    assert html.lstrip().startswith('<section id="offer-results"')
    assert 'data-error-field="min_cuda"' in html and "Min CUDA" in html and "not applied" in html
    assert len(names_in(html)) == 3


def test_the_gpu_picker_lists_the_models_with_counts_and_ticks_the_chosen(client_logged_in, menu, make_offer):
    make_offer(gpu_type="RTX 4090 24GB", price_per_hour="0.5000")
    html = client_logged_in.get("/offers/", {"gpu": ["RTX 4090 24GB", "a100"]}).content.decode()
    assert re.search(r'value="RTX 4090 24GB" checked> RTX 4090 24GB <span class="muted">\(2\)</span>', html)
    assert re.search(r'value="RTX 3090 24GB"> RTX 3090 24GB <span class="muted">\(1\)</span>', html)
    assert '<input id="f-gpu" type="text" name="gpu" value="a100"' in html  # typed: in the text box
    assert sorted(names_in(html)) == ["A100 SXM4 80GB", "RTX 4090 24GB", "RTX 4090 24GB"]


def test_the_navigation_folds_behind_a_menu_button(client_logged_in, menu):
    html = client_logged_in.get("/offers/").content.decode()
    assert (
        '<button class="nav-toggle btn small" type="button" aria-expanded="false" aria-controls="site-nav">'
        in html
    )
    assert '<nav class="nav" id="site-nav"' in html
