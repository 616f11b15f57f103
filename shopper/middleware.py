"""Request ids: every request gets one, logs carry it, the response echoes it."""

from __future__ import annotations

import re
import uuid

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.utils.log import log_response

from shopper.logconfig import request_id_var

REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def request_id_for(request) -> str:
    """The client's X-Request-ID when it is a safe token (≤ 64 of [A-Za-z0-9-_]), else a new one."""
    incoming = request.META.get("HTTP_X_REQUEST_ID", "")
    if incoming and _SAFE_REQUEST_ID.match(incoming):
        return incoming
    return uuid.uuid4().hex


def _log_error_response(request, response) -> None:
    """Django logs 4xx/5xx answers ("django.request") after the middleware chain, when the request
    id is no longer set; log them here, as Django would, while it is (Django then skips its own)."""
    if response.status_code >= 400:
        log_response("%s: %s", response.reason_phrase, request.path, response=response, request=request)


class RequestIdMiddleware:
    """Sets ``request.request_id`` and the logging context variable; adds ``X-Request-ID``."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self._acall(request)
        request.request_id = request_id_for(request)
        token = request_id_var.set(request.request_id)
        try:
            response = self.get_response(request)
            _log_error_response(request, response)
        finally:
            request_id_var.reset(token)
        response[REQUEST_ID_HEADER] = request.request_id
        return response

    async def _acall(self, request):
        request.request_id = request_id_for(request)
        token = request_id_var.set(request.request_id)
        try:
            response = await self.get_response(request)
            _log_error_response(request, response)
        finally:
            request_id_var.reset(token)
        response[REQUEST_ID_HEADER] = request.request_id
        return response
