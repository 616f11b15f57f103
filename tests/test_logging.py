"""Request ids, the JSON formatter and the redaction filter (shopper/logconfig.py, shopper/middleware.py)."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from shopper.logconfig import REDACTED, JsonFormatter, RedactFilter, RequestIdFilter, request_id_var

FERNET_KEY = "8n7cyPbD0kqf9cJ0kQk3yqXKkXy7Gxh0o6lZ0xg3G2s="  # tests' SHOPPER_FERNET_KEYS value
pytestmark = pytest.mark.django_db

PEM = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "-----END OPENSSH PRIVATE KEY-----"
)


def make_record(msg, *args, exc_info=None, name="shopper.test", level=logging.INFO) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args or None, exc_info)


def rendered(record: logging.LogRecord) -> str:
    RedactFilter().filter(record)
    return logging.Formatter("%(message)s").format(record)


# ------------------------------------------------------------------------------- request ids
def test_request_id_generated_and_echoed(client):
    resp = client.get("/api/v1/health")
    rid = resp["X-Request-ID"]
    assert len(rid) == 32 and int(rid, 16) >= 0


def test_safe_incoming_request_id_is_kept(client):
    resp = client.get("/api/v1/health", HTTP_X_REQUEST_ID="abc-DEF_123")
    assert resp["X-Request-ID"] == "abc-DEF_123"
    assert request_id_var.get() is None  # reset after the request


@pytest.mark.parametrize("bad", ["has space", "x" * 65, "semi;colon", "new\nline", "ünï"])
def test_unsafe_incoming_request_id_is_replaced(client, bad):
    resp = client.get("/api/v1/health", HTTP_X_REQUEST_ID=bad)
    assert resp["X-Request-ID"] != bad
    assert len(resp["X-Request-ID"]) == 32


def test_request_id_filter_reads_the_context_var():
    token = request_id_var.set("rid-1")
    try:
        record = make_record("hello")
        RequestIdFilter().filter(record)
        assert record.request_id == "rid-1"
    finally:
        request_id_var.reset(token)
    record = make_record("hello")
    RequestIdFilter().filter(record)
    assert record.request_id == "-"


def test_logging_inside_a_view_carries_the_request_id(client, monkeypatch):
    """End to end through the configured console handler in JSON mode."""
    from django.db import connection

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    handler.addFilter(RedactFilter())
    logger = logging.getLogger("shopper.viewlog")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False

    real_cursor = connection.cursor

    def cursor(*args, **kwargs):  # health runs SELECT 1 through this: log from inside the view
        logger.info("health probe with Token %s", "gs_" + "A" * 43)
        return real_cursor(*args, **kwargs)

    monkeypatch.setattr(connection, "cursor", cursor)
    try:
        resp = client.get("/api/v1/health", HTTP_X_REQUEST_ID="trace-7")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines, "the view did not log"
    entry = lines[0]
    assert entry["request_id"] == "trace-7" == resp["X-Request-ID"]
    assert entry["level"] == "INFO" and entry["logger"] == "shopper.viewlog"
    assert "gs_AAAA" not in entry["message"] and REDACTED in entry["message"]


# ------------------------------------------------------------------------------- JSON formatter
def test_json_line_parses_and_carries_fields():
    token = request_id_var.set("abc123")
    try:
        record = make_record("rented %s GPUs", 2)
        RequestIdFilter().filter(record)
        line = JsonFormatter().format(record)
    finally:
        request_id_var.reset(token)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "rented 2 GPUs"
    assert entry["level"] == "INFO"
    assert entry["logger"] == "shopper.test"
    assert entry["request_id"] == "abc123"
    assert entry["time"].endswith("+00:00")
    assert "exc_info" not in entry


def test_json_line_without_request_and_with_exception():
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = make_record("failed", exc_info=sys.exc_info(), level=logging.ERROR)
    RequestIdFilter().filter(record)
    line = JsonFormatter().format(record)
    assert line.count("\n") == 0
    entry = json.loads(line)
    assert "request_id" not in entry
    assert entry["level"] == "ERROR"
    assert "ValueError: boom" in entry["exc_info"] and "Traceback" in entry["exc_info"]


def test_settings_wire_the_filters_into_the_handler(settings):
    handler = settings.LOGGING["handlers"]["console"]
    assert handler["filters"] == ["request_id", "redact"]
    assert settings.LOGGING["formatters"]["json"]["()"] == "shopper.logconfig.JsonFormatter"


# ------------------------------------------------------------------------------- redaction
@pytest.mark.parametrize(
    ("message", "secret"),
    [
        ("Authorization: Token gs_abcdefghijklmnopqrstuvwxyz0123456789", "gs_abcdefghijklmnop"),
        ("header was Token 4f9c2a7d1e8b3c6a5f0e", "4f9c2a7d1e8b3c6a5f0e"),
        ("Authorization: Bearer abcdef0123456789abcdef0123456789", "abcdef0123456789abcdef"),
        ("key gs_Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA in a sentence", "gs_Zm9vYmFy"),
        (f"fernet key {FERNET_KEY} leaked", FERNET_KEY),
        ("some other key Q2hhbmdlTWVDaGFuZ2VNZUNoYW5nZU1lQ2hhbmdlTWU= here", "Q2hhbmdlTWVDaGFuZ2VN"),
        ("ciphertext gAAAAABlZ3h1bW9yZS1jaXBoZXJ0ZXh0LXN0dWZmLWhlcmU=", "gAAAAABlZ3h1bW9yZS1j"),
        (f"key material:\n{PEM}\nend", "b3BlbnNzaC1rZXkt"),
    ],
)
def test_redaction_of_each_secret_form(message, secret):
    out = rendered(make_record(message))
    assert secret not in out
    assert REDACTED in out


def test_redaction_of_configured_values(settings):
    settings.VASTAI_API_KEY = "vast-key-7f3e9a"
    settings.TENSORDOCK_API_TOKEN = "td-token-b1c2d3"
    settings.METRICS_TOKEN = "scrape-me-please"
    settings.EMAIL_HOST_PASSWORD = "smtp-pass-42x"
    settings.RUNPOD_API_KEY = "rpa_4KX9QZ2"
    settings.LAMBDA_API_KEY = "secret_lambda_8c1d"
    for secret in [
        "vast-key-7f3e9a",
        "td-token-b1c2d3",
        "rpa_4KX9QZ2",
        "secret_lambda_8c1d",
        "scrape-me-please",
        "smtp-pass-42x",
        settings.SECRET_KEY,
    ]:
        out = rendered(make_record("config value %s in args", secret))
        assert secret not in out, secret
        assert out == f"config value {REDACTED} in args"


def test_redaction_in_args_and_exceptions(settings):
    settings.VASTAI_API_KEY = "vast-key-7f3e9a"
    try:
        raise RuntimeError("request failed with key vast-key-7f3e9a")
    except RuntimeError:
        record = make_record("call %s", {"auth": "Bearer abcdef0123456789abcdef"}, exc_info=sys.exc_info())
    out = rendered(record)
    assert "vast-key-7f3e9a" not in out
    assert "abcdef0123456789" not in out
    assert record.args is None


def test_ordinary_text_is_untouched():
    for message in ["Token expired for user alice", "rental shopper-1234 active", "Bearer realm=x"]:
        assert rendered(make_record(message)) == message


def test_the_configured_console_handler_redacts(settings):
    """The handler the LOGGING config built carries the filters (plain and JSON alike)."""
    root = logging.getLogger()
    handlers = [h for h in root.handlers if any(isinstance(f, RedactFilter) for f in h.filters)]
    assert handlers, "no handler with the redaction filter on the root logger"
    assert any(isinstance(f, RequestIdFilter) for f in handlers[0].filters)


def test_error_responses_are_logged_once_with_the_request_id(client, caplog):
    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.WARNING, logger="django.request"):
        resp = client.get("/api/v1/sessions", HTTP_X_REQUEST_ID="unauth-1")
    assert resp.status_code in (401, 403)
    records = [r for r in caplog.records if r.name == "django.request"]
    assert len(records) == 1
    assert records[0].request_id == "unauth-1"
