"""Content-Security-Policy: every page loads its scripts, styles, fonts and images from this site
only, and nothing inline.

A small middleware rather than django-csp: the policy is one fixed string (no per-view changes,
no nonces, no report endpoint), so a dependency would add settings, not safety. Django 5.2 has
no CSP of its own (6.0 adds one; then this file can go).

What keeps the pages working under it (checked by tests/browser/test_csp.py, which fails on any
CSP violation in the console):

- no inline ``<script>``, ``on…=`` handlers, ``hx-on`` or htmx trigger filters: the copy buttons and
  the costs filter form are wired in ``static/js/app.js``; htmx runs with ``allowEval: false``;
- no ``style=`` attributes or ``<style>`` elements: htmx's own indicator style is turned off
  (``includeIndicatorStyles: false``, its two rules are in ``app.css``), budget meters and chart
  sizes are SVG attributes; the API docs page uses a template without the inline style;
- the live-updates websocket is same-origin (``connect-src 'self'`` covers ws/wss of this host).

Only HTML answers carry it: API answers are JSON, never rendered as documents. The inventory
fast path, which answers the offers page before Django's middleware, calls this middleware too.
"""

from __future__ import annotations

from django.utils.deprecation import MiddlewareMixin

HEADER = "Content-Security-Policy"
POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


class ContentSecurityPolicyMiddleware(MiddlewareMixin):
    """Adds POLICY to every HTML answer that has no policy of its own."""

    def process_response(self, request, response):
        content_type = response.get("Content-Type", "")
        if content_type.startswith("text/html") and HEADER not in response:
            response[HEADER] = POLICY
        return response
