"""Signature loading: ipsum + firehol_level4 + Spamhaus DROP + c2-tracker all.txt (~270k).

The baseline, measured in the same run, is the naive loader: one ``ipaddress.ip_network``
per entry over a random sample of the same entries (lines already split, comments already
dropped, so the baseline does less than the loader), scaled to the full count.

    PYTHONPATH=src /work/venv/bin/python -m pytest benchmarks/bench_signatures.py -s
    PYTHONPATH=src /work/venv/bin/python benchmarks/bench_signatures.py      # figures only
"""
from __future__ import annotations

import ipaddress
import os
import random
import sys
import time
from pathlib import Path

import pytest

from connscan.signatures import SignatureSet

SHARED_DATA = Path(os.environ.get(
    "CONNSCAN_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
FILES = ["c2/ipsum/ipsum.txt", "c2/firehol/firehol_level4.netset",
         "c2/spamhaus/drop-wsock-trace.txt", "c2/c2-tracker/2023-12-07/data/all.txt"]
BASELINE_SAMPLE = 20_000
MIN_RATIO = 1.5  # CPU-time gate; measured 1.8-2.6 under heavy load, ~3.6 (wall) when idle


def _paths() -> list[Path]:
    paths = [SHARED_DATA / name for name in FILES]
    if not all(path.is_file() for path in paths):
        pytest.skip(f"real data not available at {SHARED_DATA}")
    return paths


def _entries(paths: list[Path]) -> list[str]:
    """The address text of every entry (first field), by plain string processing."""
    entries = []
    for path in paths:
        for line in path.read_text().split("\n"):
            line = line.strip()
            if line and line[0] not in "#;":
                entries.append(line.split(";")[0].split("\t")[0].strip())
    return entries


def measure(rounds: int = 3) -> dict[str, float]:
    """Best of ``rounds`` for the loader and the baseline, interleaved.

    Both are single-threaded, so the ratio uses CPU time: on this shared machine the wall
    time of one depends on what the other helpers' jobs happen to do meanwhile.
    """
    paths = _paths()
    entries = _entries(paths)
    sample = random.Random(0).sample(entries, BASELINE_SAMPLE)
    load_wall = load_cpu = naive_cpu = float("inf")
    for _ in range(rounds):
        wall, cpu = time.perf_counter(), time.process_time()
        sigs = SignatureSet.load(paths)
        load_cpu = min(load_cpu, time.process_time() - cpu)
        load_wall = min(load_wall, time.perf_counter() - wall)
        cpu = time.process_time()
        for entry in sample:
            ipaddress.ip_network(entry, strict=False)
        naive_cpu = min(naive_cpu, time.process_time() - cpu)
    naive_cpu *= len(entries) / len(sample)
    return {
        "signatures": len(sigs),
        "load_wall_s": load_wall,
        "load_cpu_s": load_cpu,
        "load_sigs_per_cpu_s": len(sigs) / load_cpu,
        "ipaddress_cpu_s_scaled": naive_cpu,
        "ipaddress_sigs_per_cpu_s": len(entries) / naive_cpu,
        "ratio": naive_cpu / load_cpu,
    }


def test_load_270k_signatures(benchmark):
    paths = _paths()
    sigs = benchmark.pedantic(SignatureSet.load, args=(paths,), rounds=3, iterations=1)
    figures = measure(rounds=2)
    benchmark.extra_info.update(figures)
    print("\n" + "\n".join(f"  {key}: {value:,.3f}" for key, value in figures.items()))
    assert len(sigs) == figures["signatures"] == len(_entries(paths))
    assert figures["ratio"] >= MIN_RATIO, figures


if __name__ == "__main__":
    if not all((SHARED_DATA / name).is_file() for name in FILES):
        sys.exit(f"real data not available at {SHARED_DATA}")
    for key, value in measure().items():
        print(f"{key}: {value:,.3f}")
