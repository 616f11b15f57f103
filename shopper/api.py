"""Moved to :mod:`common.api` (apps import plumbing from ``common``, not from the project package).

Kept as a thin re-export so branches in flight that still import ``shopper.api`` keep working;
new code imports ``common.api``.
"""

from common.api import (  # noqa: F401
    ErrorSerializer,
    Pagination,
    document_common_errors,
    documented_error,
    error_response,
    exception_handler,
)
