"""JSON request bodies with a bounded nesting depth.

``json.loads`` of 5,000 nested ``[`` raises RecursionError, which is not a ValueError: DRF's
JSONParser let it through as a 500 on every JSON endpoint. And a body nested just under the
interpreter's limit parses, then can blow the stack later (validation, storing, rendering an
error that echoes it). No request this API takes is nested more than a few levels, so anything
deeper than ``MAX_DEPTH`` is refused as a 400 before any view sees it.
"""

from __future__ import annotations

import json

from rest_framework import parsers
from rest_framework.exceptions import ParseError

# The deepest body any endpoint takes is 3 levels (a heartbeat: {"gpus": [{...}]}).
MAX_DEPTH = 32
TOO_DEEP = f"The JSON body is nested too deeply (more than {MAX_DEPTH} levels)."


class TooDeep(ValueError):
    """A JSON document nested deeper than MAX_DEPTH (or than Python can parse)."""


def depth_check(data: object, limit: int = MAX_DEPTH) -> None:
    """Raise TooDeep when ``data`` nests lists/objects more than ``limit`` levels (iterative: a
    recursive walk would fail on exactly the input it is meant to catch)."""
    stack = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            raise TooDeep(TOO_DEEP)
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


def json_loads(raw: bytes | str) -> object:
    """``json.loads`` that raises ValueError (TooDeep) instead of RecursionError, and refuses
    documents deeper than MAX_DEPTH. For views that read ``request.body`` themselves."""
    try:
        data = json.loads(raw)
    except RecursionError:
        raise TooDeep(TOO_DEEP) from None
    depth_check(data)
    return data


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser (wired in settings.REST_FRAMEWORK) with the depth limit: a 400
    ``parse_error`` naming the problem instead of a 500."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = super().parse(stream, media_type, parser_context)
            depth_check(data)
        except (RecursionError, TooDeep):
            raise ParseError(TOO_DEEP) from None
        return data
