"""`gpu-shopper gpus` and the value column, sort and min_cuda of `gpu-shopper inventory`."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command


@pytest.fixture
def menu(make_offer):
    call_command("load_gpu_specs", stdout=io.StringIO())  # a transactional test may have flushed it
    make_offer(gpu_type="RTX 4090 24GB", price_per_hour="0.3500", cuda_version="12.8")
    make_offer(
        gpu_type="H100 SXM 80GB", vram_gb=80, gpu_count=2, price_per_hour="4.2000", cuda_version="12.4"
    )
    make_offer(gpu_type="Imaginary 9000 8GB", vram_gb=8, price_per_hour="0.0100", cuda_version="12.8")


def test_inventory_shows_value_and_sorts_and_filters_on_it(shopper, run, menu):
    code, out, err = run("inventory", "--sort", "value")
    assert code == 0, err
    lines = out.splitlines()
    assert "$/TFLOP·H" in lines[0]
    assert "RTX 4090 24GB" in lines[2] and lines[2].rstrip().endswith("0.002119")  # 0.35 / 165.2
    assert "H100 SXM 80GB" in lines[3] and lines[3].rstrip().endswith("0.002123")  # 2.1 / 989
    assert "Imaginary 9000 8GB" in lines[4] and lines[4].rstrip().endswith("—")
    out = run("inventory", "--min-cuda", "12.8")[1]
    assert "H100" not in out and "RTX 4090" in out


def test_a_bad_min_cuda_is_the_servers_400_naming_it(shopper, run, menu):
    code, _, err = run("inventory", "--min-cuda", "new")
    assert code != 0 and "min_cuda" in err


def test_gpus_lists_models_best_value_first(shopper, run, menu):
    code, out, err = run("gpus")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["GPU", "VRAM", "OFFERS"]
    names = [line.split("  ")[0].strip() for line in lines[2:5]]
    assert names == ["RTX 4090 24GB", "H100 SXM 80GB", "Imaginary 9000 8GB"]
    assert "vastai 0.3500" in lines[2] and "0.002119" in lines[2]
    assert "BEST CONFIDENCE" in lines[0] and " 70% " in lines[2]  # vastai's prior, no history yet
    models = json.loads(run("gpus", "--json")[1])
    assert models[0]["gpu_type"] == "RTX 4090 24GB" and models[-1]["usd_per_tflop_hour"] is None
