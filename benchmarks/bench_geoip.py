"""GeoIP compile and cache-load speed on the embedded DB-IP Country Lite database.

Run: PYTHONPATH=src /work/venv/bin/python -m pytest benchmarks/bench_geoip.py -p no:cacheprovider

Baselines are measured in the same run (the machines are shared and noisy), and only ratios
are asserted: the native compile must beat merely iterating the database with maxminddb's
own iterator, and a cache load must beat a compile.
"""
from __future__ import annotations

import importlib.resources
import time
from pathlib import Path

import maxminddb
import pytest

from connscan import _native
from connscan.geoip import GeoTable

DBIP = Path(str(importlib.resources.files("connscan") / "data" / "dbip-country.mmdb"))


@pytest.fixture(scope="module")
def iterate_seconds() -> float:
    """Baseline: one pass of maxminddb's iterator over every network (no compiling at all)."""
    reader = maxminddb.open_database(str(DBIP))
    start = time.perf_counter()
    networks = sum(1 for _network, _record in reader)
    seconds = time.perf_counter() - start
    assert networks > 100_000
    return seconds


@pytest.mark.parametrize("impl", _native.implementations("mmdb"))
def test_compile_dbip(benchmark, iterate_seconds, impl):
    walker = _native.load("mmdb", impl=impl)
    rounds = 3 if impl == "c" else 1
    table = benchmark.pedantic(GeoTable.compile, args=(DBIP,), kwargs={"walker": walker},
                               rounds=rounds, iterations=1)
    compile_seconds = benchmark.stats.stats.median
    benchmark.extra_info.update({
        "maxminddb_iterate_s": round(iterate_seconds, 3),
        "ratio_iterate_over_compile": round(iterate_seconds / compile_seconds, 1),
        "v4_intervals": len(table.v4_starts), "v6_intervals": len(table.v6_hi),
        "countries": len(table.countries) - 1,
    })
    print(f"\n{impl}: compile {compile_seconds:.3f} s, maxminddb iterate {iterate_seconds:.3f} s "
          f"(x{iterate_seconds / compile_seconds:.1f}); {len(table.v4_starts)} IPv4 / "
          f"{len(table.v6_hi)} IPv6 intervals, {len(table.countries) - 1} countries")
    if impl == "c":
        assert compile_seconds < iterate_seconds


def test_load_dbip_from_cache(benchmark, tmp_path):
    start = time.perf_counter()
    GeoTable.open(DBIP, cache_dir=tmp_path)  # first open compiles and writes the cache
    first_seconds = time.perf_counter() - start
    cache_bytes = sum(p.stat().st_size for p in tmp_path.glob("geoip-*.cstab"))
    table = benchmark(GeoTable.open, DBIP, cache_dir=tmp_path)
    load_seconds = benchmark.stats.stats.median
    benchmark.extra_info.update({"first_open_s": round(first_seconds, 3), "cache_bytes": cache_bytes,
                                 "ratio_first_over_cached": round(first_seconds / load_seconds, 1)})
    print(f"\nfirst open {first_seconds:.3f} s, cached open {load_seconds:.4f} s "
          f"(x{first_seconds / load_seconds:.1f}), cache file {cache_bytes / 1e6:.1f} MB")
    assert not table.v4_starts.flags.writeable  # served from the mmap'd cache
    assert load_seconds < first_seconds
