"""Pages for renting and running sessions: rent, list, detail, stop, key download, SSH keys."""

from __future__ import annotations

import logging
import uuid
from decimal import Decimal

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db import IntegrityError, transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect

from common.htmx import HtmxHttpRequest, is_fragment
from common.pages import refusals
from inventory.models import Offer
from inventory.providers.base import ProviderError
from sessions import idempotency, keys, lifecycle, services
from sessions.deployment import deployment_id
from sessions.forms import RentForm, SSHKeyForm
from sessions.hours import MIN_HOURS, STEP_HOURS, hours_check
from sessions.models import (
    IN_FLIGHT_STATUSES,
    Alert,
    AlertKind,
    EventKind,
    ForeignInstance,
    Rental,
    SSHKey,
    Status,
)
from sessions.reconcile import unscoped_destroy as reconcile_unscoped_destroy
from shopper.middleware import local_time
from shopper.templatetags.shopper_format import offset_label

log = logging.getLogger(__name__)
LIST_PAGE_SIZE = 50


def _estimate(price: Decimal, hours) -> Decimal | None:
    """What the reservation costs if used in full, to the cent: the amount the budget reserves
    (costs.pricing, the one formula)."""
    from costs.pricing import estimate

    try:
        hours = hours_check(hours, maximum=settings.SHOPPER_HARD_MAX_HOURS)
    except ValidationError:
        return None
    return estimate(price, hours)


def _disk(value) -> int | None:
    text = str(value or "").strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) < 7 else None


def _price_at(offer: Offer, disk, base: Decimal | None = None) -> Decimal:
    """The hourly price of the machine at the disk asked for (costs.pricing.offer_price_at)."""
    from costs.pricing import offer_price_at

    return offer_price_at(offer, _disk(disk), base=base)


def budget_warning(user, price: Decimal, estimate: Decimal | None) -> str:
    """A warning for the rent page when ``estimate`` is more than what is left of the user's or
    the team's budget this month (the rent would be refused with budget_exceeded); '' if it fits.

    Said before submit, with the hours that would still fit. The refusal itself stays with
    ``costs.services.budget_reserve`` in the renting transaction.
    """
    from costs.pricing import price_per_hour
    from costs.services import budget_status  # costs imports sessions; import at call time

    if estimate is None:
        return ""
    status = budget_status(user=user)
    for scope, name in (("user", "your budget"), ("team", "the team budget")):
        budget = status.get(scope)
        if not budget or estimate <= budget["remaining"]:
            continue
        remaining = budget["remaining"]
        charged = price_per_hour(price)
        fit = (remaining / charged // STEP_HOURS) * STEP_HOURS if charged > 0 else Decimal(0)
        advice = f"at most {fit.normalize():f} h fit" if fit >= MIN_HOURS else "not even 15 minutes fit"
        return (
            f"The estimate ${estimate} is more than the ${remaining} left of {name} this month, so "
            f"renting would be refused ({advice}). Ask for fewer hours or ask an admin to raise the budget."
        )
    return ""


# --------------------------------------------------------------------------------------------
# Renting
# --------------------------------------------------------------------------------------------
@require_http_methods(["GET", "POST"])
@login_required
@refusals()
def rental_rent(request: HtmxHttpRequest, offer_id: int, again: Rental | None = None) -> HttpResponse:
    offer = get_object_or_404(Offer, pk=offer_id)
    available = Offer.objects.visible().filter(pk=offer.pk).exists()
    key_count = request.user.ssh_keys.count()
    provider = offer.provider
    notice = ""
    if request.method == "POST":
        # A repeat of a submit that rented is answered with its rental even though the offer may
        # be gone from the menu by now (the first submit took it).
        done = _rented_with(request)
        if done is not None:
            return _to_rental(request, done.pk)
    if request.method == "POST" and available:
        form = RentForm(request.POST, key_count=key_count, provider=provider)
        if form.is_valid():
            choice = form.cleaned_data
            try:
                # The form's one-time token is the rental's request key: a double submit (in
                # this process or another) gets the first submit's rental (sessions/idempotency.py).
                rental, private_key, new = idempotency.rent_once(
                    user=request.user,
                    request_key=_form_key(form.cleaned_data["form_token"]),
                    offer_id=offer.pk,
                    reservation_hours=form.cleaned_data["reservation_hours"],
                    ssh_public_key=form.public_key,
                    generate_key=form.generate_key,
                    idle_stop_minutes=form.cleaned_data.get("idle_stop_minutes"),
                    preset=choice["preset"] if choice["preset"] != "custom" else "",
                    image=choice["image"] if choice["preset"] == "custom" else "",
                    disk_gb=choice["disk_gb"],
                    ports=choice["ports"],
                    onstart=choice["onstart"],
                    failover=choice["failover"],
                    failover_any_gpu=choice["failover_any_gpu"],
                    max_price_per_hour=choice["max_price_per_hour"],
                    # The page shows the menu price at the disk asked for: that is what was shown.
                    expected_price=_price_at(offer, choice["disk_gb"], base=choice["expected_price"]),
                )
            except services.PriceChanged as exc:
                offer.refresh_from_db()
                data = request.POST.copy()
                data["expected_price"] = str(offer.price_per_hour)
                form = RentForm(data, key_count=key_count, provider=provider)
                notice = exc.message
            except services.OfferGone as exc:
                available, notice = False, exc.message
            except ValidationError as exc:
                for field, errors in exc.message_dict.items():
                    form.add_error(field if field in form.fields else None, errors)
            else:
                if not new:
                    return _to_rental(request, rental.pk)
                if private_key:
                    messages.success(
                        request,
                        "A key pair was generated for this session: download the private key "
                        "below before you connect.",
                    )
                else:
                    messages.success(request, "Rented. The machine is being set up.")
                return _to_rental(request, rental.pk)
    else:
        initial = {"expected_price": offer.price_per_hour, **(_again_initial(again) if again else {})}
        form = RentForm(initial=initial, key_count=key_count, provider=provider)
    hours = form["reservation_hours"].value()
    disk = form["disk_gb"].value()
    price = _price_at(offer, disk)
    estimate = _estimate(price, hours)
    context = {
        "offer": offer,
        "available": available,
        "form": form,
        "notice": notice,
        "price": price,
        "disk": _disk(disk),
        "estimate": estimate,
        "budget_warning": budget_warning(request.user, price, estimate),
        "hours": hours,
        "markup": settings.SHOPPER_PRICE_MARKUP_PERCENT,
        "keys": request.user.ssh_keys.all(),
        "FAILOVER_TRIES": settings.SHOPPER_FAILOVER_TRIES,
    }
    template = "sessions/rental_rent.html"
    if request.method == "POST" and is_fragment(request):
        template += "#rent-form"
    return render(request, template, context)


FORM_KEY_PREFIX = "form:"


def _form_key(token: uuid.UUID) -> str:
    return f"{FORM_KEY_PREFIX}{token}"


def _rented_with(request: HtmxHttpRequest) -> Rental | None:
    """The rental an earlier submit of this form (its one-time token) made, if any."""
    try:
        token = uuid.UUID(request.POST.get("form_token", ""))
    except ValueError:
        return None
    return idempotency.rental_for_key(request.user, _form_key(token))


def _to_rental(request: HtmxHttpRequest, rental_id) -> HttpResponse:
    url = reverse("sessions:detail", args=[rental_id])
    if request.htmx:
        return HttpResponseClientRedirect(url)
    return redirect(url)


@require_GET
@login_required
def rental_rent_estimate(request: HtmxHttpRequest, offer_id: int) -> HttpResponse:
    offer = get_object_or_404(Offer, pk=offer_id)
    hours = request.GET.get("reservation_hours", "")
    disk = request.GET.get("disk_gb", "")
    price = _price_at(offer, disk)
    estimate = _estimate(price, hours)
    context = {
        "offer": offer,
        "hours": hours,
        "price": price,
        "disk": _disk(disk),
        "estimate": estimate,
        "budget_warning": budget_warning(request.user, price, estimate),
        "markup": settings.SHOPPER_PRICE_MARKUP_PERCENT,
        "oob": True,  # the submit button's price follows the disk too
    }
    return render(request, "sessions/rental_rent.html#rent-estimate", context)


# --------------------------------------------------------------------------------------------
# Sessions
# --------------------------------------------------------------------------------------------
@require_GET
@login_required
def rental_list(request: HtmxHttpRequest) -> HttpResponse:
    rentals = Rental.objects.for_user(request.user).select_related("consumer").order_by("-created_at")
    status = request.GET.get("status", "")
    if status == "live":
        rentals = rentals.live()
    elif status in Status.values:
        rentals = rentals.filter(status=status)
    elif status:
        messages.warning(request, f"Unknown status “{status[:30]}”: showing all sessions.")
        status = ""
    page = Paginator(rentals, LIST_PAGE_SIZE).get_page(request.GET.get("page"))
    context = {
        "page": page,
        "status": status,
        "statuses": ["live", *Status.values],
        "show_consumer": request.user.is_staff,
    }
    template = "sessions/rental_list.html"
    if is_fragment(request):
        template += "#rental-table"
    return render(request, template, context)


def _rental_for(request: HttpRequest, rental_id) -> Rental:
    """The rental if this user may see it (owner; staff see all), else 404."""
    return get_object_or_404(Rental.objects.for_user(request.user).select_related("consumer"), pk=rental_id)


def _status_response(request: HtmxHttpRequest, rental: Rental, notice: str = "") -> HttpResponse:
    """The status fragment plus the timeline and machine panel out of band; 286 stops the poll
    once terminal."""
    context = _detail_context(request, rental, notice=notice)
    html = render_to_string("sessions/rental_detail.html#rental-status", context, request)
    for name in ("rental-timeline", "rental-machine"):
        html += render_to_string(f"sessions/rental_detail.html#{name}", {**context, "oob": True}, request)
    return HttpResponse(html, status=200 if rental.is_live else 286)


# What usually comes next while a machine is on its way, per provider and status (the page shows
# it with the time waited so far). From the field notes (../shared/providers/FIELD_NOTES.md).
PENDING_HINTS: dict[str, dict[str, str]] = {
    "vastai": {
        "pending": "Next: Vast is asked for the machine (a few seconds).",
        "provisioning": "Next: Vast starts the machine and pulls the image.",
        # VA-LOADING: "loading" 2–4 min for a small image, 8+ min for 8 GB, 10–60 min for huge ones.
        "booting": "Vast machines usually take 1–5 min to pull the image; large images take 10 min or more.",
        # VA-SSH: 2–3 refused logins first are normal, ready in 56 s–3.5 min.
        "verifying": "The first SSH logins to a Vast machine are often refused while it starts; "
        "it is usually ready within 1–4 min.",
    },
    "tensordock": {
        "pending": "Next: TensorDock is asked for the machine (a few seconds).",
        "provisioning": "Next: TensorDock creates the virtual machine and boots it.",
        "booting": "TensorDock virtual machines usually take a few minutes to boot.",
        # TD-SSHKEY-LATE: the key arrives through cloud-init 60–90 s after boot.
        "verifying": "TensorDock installs your SSH key 60–90 s after the machine boots; logins are "
        "refused until then, so this step usually takes 1–3 min.",
    },
    # RUNPOD_LAMBDA.md 1.6: RUNNING after the image pull; sshd answers 30–90 s after RUNNING.
    "runpod": {
        "pending": "Next: RunPod is asked for the pod (a few seconds).",
        "provisioning": "Next: RunPod places the pod and pulls the image.",
        "booting": "RunPod pods usually start within a minute or two; large images take longer to pull.",
        "verifying": "SSH on a RunPod pod usually answers 30–90 s after it starts running.",
    },
    # RUNPOD_LAMBDA.md 2.5: 3–5 min for one GPU, 10–15 min for multi-GPU instances.
    "lambda": {
        "pending": "Next: Lambda is asked for the instance (a few seconds; one launch per 12 s).",
        "provisioning": "Next: Lambda launches the instance.",
        "booting": "Lambda instances usually take 3–5 min to boot (10–15 min with several GPUs).",
        "verifying": "The instance is up; logging in over SSH as ubuntu to check its GPUs.",
    },
}
GENERIC_PENDING_HINT = "New machines usually take a few minutes to be ready."


def pending_hint(rental: Rental) -> str:
    """What usually comes next for a machine on its way, for its provider and status ('' once
    it is active or ending)."""
    if rental.status not in IN_FLIGHT_STATUSES:
        return ""
    return PENDING_HINTS.get(rental.provider, {}).get(rental.status, GENERIC_PENDING_HINT)


def _detail_context(request: HttpRequest, rental: Rental, **extra) -> dict:
    events = list(rental.events.select_related("actor").order_by("at", "id"))
    is_owner = rental.consumer_id == request.user.pk
    # Only the rent page makes a generated key without handing it over (the API's 201 carries
    # it): such a key is unsaved until a download is on the timeline.
    handed_over = not rental.request_key.startswith(FORM_KEY_PREFIX) or any(
        e.kind == EventKind.KEY_DOWNLOAD for e in events
    )
    return {
        "rental": rental,
        "events": events,
        "version": _version(rental, max((e.pk for e in events), default=0)),
        "is_owner": is_owner,
        # "Done" asks first when the generated key (deleted at teardown) was never downloaded.
        # (Only the owner is asked: staff cannot download someone's key, Force shutdown asks them.)
        "key_unsaved": is_owner and rental.has_generated_key and rental.is_live and not handed_over,
        "pending_hint": pending_hint(rental),
        # Each move to another offer (sessions/failover.py), oldest first.
        "failover_attempts": [e for e in events if e.kind == EventKind.TRANSITION and e.data.get("failover")],
        **extra,
    }


def _version(rental: Rental, last_event_id: int) -> str:
    """Changes whenever the status block or the timeline would: every change writes an event,
    and the running cost moves by the cent."""
    return f"{rental.status}:{last_event_id}:{rental.cost_so_far()}"


@require_GET
@login_required
def rental_detail(request: HtmxHttpRequest, rental_id) -> HttpResponse:
    rental = _rental_for(request, rental_id)
    if is_fragment(request):
        last = rental.events.order_by("-id").values_list("pk", flat=True).first() or 0
        if rental.is_live and request.GET.get("v") == _version(rental, last):
            # Nothing changed: 204 leaves the DOM alone, so a selection in the SSH command survives.
            return HttpResponse(status=204)
        return _status_response(request, rental)
    return render(request, "sessions/rental_detail.html", _detail_context(request, rental))


def _stop(request: HtmxHttpRequest, rental_id, reason: str) -> HttpResponse:
    rental = _rental_for(request, rental_id)
    notice = ""
    try:
        services.rental_stop(rental=rental, reason=reason, actor=request.user)
    except services.AlreadyEnded as exc:
        notice = exc.message
    rental.refresh_from_db()
    if request.htmx:
        return _status_response(request, rental, notice=notice)
    if notice:
        messages.info(request, notice)
    else:
        messages.success(
            request, "Shutting down: the machine is destroyed and billing stops once the provider confirms."
        )
    return redirect("sessions:detail", rental_id=rental.pk)


@require_POST
@login_required
@refusals(back="sessions:detail")
def rental_extend(request: HttpRequest, rental_id) -> HttpResponse:
    """Extend the reservation; staff may go past the hard maximum with a reason (audited)."""
    rental = _rental_for(request, rental_id)
    if rental.consumer_id != request.user.pk and not request.user.is_staff:
        raise Http404
    try:
        rental = lifecycle.rental_extend(
            rental=rental, hours=request.POST.get("hours", ""), reason=request.POST.get("reason", ""),
            actor=request.user,
        )  # fmt: skip
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        ends = local_time(rental.reservation_ends_at)  # the user's zone (TimeZoneMiddleware)
        messages.success(
            request, f"Extended: the reservation now ends {ends:%Y-%m-%d %H:%M} {offset_label(ends)}."
        )
    return redirect("sessions:detail", rental_id=rental.pk)


@require_POST
@login_required
@refusals(back="sessions:detail")
def rental_idle_stop(request: HttpRequest, rental_id) -> HttpResponse:
    """Set or clear the idle stop (sessions/idle.py); bad input is a message and changes nothing."""
    rental = _rental_for(request, rental_id)
    if rental.consumer_id != request.user.pk and not request.user.is_staff:
        raise Http404
    from sessions.idle import idle_set

    try:
        minutes = request.POST.get("idle_stop_minutes", "")
        rental = idle_set(rental=rental, minutes=minutes, actor=request.user)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(
            request,
            f"Idle stop set to {rental.idle_stop_minutes} min."
            if rental.idle_stop_minutes
            else "Idle stop turned off.",
        )
    return redirect("sessions:detail", rental_id=rental.pk)


@require_POST
@login_required
def rental_done(request: HtmxHttpRequest, rental_id) -> HttpResponse:
    return _stop(request, rental_id, "Done: the work is finished")


@require_POST
@login_required
def rental_shutdown(request: HtmxHttpRequest, rental_id) -> HttpResponse:
    return _stop(request, rental_id, f"Force shutdown by {request.user.get_username()}")


@require_GET
@login_required
def rental_ssh_key(request: HttpRequest, rental_id) -> HttpResponse:
    rental = _rental_for(request, rental_id)
    if rental.consumer_id != request.user.pk:
        raise Http404("No such session.")  # staff see sessions, never someone's private key
    if not rental.is_live:
        return HttpResponse(
            "The key was deleted when the machine was torn down.\n", status=410, content_type="text/plain"
        )
    if not rental.has_generated_key:
        raise Http404("This session has no generated key (you installed your own).")
    pem = keys.secret_decrypt(rental.ssh_private_key_encrypted)
    with transaction.atomic():
        services.rental_event(
            rental, EventKind.KEY_DOWNLOAD, "Private key downloaded (page)", actor=request.user
        )
    response = HttpResponse(pem, content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{rental.key_filename}"'
    response["Cache-Control"] = "no-store"
    return response


# --------------------------------------------------------------------------------------------
# SSH keys
# --------------------------------------------------------------------------------------------
@require_http_methods(["GET", "POST"])
@login_required
def sshkey_list(request: HttpRequest) -> HttpResponse:
    form = SSHKeyForm(request.POST or None, user=request.user)
    if request.method == "POST" and form.is_valid():
        try:
            with transaction.atomic():
                key = form.save()
        except IntegrityError:  # the same key added twice at the same moment
            form.add_error("public_key", "You already registered this key.")
        else:
            messages.success(request, f"Added the key “{key.name}” ({key.fingerprint}).")
            return redirect("sessions:keys")
    context = {"form": form, "ssh_keys": SSHKey.objects.filter(user=request.user).order_by("name")}
    return render(request, "sessions/sshkey_list.html", context)


@require_POST
@login_required
def sshkey_delete(request: HttpRequest, key_id: int) -> HttpResponse:
    key = get_object_or_404(SSHKey, pk=key_id, user=request.user)
    key.delete()
    messages.success(
        request, f"Removed the key “{key.name}”. Running machines keep the keys they were given."
    )
    return redirect("sessions:keys")


@require_GET
@login_required
def safety(request: HttpRequest) -> HttpResponse:
    """Staff: open alerts, every live rental with its deadlines and heartbeat, stuck destroys."""
    if not request.user.is_staff:
        raise Http404
    now = timezone.now()
    live = Rental.objects.live().select_related("consumer").order_by("hard_max_at")
    context = {
        "alerts": Alert.objects.filter(resolved_at__isnull=True).select_related("rental")[:200],
        "recent_alerts": Alert.objects.filter(resolved_at__isnull=False)[:20],
        "live": live,
        "now": now,
        "kill_phrase": KILL_SWITCH_PHRASE,
        "deployment_id": deployment_id(),
        "foreign": ForeignInstance.objects.all()[:500],
    }
    context.update(_safety_loop_and_balances(now))
    return render(request, "sessions/safety.html", context)


def _safety_loop_and_balances(now) -> dict:
    """Which safety loop acts (sessions/leader.py) and each provider account's balance with the
    hours it covers at the current burn rate (sessions/balances.py)."""
    from sessions.balances import burn_per_hour
    from sessions.leader import lease_current
    from sessions.models import ProviderBalance

    balances = []
    for row in ProviderBalance.objects.order_by("provider"):
        burn = burn_per_hour(row.provider)
        hours = (row.balance / burn).quantize(Decimal("0.1")) if row.balance is not None and burn else None
        balances.append({"row": row, "burn": burn, "hours": hours})
    return {"safety_lease": lease_current(now), "balances": balances}


@require_POST
@login_required
def unscoped_destroy(request: HttpRequest, alert_id: int) -> HttpResponse:
    """Staff: destroy the instance of an unscoped-instance alert (a pre-scoping label no live
    rental here owns: reconcile never destroys it by itself, it may be another deployment's).
    The decision is recorded on the alert and reconcile retries until the provider confirms."""
    if not request.user.is_staff:
        raise Http404
    alert = get_object_or_404(Alert, pk=alert_id)
    if alert.kind != AlertKind.UNSCOPED or alert.resolved_at is not None:
        # Like the kill switch's wrong phrase: back to the page with the reason, nothing done.
        messages.error(request, "Nothing was destroyed: only an open unscoped-instance alert can be.")
        return redirect("sessions:safety")
    try:
        confirmed = reconcile_unscoped_destroy(alert, actor=request.user.get_username())
    except ProviderError as exc:
        confirmed = False
        log.warning("unscoped destroy of %s: %s", alert.provider_instance_id, exc)
    where = f"{alert.provider} instance {alert.provider_instance_id}"
    if confirmed:
        messages.success(request, f"Destroyed {where} (confirmed by the provider).")
    else:
        messages.warning(request, f"Destroy of {where} requested; retried every reconcile until confirmed.")
    return redirect("sessions:safety")


@require_POST
@login_required
def alert_resolve(request: HttpRequest, alert_id: int) -> HttpResponse:
    if not request.user.is_staff:
        raise Http404
    Alert.objects.filter(pk=alert_id, resolved_at__isnull=True).update(resolved_at=timezone.now())
    return redirect("sessions:safety")


KILL_SWITCH_PHRASE = "STOP ALL"


@require_POST
@login_required
def safety_kill_switch(request: HttpRequest) -> HttpResponse:
    """Staff: stop every live rental, after the phrase is typed (a mis-click must not do it)."""
    if not request.user.is_staff:
        raise Http404
    if request.POST.get("confirm", "").strip() != KILL_SWITCH_PHRASE:
        messages.error(request, f"Nothing was stopped: type {KILL_SWITCH_PHRASE} exactly to confirm.")
        return redirect("sessions:safety")
    stopped = services.rentals_stop_all(
        actor=request.user, reason=f"Kill switch used by {request.user.get_username()}"
    )
    messages.warning(request, f"Kill switch: {stopped} live rental(s) are being shut down.")
    return redirect("sessions:safety")


# --------------------------------------------------------------------------------------------
# Rent again (issue 19): the same choices on a fresh comparable offer
# --------------------------------------------------------------------------------------------
def _again_initial(rental: Rental) -> dict:
    """The rent form's initial values: ``rental``'s choices."""
    hours = (rental.reservation_ends_at - rental.created_at).total_seconds() / 3600
    return {
        "reservation_hours": Decimal(str(round(hours * 4) / 4)) if hours >= 0.25 else Decimal("0.25"),
        "preset": rental.preset or "custom",
        "image": rental.image if rental.preset in ("", "custom") else "",
        "disk_gb": rental.disk_gb,
        "ports": ", ".join(str(p) for p in rental.ports or []),
        "onstart": rental.onstart,
        "failover": rental.failover,
        "failover_any_gpu": rental.failover_any_gpu,
    }


@require_GET
@login_required
def rental_rent_again(request: HttpRequest, rental_id) -> HttpResponse:
    """The rent page of a fresh offer comparable to ``rental``'s, with the same choices
    (sessions.services.offer_comparable); the form posts to that offer's rent page."""
    rental = _rental_for(request, rental_id)
    offer = services.offer_comparable(rental)
    if offer is None:
        messages.warning(
            request,
            f"No {rental.gpu_count}× {rental.gpu_type} is offered now that fits this session's choices.",
        )
        return redirect(f"{reverse('offer_list')}?gpu={rental.gpu_type}")
    return rental_rent(request, offer.pk, again=rental)
