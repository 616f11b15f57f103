"""Tiny request/response types shared by the dialect modules and the HTTP server."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


class BadJSON(ValueError):
    pass


@dataclass
class Request:
    method: str
    path: str  # without the dialect prefix
    query: dict[str, str]  # last value wins, already URL-decoded
    headers: dict[str, str]  # lower-case names
    body: bytes = b""

    def json(self, default: Any = None) -> Any:
        if not self.body.strip():
            return default
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise BadJSON(str(exc)) from exc

    def bearer(self) -> str | None:
        auth = self.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return None


@dataclass
class Response:
    status: int = 200
    body: Any = None  # JSON-serializable, or str for text/plain
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> tuple[bytes, str]:
        if isinstance(self.body, str):
            return self.body.encode(), "text/plain; charset=utf-8"
        return json.dumps(self.body).encode(), "application/json"


def ok(body: Any, status: int = 200) -> Response:
    return Response(status, body)


def text(body: str, status: int) -> Response:
    return Response(status, body)
