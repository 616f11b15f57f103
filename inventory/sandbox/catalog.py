"""Deterministic offer catalog of the sandbox cloud.

Everything here is a pure function of the seed: the same seed gives the same Vast asks (same ids,
prices, locations) and the same TensorDock locations (same uuids), so a restarted sandbox answers
exactly like the one before it. Shapes and units copy the constructed fixtures in
``/work/shared/providers/fixtures`` (``vastai_offers_search.json``, ``tensordock_v2_locations.json``):
MB for Vast GPU/CPU RAM, GB for disk, $/GB/month for Vast storage, per-GPU $/h for TensorDock.
"""

from __future__ import annotations

import copy
import random
import uuid
from dataclasses import dataclass

# A fixed "now" for date fields, so the catalog does not depend on the wall clock.
CATALOG_EPOCH = 1787990400.0
DEFAULT_ALLOCATED_STORAGE = 5.0  # GB, the Vast CLI's default for the price calculation
VAST_OFFER_COUNT = 2500
TD_LOCATION_COUNT = 60
TD_GPUS_PER_LOCATION = 6


@dataclass(frozen=True)
class VastGpu:
    name: str  # Vast gpu_name (no memory size: A100 40/80 share a name)
    ram_mb: int  # per GPU, MB as Vast reports it
    price: tuple[float, float]  # $/h per GPU, low..high
    compute_cap: int
    tflops: float  # per GPU
    mem_bw: float
    max_power: int
    smi_name: str  # what nvidia-smi prints on the node
    weight: int


VAST_GPUS: tuple[VastGpu, ...] = (
    VastGpu("RTX 3090", 24576, (0.13, 0.25), 860, 35.6, 936.0, 350, "NVIDIA GeForce RTX 3090", 16),
    VastGpu("RTX 4090", 24564, (0.27, 0.45), 890, 82.6, 1008.0, 450, "NVIDIA GeForce RTX 4090", 22),
    VastGpu("RTX 5090", 32607, (0.55, 0.90), 1200, 104.8, 1792.0, 575, "NVIDIA GeForce RTX 5090", 8),
    VastGpu("RTX A6000", 49140, (0.40, 0.60), 860, 38.7, 768.0, 300, "NVIDIA RTX A6000", 7),
    VastGpu("RTX 6000Ada", 49140, (0.70, 1.00), 890, 91.1, 960.0, 300, "NVIDIA RTX 6000 Ada Generation", 4),
    VastGpu("L40S", 46068, (0.70, 0.95), 890, 91.6, 864.0, 350, "NVIDIA L40S", 6),
    VastGpu("L40", 46068, (0.60, 0.85), 890, 90.5, 864.0, 300, "NVIDIA L40", 2),
    VastGpu("A100 PCIE", 40960, (0.60, 0.80), 800, 19.5, 1555.0, 250, "NVIDIA A100-PCIE-40GB", 3),
    VastGpu("A100 PCIE", 81920, (0.80, 1.10), 800, 19.5, 1935.0, 300, "NVIDIA A100 80GB PCIe", 4),
    VastGpu("A100 SXM4", 40960, (0.70, 0.90), 800, 19.5, 1555.0, 400, "NVIDIA A100-SXM4-40GB", 3),
    VastGpu("A100 SXM4", 81920, (0.90, 1.30), 800, 19.5, 2039.0, 400, "NVIDIA A100-SXM4-80GB", 6),
    VastGpu("H100 PCIE", 81559, (1.60, 2.10), 900, 51.2, 2039.0, 350, "NVIDIA H100 PCIe", 4),
    VastGpu("H100 SXM", 81559, (1.90, 2.60), 900, 66.9, 3352.0, 700, "NVIDIA H100 80GB HBM3", 8),
    VastGpu("H100 NVL", 95830, (2.00, 2.70), 900, 60.0, 3938.0, 400, "NVIDIA H100 NVL", 2),
    VastGpu("H200", 143771, (2.80, 3.80), 900, 66.9, 4800.0, 700, "NVIDIA H200", 3),
    VastGpu("Tesla V100", 16384, (0.10, 0.20), 700, 15.7, 897.0, 300, "Tesla V100-SXM2-16GB", 2),
    VastGpu("Tesla V100", 32768, (0.12, 0.25), 700, 15.7, 897.0, 300, "Tesla V100-SXM2-32GB", 2),
    VastGpu("Tesla T4", 15360, (0.07, 0.15), 750, 8.1, 320.0, 70, "Tesla T4", 3),
    VastGpu("Q RTX 8000", 49152, (0.25, 0.40), 750, 16.3, 672.0, 260, "Quadro RTX 8000", 1),
)

# "Region, CC" like Vast; the country code is always the last two characters.
GEOLOCATIONS = (
    "Oregon, US", "California, US", "Texas, US", "Ohio, US", "Virginia, US", "New York, US",
    "Washington, US", "Utah, US", "Georgia, US", "Illinois, US", "Nevada, US", "Florida, US",
    "Quebec, CA", "Ontario, CA", "British Columbia, CA", "Bavaria, DE", "Brandenburg, DE",
    "Hesse, DE", "Noord-Holland, NL", "Stockholm, SE", "Uusimaa, FI", "England, GB",
    "Île-de-France, FR", "Mazovia, PL", "Prague, CZ", "Hong Kong, HK", "Taipei, TW",
    "Yutakachō, Shinagawa District, Tokyo, JP", "Seoul, KR", "Singapore, SG",
    "New South Wales, AU", "São Paulo, BR", "Maharashtra, IN", "Oslo, NO", "Catalonia, ES",
)  # fmt: skip

# (driver_version, cuda_max_good); weights follow the order (most hosts are current).
DRIVERS = (("570.133.07", 12.8), ("550.127.05", 12.4), ("535.183.01", 12.2), ("575.57.08", 12.9))
CPUS = (
    ("AMD EPYC 7763 64-Core Processor", 2.45), ("AMD EPYC 9654 96-Core Processor", 2.4),
    ("Intel Xeon Platinum 8480+", 2.0), ("AMD Ryzen Threadripper PRO 5975WX", 3.6),
    ("Intel Xeon Gold 6338", 2.0), ("AMD EPYC 7B13 64-Core Processor", 2.25),
)  # fmt: skip
MOBOS = ("ROMED8-2T", "H12SSL-i", "WRX80E-SAGE SE WIFI", "X12DPG-QT6", "MZ73-LM0")
DISKS = ("Samsung SSD 990 PRO 2TB", "KINGSTON SNV2S2000G", "SAMSUNG MZQL23T8HCLS", "WD_BLACK SN850X 4TB")


def _weighted(rng: random.Random, items, weights):
    return rng.choices(items, weights=weights, k=1)[0]


def _ip(rng: random.Random) -> str:
    return f"{rng.randint(23, 216)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def price_blocks(dph_base: float, disk_hour: float) -> dict:
    """The ``search``/``instance`` price breakdown objects Vast repeats on every offer."""
    total = round(dph_base + disk_hour, 6)
    return {
        "gpuCostPerHour": dph_base,
        "diskHour": round(disk_hour, 6),
        "totalHour": total,
        "discountTotalHour": 0.0,
        "discountedTotalPerHour": total,
    }


def generate_vast_offers(seed: int = 42, count: int = VAST_OFFER_COUNT) -> list[dict]:
    """The Vast asks, priced for the default ``allocated_storage``; see :func:`price_vast_offer`."""
    rng = random.Random(f"vastai:{seed}")
    offers: list[dict] = []
    ask_id = 21_800_000
    machine_id = 9_000
    hosts = [rng.randint(40_000, 79_999) for _ in range(700)]
    weights = [g.weight for g in VAST_GPUS]
    for _ in range(count):
        ask_id += rng.randint(3, 400)
        machine_id += rng.randint(1, 6)
        gpu: VastGpu = _weighted(rng, VAST_GPUS, weights)
        big = gpu.name.startswith(("H100", "H200", "A100"))
        num = _weighted(rng, (1, 2, 4, 8), (40, 25, 18, 17) if big else (48, 26, 18, 8))
        dph_base = round(rng.uniform(*gpu.price) * num, 3)
        storage_cost = rng.choice((0.1, 0.15, 0.2, 0.25, 0.3))
        driver, cuda = _weighted(rng, DRIVERS, (70, 15, 8, 7))
        if gpu.compute_cap >= 1200:  # Blackwell needs a 570+ driver
            driver, cuda = DRIVERS[0]
        cpu_name, cpu_ghz = rng.choice(CPUS)
        cpu_cores = rng.choice((32, 48, 64, 128, 256))
        cpu_eff = float(min(cpu_cores, num * rng.choice((4, 8, 12, 16))))
        reliability = round(0.999 - (rng.random() ** 2) * 0.149, 4)
        ip = _ip(rng)
        if rng.random() < 0.04:  # quirk: trailing whitespace that every client strips
            ip += rng.choice((" ", "\n"))
        geolocation = None if rng.random() < 0.05 else rng.choice(GEOLOCATIONS)
        verification = _weighted(rng, ("verified", "unverified", "deverified"), (92, 6, 2))
        start_date = round(CATALOG_EPOCH - rng.randint(3, 400) * 86400.0 + rng.randint(0, 86399), 1)
        end_date = round(CATALOG_EPOCH + rng.randint(7, 180) * 86400.0 + rng.randint(0, 86399), 1)
        total_flops = round(gpu.tflops * num, 1)
        dlperf = round(gpu.tflops * num * rng.uniform(0.85, 1.05), 4)
        offer = {
            "id": ask_id,
            "ask_contract_id": ask_id,
            "bundle_id": ask_id + 513_000_000,
            "bundled_results": None,
            "machine_id": machine_id,
            "host_id": rng.choice(hosts),
            "cluster_id": None,
            "num_gpus": num,
            "gpu_name": gpu.name,
            "gpu_ram": gpu.ram_mb,
            "gpu_total_ram": gpu.ram_mb * num,
            "gpu_frac": 1.0,
            "gpu_arch": "nvidia",
            "gpu_lanes": rng.choice((8, 16)),
            "gpu_mem_bw": gpu.mem_bw,
            "gpu_max_power": gpu.max_power,
            "gpu_max_temp": rng.choice((83.0, 87.0, 90.0)),
            "gpu_display_active": False,
            "gpu_ids": list(range(num)),
            "compute_cap": gpu.compute_cap,
            "cuda_max_good": cuda,
            "driver_version": driver,
            "driver_vers": int("".join(f"{int(p):03d}" for p in driver.split("."))),
            "bw_nvlink": 0.0 if num == 1 or not big else round(rng.uniform(200, 600), 1),
            "pci_gen": rng.choice((3.0, 4.0, 4.0, 5.0)),
            "pcie_bw": round(rng.uniform(11.0, 52.0), 1),
            "cpu_name": cpu_name,
            "cpu_arch": "amd64",
            # quirk: "although not stated in the docs, the value can be None" (gpuhunt)
            "cpu_cores": None if rng.random() < 0.03 else cpu_cores,
            "cpu_cores_effective": cpu_eff,
            "cpu_ghz": cpu_ghz,
            "cpu_ram": rng.choice((132083, 264166, 528332, 1056665, 2113331)),
            "mobo_name": rng.choice(MOBOS),
            "os_version": rng.choice(("22.04", "24.04")),
            "has_avx": 1,
            "disk_space": round(rng.uniform(60, 2000), 1),
            "disk_bw": round(rng.uniform(800, 6500), 1),
            "disk_name": rng.choice(DISKS),
            "inet_up": round(rng.uniform(100, 2500), 1),
            "inet_down": round(rng.uniform(100, 6000), 1),
            "inet_up_cost": rng.choice((0.0, 0.005, 0.01)),
            "inet_down_cost": rng.choice((0.0, 0.002, 0.005)),
            "direct_port_count": 0 if rng.random() < 0.03 else rng.choice((20, 50, 99, 100, 500)),
            "dph_base": dph_base,
            "dph_total": dph_base,  # set by price_vast_offer
            "dph_total_adj": dph_base,
            "min_bid": round(dph_base * rng.uniform(0.5, 0.65), 6),
            "is_bid": False,
            "storage_cost": storage_cost,
            "storage_total_cost": 0.0,
            "vram_costperhour": 0.0,
            "discount_rate": None,
            "discounted_dph_total": dph_base,
            "discounted_hourly": 0.0,
            "credit_discount_max": 0.4,
            "dlperf": dlperf,
            "dlperf_per_dphtotal": 0.0,
            "total_flops": total_flops,
            "flops_per_dphtotal": 0.0,
            "score": 0.0,
            "rentable": True,
            "rented": False,
            "external": rng.choice((None, False, False)),
            "hosting_type": _weighted(rng, (0, 1, None), (70, 25, 5)),
            "hostname": None,
            "public_ipaddr": ip,
            "static_ip": rng.random() < 0.8,
            "geolocation": geolocation,
            "geolocode": rng.randint(1, 999),
            "reliability": reliability,
            "reliability2": reliability,
            "reliability_mult": round(min(1.0, reliability + 0.03), 4),
            "verification": verification,
            "vericode": 1 if verification == "verified" else 0,
            "vms_enabled": rng.random() < 0.1,
            "is_vm_deverified": False,
            "webpage": None,
            "logo": "/static/logos/vastai_small2.png",
            "start_date": start_date,
            "end_date": end_date,
            "duration": round(end_date - CATALOG_EPOCH, 1),
            "time_remaining": "",
            "time_remaining_isbid": "",
            "resource_type": "gpu",
            "rn": 0,
            "search": {},
            "instance": {},
        }
        offers.append(price_vast_offer(offer, DEFAULT_ALLOCATED_STORAGE))
    return offers


def price_vast_offer(offer: dict, allocated_storage: float) -> dict:
    """A copy of ``offer`` priced for ``allocated_storage`` GB:
    ``dph_total = dph_base + storage_cost * GB / 720`` (storage is $/GB/month, 30 days)."""
    o = copy.deepcopy(offer)
    disk_hour = o["storage_cost"] * allocated_storage / 720.0
    total = round(o["dph_base"] + disk_hour, 6)
    o["storage_total_cost"] = round(disk_hour, 6)
    o["dph_total"] = o["dph_total_adj"] = o["discounted_dph_total"] = total
    o["vram_costperhour"] = round(total / max(1, o["gpu_total_ram"] / 1024), 7)
    o["dlperf_per_dphtotal"] = round(o["dlperf"] / total, 4)
    o["flops_per_dphtotal"] = round(o["total_flops"] / total, 4)
    o["score"] = round(o["dlperf_per_dphtotal"] * o["reliability"], 4)
    o["search"] = price_blocks(o["dph_base"], disk_hour)
    o["instance"] = price_blocks(o["dph_base"], disk_hour)
    return o


# ---------------------------------------------------------------------------------------------
# TensorDock
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TdGpu:
    v0_name: str
    display_name: str
    price: tuple[float, float]  # $/h per GPU
    smi_name: str
    mem_mib: int


TD_GPUS: tuple[TdGpu, ...] = (
    TdGpu("h100-sxm5-80gb", "H100 SXM5 80GB", (2.0, 2.6), "NVIDIA H100 80GB HBM3", 81559),
    TdGpu("a100-sxm4-80gb", "A100 SXM4 80GB", (0.8, 1.2), "NVIDIA A100-SXM4-80GB", 81920),
    TdGpu("a100-pcie-80gb", "A100 PCIe 80GB", (0.7, 1.0), "NVIDIA A100 80GB PCIe", 81920),
    TdGpu("l40-pcie-48gb", "L40 PCIe 48GB", (0.6, 0.8), "NVIDIA L40", 46068),
    TdGpu("rtxa6000-pcie-48gb", "NVIDIA RTX A6000 PCIe 48GB", (0.4, 0.55), "NVIDIA RTX A6000", 49140),
    TdGpu(
        "geforcertx4090-pcie-24gb", "NVIDIA GeForce RTX 4090 PCIe 24GB", (0.3, 0.45),
        "NVIDIA GeForce RTX 4090", 24564,
    ),
    TdGpu(
        "geforcertx3090-pcie-24gb", "NVIDIA GeForce RTX 3090 PCIe 24GB", (0.18, 0.26),
        "NVIDIA GeForce RTX 3090", 24576,
    ),
    TdGpu(
        "geforcertx5090-pcie-32gb", "NVIDIA GeForce RTX 5090 PCIe 32GB", (0.55, 0.8),
        "NVIDIA GeForce RTX 5090", 32607,
    ),
    TdGpu("rtxa4000-pcie-16gb", "NVIDIA RTX A4000 PCIe 16GB", (0.1, 0.17), "NVIDIA RTX A4000", 16376),
    TdGpu("v100-pcie-16gb", "Tesla V100 PCIe 16GB", (0.12, 0.2), "Tesla V100-PCIE-16GB", 16384),
    TdGpu("l4-pcie-24gb", "NVIDIA L4 PCIe 24GB", (0.2, 0.3), "NVIDIA L4", 23034),
)  # fmt: skip
TD_GPU_BY_NAME = {g.v0_name: g for g in TD_GPUS}

TD_CITIES = (
    ("Dallas", "Texas", "United States"), ("Chubbuck", "Idaho", "United States"),
    ("Winnipeg", "Manitoba", "Canada"), ("Frankfurt", "Hesse", "Germany"),
    ("Joplin", "Missouri", "United States"), ("Orlando", "Florida", "United States"),
    ("Chicago", "Illinois", "United States"), ("Atlanta", "Georgia", "United States"),
    ("Las Vegas", "Nevada", "United States"), ("Kansas City", "Missouri", "United States"),
    ("New York", "New York", "United States"), ("Seattle", "Washington", "United States"),
    ("Los Angeles", "California", "United States"), ("Ashburn", "Virginia", "United States"),
    ("Salt Lake City", "Utah", "United States"), ("Phoenix", "Arizona", "United States"),
    ("Denver", "Colorado", "United States"), ("Miami", "Florida", "United States"),
    ("Toronto", "Ontario", "Canada"), ("Montreal", "Quebec", "Canada"),
    ("Vancouver", "British Columbia", "Canada"), ("Amsterdam", "North Holland", "Netherlands"),
    ("London", "England", "United Kingdom"), ("Manchester", "England", "United Kingdom"),
    ("Paris", "Île-de-France", "France"), ("Stockholm", "Stockholm", "Sweden"),
    ("Helsinki", "Uusimaa", "Finland"), ("Oslo", "Oslo", "Norway"), ("Warsaw", "Masovia", "Poland"),
    ("Prague", "Prague", "Czechia"), ("Madrid", "Madrid", "Spain"), ("Milan", "Lombardy", "Italy"),
    ("Zurich", "Zurich", "Switzerland"), ("Vienna", "Vienna", "Austria"),
    ("Singapore", "Singapore", "Singapore"), ("Tokyo", "Tokyo", "Japan"),
    ("Seoul", "Seoul", "South Korea"), ("Sydney", "New South Wales", "Australia"),
    ("Mumbai", "Maharashtra", "India"), ("São Paulo", "São Paulo", "Brazil"),
)  # fmt: skip


def _uuid4(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def generate_td_locations(seed: int = 42, count: int = TD_LOCATION_COUNT) -> list[dict]:
    """TensorDock v2 ``/locations`` entries (``data.locations[]``), with full stock.

    Big cities appear more than once (several data centers), as on the real dashboard."""
    rng = random.Random(f"tensordock:{seed}")
    locations = []
    for i in range(count):
        city, state, country = TD_CITIES[i % len(TD_CITIES)]
        tier = rng.choice((1, 2, 3, 3, 4))
        premium = tier >= 4
        pricing = {
            "per_vcpu_hr": 0.004 if premium else 0.003,
            "per_gb_ram_hr": 0.0025 if premium else 0.002,
            "per_gb_storage_hr": 7e-05 if premium else 5e-05,
        }
        dedicated = rng.random() < 0.85
        network_storage = rng.random() < 0.2
        gpus = []
        for gpu in sorted(rng.sample(TD_GPUS, TD_GPUS_PER_LOCATION), key=lambda g: -g.price[1]):
            max_count = _weighted(rng, (0, 1, 2, 4, 8), (8, 20, 30, 27, 15))
            per_gpu_vcpus = rng.choice((8, 12, 16, 22))
            gpus.append(
                {
                    "v0Name": gpu.v0_name,
                    "displayName": gpu.display_name,
                    "max_count": max_count,
                    "price_per_hr": round(rng.uniform(*gpu.price), 2),
                    "resources": {
                        "max_vcpus": max_count * per_gpu_vcpus,
                        "max_ram_gb": max_count * per_gpu_vcpus * 4,
                        "max_storage_gb": 0 if max_count == 0 else rng.choice((1500, 2000, 3000, 4000, 6000)),
                    },
                    "pricing": dict(pricing),
                    "network_features": {
                        "dedicated_ip_available": dedicated,
                        "port_forwarding_available": True,
                        "network_storage_available": network_storage,
                    },
                }
            )
        locations.append(
            {
                "id": _uuid4(rng),
                "city": city,
                "stateprovince": state,
                "country": country,
                "tier": tier,
                "gpus": gpus,
                # Not part of the /locations shape; used to build /hostnodes deterministically.
                "_hostnode_ids": [_uuid4(rng) for _ in range(rng.randint(1, 3))],
                "_uptime": round(rng.uniform(98.5, 99.99), 2),
            }
        )
    return locations


def td_offer_count(locations: list[dict]) -> int:
    """How many offers an adapter makes of these locations: counts 1,2,4,8 up to max_count."""
    return sum(1 for loc in locations for g in loc["gpus"] for n in (1, 2, 4, 8) if n <= g["max_count"])


# ---------------------------------------------------------------------------------------------
# RunPod (REST v2 ``/catalog/gpus``; RUNPOD_LAMBDA.md 1.4)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunPodGpu:
    id: str  # GpuType.id, sent back verbatim as gpu.id
    name: str  # GpuType.name
    memory: int  # GB per GPU
    secure_price: tuple[float, float]  # $/h per GPU, low..high (one price per GPU type, not per DC)
    community: bool
    max_count: int
    smi_name: str
    mem_mib: int
    pool: str


RUNPOD_GPUS: tuple[RunPodGpu, ...] = (
    RunPodGpu(
        "NVIDIA GeForce RTX 4090",
        "RTX 4090",
        24,
        (0.59, 0.69),
        True,
        8,
        "NVIDIA GeForce RTX 4090",
        24564,
        "ADA_24",
    ),
    RunPodGpu(
        "NVIDIA GeForce RTX 3090",
        "RTX 3090",
        24,
        (0.43, 0.46),
        True,
        8,
        "NVIDIA GeForce RTX 3090",
        24576,
        "AMPERE_24",
    ),
    RunPodGpu(
        "NVIDIA GeForce RTX 5090",
        "RTX 5090",
        32,
        (0.89, 0.99),
        True,
        8,
        "NVIDIA GeForce RTX 5090",
        32607,
        "BLACKWELL_32",
    ),
    RunPodGpu(
        "NVIDIA RTX A5000", "RTX A5000", 24, (0.27, 0.29), True, 8, "NVIDIA RTX A5000", 24564, "AMPERE_24"
    ),
    RunPodGpu(
        "NVIDIA RTX A6000", "RTX A6000", 48, (0.49, 0.49), True, 8, "NVIDIA RTX A6000", 49140, "AMPERE_48"
    ),
    RunPodGpu(
        "NVIDIA RTX 6000 Ada Generation",
        "RTX 6000 Ada",
        48,
        (0.77, 0.79),
        True,
        8,
        "NVIDIA RTX 6000 Ada Generation",
        49140,
        "ADA_48_PRO",
    ),
    RunPodGpu("NVIDIA L40S", "L40S", 48, (0.86, 0.86), True, 8, "NVIDIA L40S", 46068, "ADA_48_PRO"),
    RunPodGpu("NVIDIA L4", "L4", 24, (0.43, 0.44), False, 8, "NVIDIA L4", 23034, "ADA_24"),
    RunPodGpu(
        "NVIDIA A100 80GB PCIe",
        "A100 PCIe",
        80,
        (1.64, 1.64),
        True,
        8,
        "NVIDIA A100 80GB PCIe",
        81920,
        "AMPERE_80",
    ),
    RunPodGpu(
        "NVIDIA A100-SXM4-80GB",
        "A100 SXM",
        80,
        (1.74, 1.74),
        False,
        8,
        "NVIDIA A100-SXM4-80GB",
        81920,
        "AMPERE_80",
    ),
    RunPodGpu(
        "NVIDIA H100 PCIe", "H100 PCIe", 80, (2.39, 2.39), True, 8, "NVIDIA H100 PCIe", 81559, "ADA_80_PRO"
    ),
    RunPodGpu(
        "NVIDIA H100 80GB HBM3",
        "H100 SXM",
        80,
        (2.69, 2.99),
        False,
        8,
        "NVIDIA H100 80GB HBM3",
        81559,
        "HOPPER_141",
    ),
    RunPodGpu(
        "NVIDIA H100 NVL", "H100 NVL", 94, (2.79, 2.79), False, 8, "NVIDIA H100 NVL", 95830, "HOPPER_141"
    ),
    RunPodGpu("NVIDIA H200", "H200 SXM", 141, (3.59, 3.99), False, 8, "NVIDIA H200", 143771, "HOPPER_141"),
)
RUNPOD_GPU_BY_ID = {g.id: g for g in RUNPOD_GPUS}

# Secure Cloud data centres (ids and names as RunPod shows them).
RUNPOD_DATA_CENTERS = (
    ("EU-RO-1", "EU Romania 1"), ("EU-SE-1", "EU Sweden 1"), ("EU-NL-1", "EU Netherlands 1"),
    ("EU-CZ-1", "EU Czechia 1"), ("EU-FR-1", "EU France 1"), ("EUR-IS-1", "EU Iceland 1"),
    ("US-TX-3", "US Texas 3"), ("US-TX-4", "US Texas 4"), ("US-KS-2", "US Kansas 2"),
    ("US-GA-1", "US Georgia 1"), ("US-GA-2", "US Georgia 2"), ("US-IL-1", "US Illinois 1"),
    ("US-CA-2", "US California 2"), ("US-WA-1", "US Washington 1"), ("US-DE-1", "US Delaware 1"),
    ("US-NC-1", "US North Carolina 1"), ("CA-MTL-1", "CA Montreal 1"), ("CA-MTL-3", "CA Montreal 3"),
    ("AP-JP-1", "AP Japan 1"), ("OC-AU-1", "OC Australia 1"),
)  # fmt: skip
# (version, available) of cudaVersions; the nodes run the newest available one.
RUNPOD_CUDA = (("12.4", True), ("12.8", True), ("12.9", True), ("13.0", False))


def generate_runpod_catalog(seed: int = 42) -> list[dict]:
    """The RunPod GPU types with per-data-centre stock (GPUs free), deterministic per seed.

    Each entry is a ``GpuType`` without the availability fields (the dialect computes those from
    the stock left for the requested count) plus ``_stock: {dataCenterId: GPUs}``. Most types sit
    in a handful of data centres; some of those are sold out (stock 0), as the real catalog shows.
    """
    rng = random.Random(f"runpod:{seed}")
    out = []
    for gpu in RUNPOD_GPUS:
        price = round(rng.uniform(*gpu.secure_price), 2)
        centres = rng.sample(RUNPOD_DATA_CENTERS, rng.randint(3, 8))
        stock = {
            dc_id: _weighted(rng, (0, 2, 4, 8, 16, 32), (15, 15, 20, 25, 15, 10)) for dc_id, _ in centres
        }
        out.append(
            {
                "id": gpu.id,
                "name": gpu.name,
                "pool": gpu.pool,
                "manufacturer": "NVIDIA",
                "memory": gpu.memory,
                "secure": True,
                "community": gpu.community,
                "price": {
                    "secure": price,
                    "community": round(price * 0.7, 2) if gpu.community else 0,
                    "serverless": round(price * 1.9, 2),
                },
                "maxCount": {"secure": gpu.max_count, "community": 4 if gpu.community else 0},
                "_stock": stock,
            }
        )
    return out


def runpod_availability(free: int, count: int) -> str:
    """``NONE|LOW|MEDIUM|HIGH`` for ``count`` GPUs out of ``free`` in one data centre."""
    if free < count:
        return "NONE"
    pods = free // count
    return "LOW" if pods <= 1 else "MEDIUM" if pods <= 3 else "HIGH"


# ---------------------------------------------------------------------------------------------
# Lambda Cloud (``/instance-types``; RUNPOD_LAMBDA.md 2.3)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LambdaType:
    name: str
    gpu_description: str  # "A100 (40 GB SXM4)"
    gpus: int
    price_cents: int  # whole instance, storage included
    vcpus: int
    memory_gib: int
    storage_gib: int
    smi_name: str
    mem_mib: int


LAMBDA_TYPES: tuple[LambdaType, ...] = (
    LambdaType("gpu_1x_a10", "A10 (24 GB PCIe)", 1, 75, 30, 200, 1400, "NVIDIA A10", 23028),
    LambdaType("gpu_1x_a6000", "RTX A6000 (48 GB)", 1, 80, 14, 46, 512, "NVIDIA RTX A6000", 49140),
    LambdaType("gpu_2x_a6000", "RTX A6000 (48 GB)", 2, 160, 28, 92, 1024, "NVIDIA RTX A6000", 49140),
    LambdaType("gpu_4x_a6000", "RTX A6000 (48 GB)", 4, 320, 56, 184, 2048, "NVIDIA RTX A6000", 49140),
    LambdaType("gpu_1x_a100_sxm4", "A100 (40 GB SXM4)", 1, 129, 30, 200, 512, "NVIDIA A100-SXM4-40GB", 40960),
    LambdaType("gpu_8x_a100", "A100 (40 GB SXM4)", 8, 1032, 124, 1800, 6144, "NVIDIA A100-SXM4-40GB", 40960),
    LambdaType(
        "gpu_8x_a100_80gb_sxm4",
        "A100 (80 GB SXM4)",
        8,
        1432,
        240,
        1800,
        19560,
        "NVIDIA A100-SXM4-80GB",
        81920,
    ),
    LambdaType("gpu_1x_h100_pcie", "H100 (80 GB PCIe)", 1, 249, 26, 200, 1024, "NVIDIA H100 PCIe", 81559),
    LambdaType(
        "gpu_1x_h100_sxm5", "H100 (80 GB SXM5)", 1, 329, 26, 225, 2816, "NVIDIA H100 80GB HBM3", 81559
    ),
    LambdaType(
        "gpu_2x_h100_sxm5", "H100 (80 GB SXM5)", 2, 638, 52, 450, 5632, "NVIDIA H100 80GB HBM3", 81559
    ),
    LambdaType(
        "gpu_4x_h100_sxm5", "H100 (80 GB SXM5)", 4, 1236, 104, 900, 11264, "NVIDIA H100 80GB HBM3", 81559
    ),
    LambdaType(
        "gpu_8x_h100_sxm5", "H100 (80 GB SXM5)", 8, 2392, 208, 1800, 24780, "NVIDIA H100 80GB HBM3", 81559
    ),
    LambdaType("gpu_1x_gh200", "GH200 (96 GB)", 1, 149, 64, 432, 4096, "NVIDIA GH200 480GB", 97871),
    LambdaType("gpu_8x_v100", "Tesla V100 (16 GB)", 8, 440, 92, 448, 5800, "Tesla V100-SXM2-16GB", 16384),
    LambdaType("gpu_8x_b200_sxm6", "B200 (180 GB SXM6)", 8, 3992, 208, 2900, 22000, "NVIDIA B200", 183359),
)
LAMBDA_TYPE_BY_NAME = {t.name: t for t in LAMBDA_TYPES}

# gpuhunt's integrity-test list of regions, with Lambda's descriptions.
LAMBDA_REGIONS = (
    ("us-east-1", "Virginia, USA"), ("us-east-3", "Washington DC, USA"), ("us-west-1", "California, USA"),
    ("us-west-2", "Arizona, USA"), ("us-west-3", "Utah, USA"), ("us-south-2", "North Texas, USA"),
    ("us-south-3", "Central Texas, USA"), ("us-midwest-1", "Illinois, USA"),
    ("europe-central-1", "Germany"), ("asia-northeast-1", "Tokyo, Japan"),
    ("asia-northeast-2", "Osaka, Japan"), ("asia-south-1", "India"),
    ("australia-east-1", "Sydney, Australia"), ("me-west-1", "Israel"),
)  # fmt: skip
LAMBDA_REGION_DESCRIPTION = dict(LAMBDA_REGIONS)


def generate_lambda_capacity(seed: int = 42) -> dict[str, dict[str, int]]:
    """``{type name: {region: instances free}}``, deterministic per seed. Lambda is often sold
    out: each type is stocked in a few regions, and a third of those have none left."""
    rng = random.Random(f"lambda:{seed}")
    capacity = {}
    for itype in LAMBDA_TYPES:
        regions = rng.sample(LAMBDA_REGIONS, rng.randint(2, 6))
        sold_out = rng.random() < 0.3  # the big types often are, everywhere
        capacity[itype.name] = {
            name: 0 if sold_out else _weighted(rng, (0, 1, 2, 4), (35, 25, 25, 15)) for name, _ in regions
        }
    return capacity
