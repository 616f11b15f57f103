"""The sandbox cloud: a local, separate process that speaks the Vast.ai, TensorDock v2, RunPod
REST v2 and Lambda Cloud v1 dialects.

Run it with ``python -m inventory.sandbox --port 8765 --state-file PATH``; point the adapters at
``http://127.0.0.1:8765/vastai``, ``/tensordock/api/v2``, ``/runpod/v2`` and ``/lambda/api/v1``.
It never imports Django. Tests start it with :func:`inventory.sandbox.testing.running_sandbox`.
"""
