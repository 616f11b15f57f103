"""lambdacloud: one provider folder (see inventory/providers/__init__.py)."""

from .adapter import LambdaCloud

__all__ = ["LambdaCloud"]
