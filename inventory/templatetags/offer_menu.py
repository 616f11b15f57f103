"""The offers page's filter fields, GPU model picker and sortable column headers (issue 18).

Every field is rendered the same way: a label, the input, its help and, when the server refused
its value, ``aria-invalid`` and a message that starts with the label (``static/js/app.js`` does
the same in the browser for values its constraint validation rejects).
"""

from __future__ import annotations

from django import template
from django.forms import BoundField
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

register = template.Library()

MAX_CACHED_PICKERS = 1024
_pickers: dict[tuple, SafeString] = {}


def field_id(name: str) -> str:
    return f"f-{name}"


def _error_text(bound_field: BoundField) -> str:
    return f"{bound_field.label}: {' '.join(bound_field.errors)} Not applied." if bound_field.errors else ""


@register.simple_tag
def filter_field(bound_field: BoundField, kind: str = "text", help: bool = False, **attrs) -> SafeString:
    """One filter input: ``{% filter_field f.min_gpus "number" min="1" max="64" step="1" %}``."""
    name, fid = bound_field.name, field_id(bound_field.name)
    value = bound_field.value()
    value = "" if value is None or isinstance(value, list) else str(value)
    described = [f"{fid}-error"]
    help_html = ""
    if help and bound_field.help_text:
        described.insert(0, f"{fid}-help")
        help_html = format_html('<small class="help" id="{}-help">{}</small>', fid, bound_field.help_text)
    extra = format_html_join("", ' {}="{}"', sorted(attrs.items()))
    invalid = mark_safe(' aria-invalid="true"') if bound_field.errors else ""
    return format_html(
        '<div class="field{}"><label for="{}">{}</label>'
        '<input id="{}" type="{}" name="{}" value="{}"{} aria-describedby="{}"{}>'
        '{}<span class="field-error" id="{}-error">{}</span></div>',
        " has-error" if bound_field.errors else "",
        fid,
        bound_field.label,
        fid,
        kind,
        name,
        value,
        extra,
        " ".join(described),
        invalid,
        help_html,
        fid,
        _error_text(bound_field),
    )


@register.simple_tag
def flag_field(bound_field: BoundField, text: str) -> SafeString:
    """A yes-only checkbox for a yes/no filter (``verified=true``); the API also takes false."""
    fid = field_id(bound_field.name)
    checked = mark_safe(" checked") if bound_field.value() == "true" else ""
    invalid = mark_safe(' aria-invalid="true"') if bound_field.errors else ""
    return format_html(
        '<div class="field{}"><label class="choice" for="{}">'
        '<input id="{}" type="checkbox" name="{}" value="true"{} aria-describedby="{}-error"{}> {}</label>'
        '<span class="field-error" id="{}-error">{}</span></div>',
        " has-error" if bound_field.errors else "",
        fid,
        fid,
        bound_field.name,
        checked,
        fid,
        invalid,
        text,
        fid,
        _error_text(bound_field),
    )


def _terms(bound_field: BoundField) -> list[str]:
    """The GPU terms as sent (the field's cleaned list, or the raw values when refused)."""
    value = bound_field.value()
    values = value if isinstance(value, list | tuple) else [value]
    terms = []
    for v in values:
        for term in str(v or "").split(","):
            if term.strip() and term.strip() not in terms:
                terms.append(term.strip())
    return terms


@register.simple_tag
def gpu_picker(bound_field: BoundField, gpu_models: tuple[tuple[str, int], ...]) -> SafeString:
    """The GPU models on the menu (with their number of offers) as checkboxes, and a text input
    for part of a name; both send ``gpu`` (any of them matches). A term that is exactly a model
    name ticks that model; the rest go in the text input. Rendered once per menu and choice."""
    terms = _terms(bound_field)
    key = (tuple(gpu_models), tuple(terms), tuple(bound_field.errors))
    found = _pickers.get(key)
    if found is not None:
        return found
    names = {name for name, _ in gpu_models}
    picked = [t for t in terms if t in names]
    typed = ", ".join(t for t in terms if t not in names)
    boxes = format_html_join(
        "",
        '<label class="choice"><input type="checkbox" name="gpu" value="{}"{}> {} '
        '<span class="muted">({})</span></label>',
        ((name, mark_safe(" checked" if name in picked else ""), name, f"{n:,}") for name, n in gpu_models),
    )
    fid = field_id("gpu")
    html = format_html(
        '<fieldset class="field gpu-picker{}"><legend>{}</legend>'
        '<details class="gpu-models"><summary>Models{}</summary>'
        '<div class="gpu-model-list">{}</div></details>'
        '<input id="{}" type="text" name="gpu" value="{}" aria-label="GPU name contains" '
        'placeholder="or type: A100, 4090, 80GB" aria-describedby="{}-error"{}>'
        '<span class="field-error" id="{}-error">{}</span></fieldset>',
        " has-error" if bound_field.errors else "",
        bound_field.label,
        format_html(" <span class='muted'>({} picked)</span>", len(picked)) if picked else "",
        boxes,
        fid,
        typed,
        fid,
        mark_safe(' aria-invalid="true"') if bound_field.errors else "",
        fid,
        _error_text(bound_field),
    )
    if len(_pickers) >= MAX_CACHED_PICKERS:
        _pickers.clear()
    _pickers[key] = html
    return html


# The offers table's header row: (sortable column or None, label, CSS class, title).
VALUE_TITLE = "Value: $ per dense BF16 TFLOP-hour (FP32 where there is no BF16), from spec peaks"
CONFIDENCE_TITLE = (
    "How often rentals of this offer (or its host, place or GPU model) became active for us lately"
)
HEADER_ROW = (
    (None, "GPU", "", ""),
    ("gpus", "GPUs", "num", ""),
    ("vram", "VRAM/GPU", "num", ""),
    ("price", "$/h", "num keep-case", ""),
    ("price_per_gpu", "$/GPU·h", "num keep-case", ""),
    ("value", "$/TFLOP·h", "num keep-case", VALUE_TITLE),
    (None, "Location", "", ""),
    ("reliability", "Reliability", "num", ""),
    ("confidence", "Confidence", "", CONFIDENCE_TITLE),
    (None, "CUDA · driver", "", ""),
    ("network", "Net ↓/↑ Mbps", "num keep-case", ""),
    ("disk", "Disk", "num", ""),
    ("duration", "Max rental", "num", ""),
    (None, "Host", "", ""),
    (None, "CPU / RAM", "", ""),
)


@register.simple_tag
def offer_table_head(sorting: dict) -> SafeString:
    """The header cells of the offers table, sortable ones as ``sort_header`` renders them (one
    tag for the row: eight tags cost a fifth of the results partial)."""
    cells = [
        sort_header(sorting, column, label, css, title)
        if column
        else format_html(
            '<th scope="col"{}{}>{}</th>',
            format_html(' class="{}"', css) if css else "",
            format_html(' title="{}"', title) if title else "",
            label,
        )
        for column, label, css, title in HEADER_ROW
    ]
    return mark_safe("".join(cells))


def sort_header(sorting: dict, column: str, label: str, css: str = "", title: str = "") -> SafeString:
    """A column header that sorts by its column (a link: keyboard and no-JS work), turning the
    order around when it is already sorted by it; ``aria-sort`` says how it is sorted now."""
    state = sorting[column]
    # The arrow is CSS (a.sort::after): screen readers get aria-sort, not a glyph.
    return format_html(
        '<th scope="col" class="{}"{}{}><a class="sort" href="?{}" hx-get="?{}" hx-target="#offer-results" '
        'hx-swap="outerHTML" hx-push-url="true">{}</a></th>',
        css,
        format_html(' title="{}"', title) if title else "",
        format_html(' aria-sort="{}"', state["aria_sort"]) if state["aria_sort"] else "",
        state["query"],
        state["query"],
        label,
    )


@register.filter
def rental_span(hours: int | None) -> str:
    """The longest rental allowed, short: "36 h", "30 d"; "—" when the provider gives none."""
    if hours is None:
        return "—"
    return f"{hours} h" if hours < 48 else f"{hours // 24} d"
