from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def test_it_redirects_anonymous_visitors_to_login(client):
    response = client.get("/offers/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_it_shows_the_filtered_menu(client_logged_in, make_offer):
    make_offer(gpu_type="H100 SXM 80GB", vram_gb=80, price_per_hour="2.5000")
    make_offer(gpu_type="RTX 4090 24GB", price_per_hour="0.4000")
    response = client_logged_in.get("/offers/", {"gpu": "h100"})
    html = response.content.decode()
    assert response.status_code == 200
    results = html[html.index('<section id="offer-results"') :]
    assert "H100 SXM 80GB" in results and "RTX 4090 24GB" not in results
    assert 'value="h100"' in html  # the filter state survives in the form (and the URL)


def test_an_htmx_request_gets_only_the_results_fragment(client_logged_in, make_offer):
    make_offer()
    response = client_logged_in.get("/offers/", {"sort": "-price"}, HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert html.lstrip().startswith('<section id="offer-results"')
    assert "<html" not in html


def test_a_history_restore_gets_the_full_page(client_logged_in, make_offer):
    make_offer()
    response = client_logged_in.get(
        "/offers/", HTTP_HX_REQUEST="true", HTTP_HX_HISTORY_RESTORE_REQUEST="true"
    )
    assert "<html" in response.content.decode()


def test_an_empty_result_says_so_helpfully(client_logged_in, make_offer):
    make_offer(price_per_hour="3.0000")
    html = client_logged_in.get("/offers/", {"max_price": "0.10"}).content.decode()
    assert "No offers match these filters" in html
    assert "Clear all filters" in html


def test_bad_filter_values_are_explained_not_a_500(client_logged_in, make_offer):
    make_offer()
    response = client_logged_in.get("/offers/", {"min_gpus": "lots"})
    assert response.status_code == 200
    assert "min_gpus" in response.content.decode()


def test_it_paginates_and_keeps_the_filters_in_page_links(client_logged_in, make_offer):
    for i in range(30):
        make_offer(price_per_hour=f"{1 + i / 100:.4f}")
    html = client_logged_in.get("/offers/", {"gpu": "4090"}).content.decode()
    assert "page 1 of 2" in html
    assert "?gpu=4090&page=2" in html
