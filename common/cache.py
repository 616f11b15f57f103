"""The per-process cache: this process's memory (settings ``CACHES["local"]``), never shared.

For what each process may keep for itself a few seconds (the API token a request just proved,
the menu page shell per browser session). Anything every process must agree on goes to the
database or the shared cache instead.
"""

from __future__ import annotations

from django.core.cache import caches

local_cache = caches["local"]
