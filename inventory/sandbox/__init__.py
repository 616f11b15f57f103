"""The sandbox cloud: a local, separate process that speaks the Vast.ai and TensorDock v2 dialects.

Run it with ``python -m inventory.sandbox --port 8765 --state-file PATH``; point the adapters at
``http://127.0.0.1:8765/vastai`` and ``http://127.0.0.1:8765/tensordock/api/v2``. It never imports
Django. Tests start it with :func:`inventory.sandbox.testing.running_sandbox`.
"""
