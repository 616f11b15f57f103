"""tensordock: one provider folder (see inventory/providers/__init__.py)."""

from .adapter import TensorDock

__all__ = ["TensorDock"]
