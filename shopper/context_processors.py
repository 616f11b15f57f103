from django.conf import settings


def shopper(request):
    return {"SANDBOX": settings.SHOPPER_SANDBOX, "HARD_MAX_HOURS": settings.SHOPPER_HARD_MAX_HOURS}
