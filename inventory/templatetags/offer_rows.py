"""``{% offer_row o %}``: one row of the offers table, rendered once per offer and menu version.

Rendering the 25 rows of a page through the template engine (number formatting, ``url``) was
most of the cost of the offers page and its HTMX partial (~6 ms). A row depends only on its offer
(and the active language), so rows of the in-memory menu (``inventory.menu.OfferRow``) keep
their HTML in their menu's cache, which is dropped with the menu when the version changes.
Anything else (a model ``Offer``) is rendered every time.
"""

from __future__ import annotations

from django import template
from django.template.loader import get_template
from django.utils import translation

register = template.Library()

ROW_TEMPLATE = "inventory/_offer_row.html"
MAX_CACHED_ROWS = 50_000  # per menu version and process: bounds memory at ~40 MB


@register.simple_tag
def offer_row(offer) -> str:
    cache = getattr(offer, "html_cache", None)
    key = (translation.get_language(), offer.pk)
    if cache is not None and key in cache:
        return cache[key]
    html = get_template(ROW_TEMPLATE).render({"o": offer})
    if cache is not None and len(cache) < MAX_CACHED_ROWS:
        cache[key] = html
    return html
