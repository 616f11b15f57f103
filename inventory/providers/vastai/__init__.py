"""vastai: one provider folder (see inventory/providers/__init__.py)."""

from .adapter import VastAI

__all__ = ["VastAI"]
