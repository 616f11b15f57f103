"""runpod: one provider folder (see inventory/providers/__init__.py)."""

from .adapter import RunPod

__all__ = ["RunPod"]
