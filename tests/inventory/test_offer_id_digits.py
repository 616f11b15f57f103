"""GET /api/v1/inventory/{id} with an id that is not ASCII digits is a 404, never a 500 (the
widened schema fuzz found "²": str.isdigit() is True, int() raises)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("pk", ["²", "¹²", "٣", "１", "9" * 19, "99999999999999999999999999"])
def test_an_id_that_is_no_offer_key_is_a_404(api_client, pk):
    response = api_client.get(f"/api/v1/inventory/{pk}")

    assert response.status_code == 404, (response.status_code, response.content[:200])
    assert response.json() == {"detail": "No offer with that id.", "code": "not_found"}


def test_a_real_offer_is_still_found(api_client, make_offer):
    offer = make_offer()

    response = api_client.get(f"/api/v1/inventory/{offer.pk}")

    assert response.status_code == 200 and response.json()["id"] == str(offer.pk)
