from django.conf import settings
from django.core.cache import cache
from django.utils.functional import SimpleLazyObject

from sessions import hours

# The budget banner is recomputed at most this often per user (it costs a few queries).
BUDGET_BANNER_CACHE_SECONDS = 30


def shopper(request):
    context = {"SANDBOX": settings.SHOPPER_SANDBOX, "HARD_MAX_HOURS": settings.SHOPPER_HARD_MAX_HOURS}
    # Hour fields' min/step come from the one hours rule (sessions/hours.py), like the API's.
    context.update(HOURS_MIN=hours.MIN_HOURS, HOURS_STEP=hours.STEP_HOURS)
    context["SANDBOX_FAULTS"] = settings.SHOPPER_SANDBOX_FAULTS if settings.SHOPPER_SANDBOX else ""
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        # Lazy: only pages that show the banner (base.html) pay for it, once per render; HTMX
        # fragments and polls never touch it.
        context["BUDGET_BANNER"] = SimpleLazyObject(lambda: _budget_banner(user))
    return context


def _budget_banner(user) -> str:
    key = f"costs:budget-banner:{user.pk}"
    text = cache.get(key)
    if text is None:
        from costs.services import budget_banner  # costs → sessions → inventory; shopper wires them

        text = budget_banner(user) or ""
        cache.set(key, text, BUDGET_BANNER_CACHE_SECONDS)
    return text
