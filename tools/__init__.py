"""Development tools (benchmarks, chaos/soak, the dev runner): run from the repository root as
``python -m tools.<name>``. Not part of the shipped package (pyproject.toml packages only the apps)."""
