"""``{% field_widget bound_field %}``: a form field's widget, as ``{{ bound_field }}`` renders it,
kept per process for the inputs it depends on.

The offers page renders its two selects (provider, sort) on every answer, and Django renders a
select through the form renderer's templates, one sub-template per option: about 1 ms of the
full page's ~2.7 ms in the ASGI fast path. Their HTML depends only on what the key below holds
(widget, name, bound value, attributes, choices, language), and the values a person sends are few,
so the HTML is rendered once per combination. Bounded: the values are the clients'.
"""

from __future__ import annotations

from django import template
from django.forms import BoundField
from django.utils import translation

register = template.Library()

MAX_CACHED = 1024
_rendered: dict[tuple, str] = {}


def _key(bound_field: BoundField) -> tuple | None:
    """What ``BoundField.as_widget`` renders from (its attributes exactly as it builds them)."""
    field, widget = bound_field.field, bound_field.field.widget
    if field.show_hidden_initial or field.localize:
        return None
    attrs = bound_field.build_widget_attrs({}, widget)
    if bound_field.auto_id and "id" not in widget.attrs:
        attrs.setdefault("id", bound_field.auto_id)
    choices = getattr(field, "choices", None)
    key = (
        translation.get_language(),
        type(widget),
        bound_field.html_name,
        repr(bound_field.value()),
        repr(sorted(attrs.items())),
        repr(sorted(widget.attrs.items())),
        None if choices is None else repr([(str(v), str(label)) for v, label in choices]),
    )
    return key


@register.simple_tag
def field_widget(bound_field: BoundField) -> str:
    key = _key(bound_field)
    html = None if key is None else _rendered.get(key)
    if html is None:
        html = str(bound_field)  # Django renders it (safe HTML)
        if key is not None:
            if len(_rendered) >= MAX_CACHED:
                _rendered.clear()
            _rendered[key] = html
    return html
