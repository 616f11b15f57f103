"""Shared API plumbing: pagination and the error format ``{"detail": ..., "code": ...}``.

The DRF exception handler here is the one place a :class:`common.errors.DomainError` becomes an
API answer: its ``status`` and ``{"detail": message, "code": code}`` (plus its ``extra``).
"""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from drf_spectacular.utils import OpenApiResponse
from rest_framework import exceptions, serializers
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from common.errors import DomainError


class Pagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


class ErrorSerializer(serializers.Serializer):
    """The body of every error answer (API.md); documents it in the OpenAPI schema."""

    detail = serializers.CharField(help_text="What went wrong, for people")
    code = serializers.CharField(help_text="Stable machine-readable code, e.g. `invalid`, `not_found`")
    errors = serializers.DictField(
        required=False, help_text="Validation errors only: the messages for each parameter or field"
    )


def documented_error(description: str) -> OpenApiResponse:
    """An error response for ``extend_schema(responses=...)``: the error body plus when it happens."""
    return OpenApiResponse(response=ErrorSerializer, description=description)


def document_common_errors(result: dict, generator, request, public) -> dict:
    """drf-spectacular post-processing hook: the errors every API operation may answer, so each
    operation need not list them. 401 wherever an API token is accepted; 429 when throttled."""
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    retry_after = {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}}
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if any("tokenAuth" in scheme for scheme in operation.get("security", [])):
                responses.setdefault("401", {**error, "description": "No valid API token (or login)"})
            responses.setdefault("429", {**error, "description": "Too many requests", "headers": retry_after})
    return result


def exception_handler(exc, context):
    """DRF's handler with the error format of API.md; the one mapping of DomainError for the API."""
    if isinstance(exc, DomainError):
        set_rollback()  # as DRF does for its own exceptions (a no-op without ATOMIC_REQUESTS)
        return Response(exc.body(), status=exc.status)
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(exc.message_dict if hasattr(exc, "error_dict") else exc.messages)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    data = response.data
    if isinstance(exc, exceptions.ValidationError):
        fields = data if isinstance(data, dict) else {"non_field_errors": data}
        first = next(iter(fields.items()), ("", [""]))
        message = first[1][0] if isinstance(first[1], list) and first[1] else first[1]
        name = first[0]
        detail = f"{name}: {message}" if name and name != "non_field_errors" else str(message)
        response.data = {"detail": detail, "code": "invalid", "errors": fields}
    elif isinstance(data, dict) and "detail" in data:
        code = getattr(data["detail"], "code", None) or exc.default_code
        response.data = {"detail": str(data["detail"]), "code": code}
    return response


def error_response(detail: str, code: str, status_code: int) -> Response:
    return Response({"detail": detail, "code": code}, status=status_code)
