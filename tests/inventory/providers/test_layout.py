"""The provider layout rule (issue 13): a provider is one folder plus one registry line.

``inventory/providers/<folder>/`` holds ``adapter.py``, ``names.py``, ``fixtures/`` and, when the
sandbox speaks it, ``sandbox.py``; nothing provider-specific is left in the shared files. These
tests fail when a provider is added (or moved in) some other way.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from django.conf import settings

if not settings.configured and not os.environ.get("DJANGO_SETTINGS_MODULE"):
    settings.configure()

from django.utils.module_loading import import_string

from inventory.providers import PROVIDER_CLASSES, PROVIDERS, Registration
from inventory.providers.base import Provider
from inventory.sandbox import server

ROOT = Path(__file__).resolve().parents[3]
PROVIDERS_DIR = ROOT / "inventory" / "providers"
SANDBOX_DIR = ROOT / "inventory" / "sandbox"
SHARED_FILES = {"__init__.py", "base.py", "http.py", "ratelimit.py", "gpus.py"}
# Providers the sandbox cloud speaks; RunPod and Lambda join when their dialects move into their folders.
SANDBOX_SPEAKS = {"vastai", "tensordock", "runpod", "lambda"}


def folder(reg: Registration) -> Path:
    return PROVIDERS_DIR / reg.package.removeprefix("inventory.providers.")


@pytest.mark.parametrize("name", sorted(PROVIDERS))
def test_every_registered_provider_is_one_folder(name):
    reg = PROVIDERS[name]
    assert reg.package.startswith("inventory.providers."), "a provider lives in inventory/providers/<folder>/"
    path = folder(reg)
    for part in ("__init__.py", "adapter.py", "names.py"):
        assert (path / part).is_file(), f"{path.relative_to(ROOT)} has no {part}"
    assert sorted((path / "fixtures").glob("*.json")), f"{path.relative_to(ROOT)}/fixtures/ has no fixture"
    if name in SANDBOX_SPEAKS:
        assert (path / "sandbox.py").is_file(), f"{path.relative_to(ROOT)} has no sandbox.py"


@pytest.mark.parametrize("name", sorted(PROVIDERS))
def test_the_package_exports_its_adapter_under_the_registered_name(name):
    reg = PROVIDERS[name]
    cls = import_string(PROVIDER_CLASSES[name])
    assert cls is import_string(f"{reg.package}.adapter.{reg.class_name}")
    assert issubclass(cls, Provider) and cls.name == name


def test_old_dotted_class_paths_still_resolve():
    """Paths written before the folders existed (settings, notes, docs) keep importing."""
    for path in (
        "inventory.providers.vastai.VastAI",
        "inventory.providers.tensordock.TensorDock",
        "inventory.providers.runpod.RunPod",
        "inventory.providers.lambdacloud.LambdaCloud",
    ):
        assert issubclass(import_string(path), Provider)


def test_shared_folder_keeps_only_shared_modules():
    loose = {p.name for p in PROVIDERS_DIR.glob("*.py")} - SHARED_FILES
    assert not loose, f"provider code belongs in its folder, not inventory/providers/{sorted(loose)}"
    folders = {p.name for p in PROVIDERS_DIR.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == {folder(reg).name for reg in PROVIDERS.values()}, "every folder has one registry line"


def test_gpus_keeps_only_canonical_helpers():
    tree = ast.parse((PROVIDERS_DIR / "gpus.py").read_text())
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    per_provider = {f for f in functions if f.endswith("_gpu_type") and f != "canonical_gpu_type"}
    assert not per_provider, f"{sorted(per_provider)} belong in the provider's names.py"


def test_fixture_names_are_unique_across_providers():
    """The tests load fixtures by file name (tests/inventory/providers/conftest.py ``load``)."""
    names = Counter(p.name for p in PROVIDERS_DIR.glob("*/fixtures/*.json"))
    assert [n for n, count in names.items() if count > 1] == []


def test_the_sandbox_serves_every_provider_folder_with_a_dialect():
    expected = {
        f"{reg.package}.sandbox" for reg in PROVIDERS.values() if (folder(reg) / "sandbox.py").is_file()
    }
    assert {mod.__name__ for _, mod in server.DIALECTS.values()} == expected
    assert {name for name, reg in PROVIDERS.items() if f"{reg.package}.sandbox" in expected} >= SANDBOX_SPEAKS
    assert server.DIALECTS["/vastai"][0] == "vastai"
    assert server.DIALECTS["/tensordock/api/v2"][0] == "tensordock"


def test_no_dialect_is_left_in_the_shared_sandbox_folder():
    """A dialect module (one with ROUTES) in inventory/sandbox/ would not be served: move it."""
    for path in SANDBOX_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        top_level = {
            target.id
            for node in tree.body
            if isinstance(node, ast.Assign | ast.AnnAssign)
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(target, ast.Name)
        }
        where = path.relative_to(ROOT)
        assert "ROUTES" not in top_level, f"move {where} to inventory/providers/<folder>/sandbox.py"


def test_the_sandbox_still_imports_no_django():
    code = "import sys, inventory.sandbox.server; assert not any(m.startswith('django') for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def _fake_provider(tmp_path, monkeypatch, package: str, sandbox_source: str | None) -> Registration:
    pkg = tmp_path / package
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    if sandbox_source is not None:
        (pkg / "sandbox.py").write_text(sandbox_source)
    monkeypatch.syspath_prepend(str(tmp_path))
    return Registration(package, "Fake", "FAKE_API_URL", "FAKE_API_KEY", "")


def test_a_registered_dialect_is_picked_up(tmp_path, monkeypatch):
    reg = _fake_provider(tmp_path, monkeypatch, "layout_fake_ok", 'DIALECT = "fake"\nPREFIX = "/fake/v1"\n')
    plain = _fake_provider(tmp_path, monkeypatch, "layout_fake_plain", None)
    dialects = server.registered_dialects({"fake": reg, "plain": plain})
    assert list(dialects) == ["/fake/v1"] and dialects["/fake/v1"][0] == "fake"


def test_a_dialect_without_prefix_is_a_clear_error(tmp_path, monkeypatch):
    reg = _fake_provider(tmp_path, monkeypatch, "layout_fake_noprefix", 'DIALECT = "fake"\n')
    with pytest.raises(server.DialectError, match=r"layout_fake_noprefix\.sandbox must declare DIALECT"):
        server.registered_dialects({"fake": reg})


def test_two_dialects_on_one_prefix_is_a_clear_error(tmp_path, monkeypatch):
    first = _fake_provider(tmp_path, monkeypatch, "layout_fake_one", 'DIALECT = "one"\nPREFIX = "/same"\n')
    second = _fake_provider(tmp_path, monkeypatch, "layout_fake_two", 'DIALECT = "two"\nPREFIX = "/same"\n')
    with pytest.raises(server.DialectError, match=r"'/same' or dialect 'two' is already served"):
        server.registered_dialects({"one": first, "two": second})
