"""Engine lookup speed on real data against the alternatives a user has, in the same run.

Run: PYTHONPATH=src /work/venv/bin/python -m pytest benchmarks/bench_engine.py -p no:cacheprovider -s

Data: ipsum + FireHOL level4 + Spamhaus DROP/DROPv6 + C2-Tracker 2023 (~270k signatures),
DB-IP Country Lite, 10 million random IPv4 addresses (fixed seed). Reported in M lookups/s
(printed and in each benchmark's extra_info). The machines are shared and noisy, so the
gates are ratios against baselines timed in the same test, interleaved, best of rounds:
native >= 4x numpy searchsorted, >= 50x maxminddb's C reader per address, and two threads
>= 1.4x one thread (measured 2.06x on an idle machine; the target is 1.7x, and the
gate leaves room for a neighbour on the shared host).
"""
from __future__ import annotations

import ipaddress
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pytest

from connscan.engine import SEGMENT_FLAG, Engine

SAMPLE = 200_000  # per-address baselines (maxminddb, pytricia) run on a sample


def best_seconds(fn, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def rate(n: int, seconds: float) -> float:
    """Million lookups per second."""
    return n / seconds / 1e6


def report(benchmark, line: str, **figures) -> None:
    benchmark.extra_info.update({k: round(v, 2) if isinstance(v, float) else v for k, v in figures.items()})
    print(f"\n{line}")


def v4_texts(addrs: np.ndarray) -> list[str]:
    return [f"{a >> 24}.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255}" for a in addrs.tolist()]


@pytest.fixture(scope="module")
def compiled(c2_signatures, dbip_geo):
    start = time.perf_counter()
    engine = Engine(c2_signatures, dbip_geo)
    seconds = time.perf_counter() - start
    if engine.implementation != "c":
        pytest.skip("connscan._engine_c not built: nothing native to benchmark")
    return engine, seconds


@pytest.fixture(scope="module")
def engine(compiled):
    return compiled[0]


@pytest.fixture(scope="module")
def single_thread_seconds(engine, random_ipv4):
    engine.lookup_ipv4(random_ipv4[:100_000])  # warm the tables
    return best_seconds(lambda: engine.lookup_ipv4(random_ipv4), 3)


def test_compile(benchmark, compiled, c2_signatures):
    engine, seconds = compiled
    arrays = engine._arrays
    mixed = int(np.count_nonzero(arrays["v4_l1"] & SEGMENT_FLAG))
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    report(benchmark,
           f"compile {seconds:.2f} s for {len(c2_signatures)} signatures; tables "
           f"{engine.table_bytes / 1e6:.1f} MB; {len(arrays['v4_starts'])} IPv4 / "
           f"{len(arrays['v6_keys'])} IPv6 intervals, {mixed} mixed /24s, "
           f"{len(arrays['values'])} values",
           compile_s=seconds, table_mb=engine.table_bytes / 1e6, signatures=len(c2_signatures),
           mixed_blocks=mixed)
    assert engine.table_bytes < 150e6


def test_lookup_ipv4_vs_numpy_searchsorted(benchmark, engine, random_ipv4, single_thread_seconds):
    arrays = engine._arrays
    starts = np.asarray(arrays["v4_starts"])
    values = np.asarray(arrays["values"])[np.asarray(arrays["v4_value"])]
    interval_sig = (values & np.uint64(0xFFFF_FFFF)).astype(np.uint32).view(np.int32)
    interval_country = (values >> np.uint64(32)).astype(np.uint16).view("S2")

    def numpy_lookup():
        i = np.searchsorted(starts, random_ipv4, side="right") - 1
        return interval_sig[i], interval_country[i]

    result = benchmark.pedantic(engine.lookup_ipv4, args=(random_ipv4,), rounds=3, iterations=1)
    numpy_seconds = best_seconds(numpy_lookup, 2)
    native_seconds = min(benchmark.stats.stats.min, single_thread_seconds)
    sig, country = numpy_lookup()
    np.testing.assert_array_equal(result.signature, sig)
    np.testing.assert_array_equal(result.country, country)
    n = len(random_ipv4)
    ratio = numpy_seconds / native_seconds
    report(benchmark,
           f"lookup_ipv4 {rate(n, native_seconds):.1f} M/s; numpy searchsorted "
           f"{rate(n, numpy_seconds):.1f} M/s (x{ratio:.1f}); hits {(result.signature >= 0).mean():.2%}",
           native_mps=rate(n, native_seconds), numpy_mps=rate(n, numpy_seconds), ratio=ratio)
    assert ratio >= 4


def test_lookup_ipv4_two_threads(benchmark, engine, random_ipv4, single_thread_seconds):
    half = len(random_ipv4) // 2
    parts = [random_ipv4[:half], random_ipv4[half:]]
    with ThreadPoolExecutor(2) as pool:
        def two_threads():
            return list(pool.map(engine.lookup_ipv4, parts))

        halves = benchmark.pedantic(two_threads, rounds=3, iterations=1)
        single = min(single_thread_seconds, best_seconds(lambda: engine.lookup_ipv4(random_ipv4), 2))
        double = min(benchmark.stats.stats.min, best_seconds(two_threads, 2))
    whole = engine.lookup_ipv4(random_ipv4)
    np.testing.assert_array_equal(np.concatenate([h.signature for h in halves]), whole.signature)
    n = len(random_ipv4)
    speedup = single / double
    report(benchmark, f"lookup_ipv4 one thread {rate(n, single):.1f} M/s, two threads "
                      f"{rate(n, double):.1f} M/s (x{speedup:.2f})",
           single_mps=rate(n, single), two_thread_mps=rate(n, double), speedup=speedup)
    assert speedup >= 1.4


def test_lookup_vs_maxminddb(benchmark, engine, random_ipv4, dbip_path, single_thread_seconds):
    import maxminddb

    texts = v4_texts(random_ipv4[:SAMPLE])
    reader = maxminddb.open_database(str(dbip_path), maxminddb.MODE_MMAP_EXT)

    def per_address():
        return [reader.get(t) for t in texts]

    records = benchmark.pedantic(per_address, rounds=2, iterations=1)
    mmdb_seconds = benchmark.stats.stats.min
    want = np.array([(r or {}).get("country_code", "").encode() for r in records], "S2")
    np.testing.assert_array_equal(engine.lookup(texts).country, want)
    native = rate(len(random_ipv4), single_thread_seconds)
    ratio = native / rate(SAMPLE, mmdb_seconds)
    report(benchmark, f"maxminddb C reader {rate(SAMPLE, mmdb_seconds):.2f} M/s per address; "
                      f"native lookup_ipv4 {native:.1f} M/s (x{ratio:.0f})",
           maxminddb_mps=rate(SAMPLE, mmdb_seconds), native_mps=native, ratio=ratio)
    assert ratio >= 50


def test_lookup_vs_pytricia(benchmark, engine, c2_signatures, random_ipv4, single_thread_seconds):
    import pytricia

    trie = pytricia.PyTricia(32)
    for index in range(len(c2_signatures)):
        network = c2_signatures.network(index)
        if ":" not in network and "-" not in network and network not in trie:
            trie[network] = index
    texts = v4_texts(random_ipv4[:SAMPLE])
    found = benchmark.pedantic(lambda: [trie.get(t) for t in texts], rounds=2, iterations=1)
    trie_seconds = benchmark.stats.stats.min
    native = rate(len(random_ipv4), single_thread_seconds)
    hits = sum(f is not None for f in found)
    # These lists hold CIDRs only (no ranges), so the trie must agree on every hit.
    assert hits == int((engine.lookup(texts).signature >= 0).sum())
    report(benchmark, f"pytricia {rate(SAMPLE, trie_seconds):.2f} M/s per address; native "
                      f"{native:.1f} M/s (x{native / rate(SAMPLE, trie_seconds):.0f})",
           pytricia_mps=rate(SAMPLE, trie_seconds), native_mps=native)


def test_lookup_ipv6(benchmark, engine, random_ipv6):
    hi, lo = random_ipv6
    result = benchmark.pedantic(engine.lookup_ipv6, args=(hi, lo), rounds=3, iterations=1)
    mps = rate(len(hi), benchmark.stats.stats.min)
    located = float((result.country != b"").mean())
    report(benchmark, f"lookup_ipv6 {mps:.1f} M/s (2000::/3, {located:.0%} located)",
           ipv6_mps=mps, located=located)
    assert located > 0.1  # the sample does reach the populated part of the table


def test_lookup_strings(benchmark, engine, random_ipv4):
    n = 1_000_000
    texts = v4_texts(random_ipv4[:n])
    v6 = [str(ipaddress.IPv6Address((0x2a00 << 112) | i * 7919)) for i in range(n // 10)]
    column = pa.array(texts[: n - len(v6)] + v6)
    result = benchmark.pedantic(engine.lookup, args=(column,), rounds=3, iterations=1)
    assert result.valid.all() and int(result.is_ipv4.sum()) == n - len(v6)
    mps = rate(n, benchmark.stats.stats.min)
    report(benchmark, f"lookup on a pyarrow string column (90% IPv4, 10% IPv6) {mps:.1f} M/s",
           strings_mps=mps)
