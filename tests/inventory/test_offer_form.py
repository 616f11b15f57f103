"""``{% field_widget %}`` (inventory/templatetags/offer_form.py) renders exactly what
``{{ bound_field }}`` renders, for any value a client sends, after any other value was cached."""

from __future__ import annotations

import copy
import random

import pytest
from django.http import QueryDict

from inventory.filters import filter_form
from inventory.templatetags import offer_form

pytestmark = pytest.mark.django_db

VALUES = [
    "",
    "vastai",
    "tensordock",
    "nope",
    "price",
    "-price",
    "bogus",
    "-reliability",
    "<b>",
    "é",
    "vram_gb",
]


def test_the_cached_widget_is_what_django_renders_for_every_value():
    rng = random.Random(3)
    offer_form._rendered.clear()
    for _ in range(300):
        data = QueryDict(mutable=True)
        for name in ("provider", "sort"):
            if rng.random() < 0.8:
                data.setlist(name, rng.sample(VALUES, rng.choice([1, 1, 1, 2])))
        if rng.random() < 0.3:
            data["min_gpus"] = rng.choice(["x", "2"])
        form = filter_form(data)
        form.is_valid()
        for name in ("provider", "sort", "gpu", "min_gpus"):
            assert offer_form.field_widget(form[name]) == str(form[name]), (name, data)
    assert 0 < len(offer_form._rendered) < 300  # it did cache, once per combination


def test_other_choices_are_a_new_key():
    form = filter_form(QueryDict("provider=vastai"))
    form.is_valid()
    before = offer_form.field_widget(form["provider"])
    other = filter_form(QueryDict("provider=vastai"))
    # The forms of filter_form share their fields (filters.SharedFields): a form that changes one
    # must copy it first, as this one does.
    other.fields = copy.deepcopy(dict(other.fields))
    other.fields["provider"].choices = [("", "All providers"), ("vastai", "Vast (renamed)")]
    assert "Vast (renamed)" in offer_form.field_widget(other["provider"])
    assert offer_form.field_widget(other["provider"]) == str(other["provider"])
    assert offer_form.field_widget(form["provider"]) == before == str(form["provider"])
