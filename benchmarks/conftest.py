"""Shared benchmark data: the real signature lists, DB-IP and fixed-seed random addresses.

Everything comes from ../shared/data; the benchmarks that need it skip cleanly without it.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(os.environ.get("CONNSCAN_SHARED_DATA",
                                  Path(__file__).resolve().parents[1].parent / "shared" / "data"))
# ipsum + FireHOL level4 + Spamhaus DROP/DROPv6 + C2-Tracker 2023: ~270k signatures.
C2_LISTS = ["c2/ipsum/ipsum.txt", "c2/firehol/firehol_level4.netset",
            "c2/spamhaus/drop-wsock-trace.txt", "c2/spamhaus/dropv6-2025-01-15.txt",
            "c2/c2-tracker/2023-12-07/data/all.txt"]
DBIP_MMDB = "geoip/dbip-country-lite/dbip-country.mmdb"
SEED = 20260601


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not available at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def c2_signatures(shared_data):
    from connscan.signatures import SignatureSet

    return SignatureSet.load([shared_data / p for p in C2_LISTS], strict=False)


@pytest.fixture(scope="session")
def dbip_path(shared_data) -> Path:
    return shared_data / DBIP_MMDB


@pytest.fixture(scope="session")
def dbip_geo(dbip_path, tmp_path_factory):
    from connscan.geoip import GeoTable

    return GeoTable.open(dbip_path, cache_dir=tmp_path_factory.mktemp("geoip-cache"))


@pytest.fixture(scope="session")
def random_ipv4() -> np.ndarray:
    """10 million uniformly random IPv4 addresses (fixed seed)."""
    rng = np.random.default_rng(SEED)
    return rng.integers(0, 1 << 32, 10_000_000, dtype=np.uint64).astype(np.uint32)


@pytest.fixture(scope="session")
def random_ipv6() -> tuple[np.ndarray, np.ndarray]:
    """2 million random addresses in 2000::/3 (global unicast, where the data is), fixed seed."""
    rng = np.random.default_rng(SEED + 6)
    hi = (rng.integers(0, 1 << 61, 2_000_000, dtype=np.uint64) | np.uint64(1 << 61))
    lo = rng.integers(0, 1 << 63, 2_000_000, dtype=np.uint64) * np.uint64(2)
    return hi, lo
