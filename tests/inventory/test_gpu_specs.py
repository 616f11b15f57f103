"""The GPU spec table: complete for every name the adapters make, loadable without code, and the
value figures of a few offers worked out by hand from the table."""

from __future__ import annotations

import importlib
import io
import json
import re
from decimal import Decimal
from pathlib import Path

import pytest
from django.apps import apps as django_apps
from django.core.management import CommandError, call_command

from inventory.models import GpuSpec
from inventory.providers import gpus
from inventory.providers.lambdacloud import names as lambda_names
from inventory.providers.runpod import names as runpod_names
from inventory.providers.tensordock import names as tensordock_names
from inventory.providers.vastai import names as vast_names
from inventory.sandbox import catalog
from inventory.specs import CSV_PATH, read_spec_csv, spec_table, value_figures, version_key

PROVIDERS = Path(gpus.__file__).resolve().parent  # each provider's fixtures/ is in its folder
SPEC_NAMES = {row["canonical_name"] for row in read_spec_csv()}

# Lambda descriptions without "(NN GB FORM)" (third-party fixtures, RUNPOD_LAMBDA.md 4.14) give a
# name without the form factor: PCIe or SXM is unknown, so no row can be right and the figures show
# "—". Listed here so any other gap fails.
NO_FORM_FACTOR = {"A100 40GB", "H100 80GB"}


def adapter_names() -> set[str]:
    """Every canonical name the adapters make from the sandbox catalogs, the provider fixtures and
    the name tables of each provider folder's names.py."""
    names = {vast_names.vast_gpu_type(g.name, g.ram_mb)[0] for g in catalog.VAST_GPUS}
    names |= {tensordock_names.tensordock_gpu_type(g.v0_name)[0] for g in catalog.TD_GPUS}
    runpod = json.loads((PROVIDERS / "runpod" / "fixtures" / "runpod_v2_catalog_gpus.json").read_text())
    for answer in runpod.values():
        for gpu in (answer.get("body") or {}).get("gpus", []) if isinstance(answer.get("body"), dict) else []:
            names.add(runpod_names.runpod_gpu_type(gpu["id"], gpu.get("memory") or 0)[0])
    lam_path = PROVIDERS / "lambdacloud" / "fixtures" / "lambda_v1_instance_types.json"
    lam = json.loads(lam_path.read_text())["success"]["body"]["data"]
    for entry in lam.values():
        kind = entry["instance_type"]
        names.add(lambda_names.lambda_gpu_type(kind["gpu_description"], kind["name"])[0])
    names |= {lambda_names.lambda_gpu_type(chip)[0] for chip in lambda_names.LAMBDA_MEMORY_GB}
    return names


def test_every_canonical_name_the_adapters_make_has_a_spec_row():
    names = adapter_names()
    assert len(names) > 25  # the derivation found the catalogs and fixtures
    assert names - SPEC_NAMES == NO_FORM_FACTOR


def test_every_model_in_the_name_tables_has_a_spec_row():
    """The alias tables name models (the size comes from the feed): each needs at least one row."""
    models = {
        *gpus.MODEL_ALIASES.values(),
        *tensordock_names.TENSORDOCK_MODELS.values(),
        *runpod_names.RUNPOD_MODELS.values(),
        *lambda_names.LAMBDA_MODELS.values(),
    }
    spec_models = {re.sub(r" \d+GB$", "", name) for name in SPEC_NAMES}
    assert models - spec_models == set()


@pytest.fixture
def specs(db):
    """The shipped table (what the migration loads; a transactional test elsewhere may have
    flushed it)."""
    call_command("load_gpu_specs", stdout=io.StringIO())


def test_the_migration_loads_the_shipped_table(db):
    migration = importlib.import_module("inventory.migrations.0005_load_gpu_specs")
    GpuSpec.objects.all().delete()
    migration.load(django_apps, None)
    assert GpuSpec.objects.count() == len(SPEC_NAMES) == 76
    h100 = GpuSpec.objects.get(canonical_name="H100 SXM 80GB")
    assert (h100.fp16_bf16_dense_tflops, h100.memory_bandwidth_gbps, h100.vram_gb) == (Decimal(989), 3350, 80)


@pytest.mark.parametrize(
    ("gpu", "count", "price", "expected"),
    [
        # RTX 4090: 165.2 BF16 TFLOPS, 24 GB, 1008 GB/s. $0.90 for 2 = $0.45 per GPU.
        # 0.45/165.2 = 0.0027239…, 0.45/24 = 0.01875, 0.45/1.008 = 0.446428…
        ("RTX 4090 24GB", 2, "0.9000", ("0.002724", "0.018750", "0.446429")),
        # H100 SXM: 989 BF16, 80 GB, 3350 GB/s; 8 GPUs at $20.00 = $2.50 each.
        # 2.5/989 = 0.0025278…, 2.5/80 = 0.03125, 2.5/3.35 = 0.746268…
        ("H100 SXM 80GB", 8, "20.0000", ("0.002528", "0.031250", "0.746269")),
        # GTX 1080 Ti has no usable BF16: FP32 11.34. 0.10/11.34 = 0.0088183…, 0.10/11 = 0.0090909…,
        # 0.10/0.4844 = 0.206441…
        ("GTX 1080 Ti 11GB", 1, "0.1000", ("0.008818", "0.009091", "0.206441")),
        # K80: named 11GB (snapped), the table's nominal VRAM is 12. No BF16: FP32 4.37.
        ("K80 11GB", 1, "0.1200", ("0.027460", "0.010000", "0.500000")),
    ],
)
def test_value_figures_by_hand(specs, gpu, count, price, expected):
    figures = value_figures(Decimal(price), count, spec_table()[gpu])
    assert figures == tuple(Decimal(e) for e in expected)


def test_no_spec_row_means_no_figures(specs):
    assert value_figures(Decimal("1.0000"), 1, spec_table().get("Imaginary 9000 8GB")) == (None, None, None)


def test_load_command_updates_from_a_csv_without_code(specs, tmp_path, capsys):
    text = CSV_PATH.read_text()
    changed = text.replace(
        "RTX 4090 24GB,NVIDIA,Ada Lovelace,24,1008,82.6,165.2,",
        "RTX 4090 24GB,NVIDIA,Ada Lovelace,24,1008,82.6,170,",
    )
    assert changed != text
    lines = changed.splitlines(keepends=True)
    extra = "Imaginary 9000 8GB,NVIDIA,Test,8,100,1,2,,,,1.0,,\n"
    path = tmp_path / "specs.csv"
    path.write_text("".join(lines) + extra)
    call_command("load_gpu_specs", str(path))
    assert "1 added, 1 updated, 75 unchanged, 0 deleted" in capsys.readouterr().out
    assert GpuSpec.objects.get(canonical_name="RTX 4090 24GB").fp16_bf16_dense_tflops == 170
    path.write_text("".join(lines[:-1]))  # the last row (InstinctMI100) and the extra one gone
    call_command("load_gpu_specs", str(path), "--prune")
    assert "2 deleted" in capsys.readouterr().out
    assert not GpuSpec.objects.filter(
        canonical_name__in=["Imaginary 9000 8GB", "InstinctMI100 32GB"]
    ).exists()


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            "RTX 4090 24GB,NVIDIA,Ada Lovelace,24,1008,82.6,lots,",
            "fp16_bf16_dense_tflops 'lots' is not a number",
        ),
        ("RTX 4090 24GB,NVIDIA,Ada Lovelace,24,1008,82.6,-1,", "must be a positive number"),
        ("RTX 4090 24GB,NVIDIA,Ada Lovelace,,1008,82.6,165.2,", "vram_gb is required"),
        ("RTX 4090 24GB,NVIDIA,Ada Lovelace,24,1008,82.6,165.234,", "at most 2 decimals"),
        ("RTX 3090 24GB,NVIDIA,Ada Lovelace,24,1008,82.6,165.2,", "duplicate canonical_name RTX 3090 24GB"),
    ],
)
def test_a_bad_csv_is_refused_and_nothing_changes(specs, tmp_path, bad, message):
    text = CSV_PATH.read_text()
    good = "RTX 4090 24GB,NVIDIA,Ada Lovelace,24,1008,82.6,165.2,"
    path = tmp_path / "specs.csv"
    # A good change (the 5090) in the same file as the bad row: it must not be loaded either.
    path.write_text(
        text.replace(
            "RTX 5090 32GB,NVIDIA,Blackwell,32,1792,104.8,209.5,",
            "RTX 5090 32GB,NVIDIA,Blackwell,32,1792,104.8,300,",
        ).replace(good, bad)
    )
    with pytest.raises(CommandError, match=re.escape(message)) as caught:
        call_command("load_gpu_specs", str(path))
    assert "nothing changed" in str(caught.value)
    assert GpuSpec.objects.get(canonical_name="RTX 5090 32GB").fp16_bf16_dense_tflops == Decimal("209.5")


def test_a_missing_file_is_a_clear_error(db, tmp_path):
    with pytest.raises(CommandError, match="nothing changed"):
        call_command("load_gpu_specs", str(tmp_path / "none.csv"))


@pytest.mark.parametrize(
    ("version", "key"),
    [
        ("12.8", 12_008_000),
        ("12", 12_000_000),
        ("12.10", 12_010_000),
        ("570.133.07", 570_133_007),
        ("", None),
        ("n/a", None),
        ("12.x", None),
        ("١٢", None),
    ],
)
def test_cuda_versions_compare_as_versions(version, key):
    assert version_key(version) == key
