"""Tools (benchmarks, chaos/soak, the dev runner) live in ``tools/``, outside the shipped package
(issue 13): not packaged, not in the image, never imported by the product; the Makefile runs them
as ``python -m tools.<name>`` from the repository root."""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path

import pytest
from setuptools import find_packages

from tests.test_containers import dockerignored

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("bench", "bench_live", "bench_provision", "chaos", "devserver")
PRODUCT = ("shopper", "inventory", "sessions", "costs", "common")


def test_the_package_is_the_product_only():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = find_packages(str(ROOT), include=include)
    assert {p.split(".")[0] for p in packages} == set(PRODUCT)
    for name in TOOLS:
        assert (ROOT / "tools" / f"{name}.py").is_file()
        assert not (ROOT / "shopper" / f"{name}.py").exists(), name


def test_the_product_never_imports_a_tool():
    importing = re.compile(r"^\s*(from|import)\s+tools\b", re.MULTILINE)
    offenders = [
        str(path.relative_to(ROOT))
        for app in PRODUCT
        for path in (ROOT / app).rglob("*.py")
        if importing.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_the_tools_stay_out_of_the_image():
    assert dockerignored("tools/chaos.py") and dockerignored("tools/__init__.py")
    assert not dockerignored("shopper/serve.py") and not dockerignored("shopper/killswitch.py")


@pytest.mark.parametrize(
    ("target", "module"),
    [("run", "tools.devserver"), ("bench", "tools.bench"), ("soak", "tools.chaos")],
)
def test_the_makefile_runs_each_tool_as_a_module(target, module):
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe and f"-m {module}" in recipe.group(1), target
    assert callable(importlib.import_module(module).main)
