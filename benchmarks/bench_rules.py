"""Evaluator throughput: the rules on a 1M-connection batch against the engine lookup floor.

The evaluator does one engine lookup per address column plus numpy masks, and builds Python
objects only for the flagged rows; so its time is compared, in the same run, with the bare
``engine.lookup`` of the same remote-address column (ratio, never absolute seconds).

    PYTHONPATH=src /work/venv/bin/python -m pytest benchmarks/bench_rules.py -s -p no:cacheprovider
"""
from __future__ import annotations

import os
import time

import numpy as np
import pyarrow as pa
import pytest

ROWS = int(os.environ.get("CONNSCAN_BENCH_RULE_ROWS", "1000000"))
HIT_RATE = 0.01  # planted C2 hits; another 0.5% go to port 4444


def _text(addresses: np.ndarray) -> pa.Array:
    a = addresses.astype(np.uint64)
    parts = [(a >> s) & 255 for s in (24, 16, 8, 0)]
    return pa.array([f"{w}.{x}.{y}.{z}" for w, x, y, z in zip(*(p.tolist() for p in parts))])


@pytest.fixture(scope="module")
def engine(c2_signatures, dbip_geo):
    from connscan.engine import Engine

    return Engine(c2_signatures, dbip_geo)


@pytest.fixture(scope="module")
def batch(c2_signatures) -> pa.Table:
    rng = np.random.default_rng(7)
    remote = rng.integers(0, 1 << 32, ROWS, dtype=np.uint64).astype(np.uint32)
    starts = c2_signatures.v4_ranges()[0]
    hits = rng.random(ROWS) < HIT_RATE
    remote[hits] = rng.choice(starts, int(hits.sum()))
    rport = rng.choice(np.array([443, 80, 53, 8443], np.int32), ROWS)
    rport[rng.random(ROWS) < 0.005] = 4444
    return pa.table({
        "lip": pa.array(["10.1.2.3"] * ROWS), "lport": pa.array(rng.integers(1024, 65535, ROWS, dtype=np.int32)),
        "rip": _text(remote), "rport": pa.array(rport), "proto": pa.array(["tcp"] * ROWS),
        "direction": pa.array(["outbound"] * ROWS), "check_local": pa.array(np.zeros(ROWS, bool)),
    })


def _best(fn, rounds=3) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(rounds):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def test_evaluator_vs_lookup_floor(benchmark, engine, batch):
    from connscan.rules import Evaluator, RuleConfig

    evaluator = Evaluator(engine, RuleConfig(), hostname="bench")
    lookup_s, _ = _best(lambda: engine.lookup(batch.column("rip")))
    evaluate_s, findings = _best(lambda: evaluator.evaluate(batch))
    benchmark.pedantic(evaluator.evaluate, args=(batch,), rounds=1, iterations=1)
    ratio = evaluate_s / lookup_s
    info = {
        "rows": ROWS, "findings": len(findings),
        "lookup_rows_per_s": ROWS / lookup_s, "evaluate_rows_per_s": ROWS / evaluate_s,
        "findings_per_s": len(findings) / max(evaluate_s - lookup_s, 1e-9), "evaluate_over_lookup": ratio,
    }
    benchmark.extra_info.update(info)
    print(f"\nrules: {ROWS} rows, {len(findings)} findings; lookup {ROWS / lookup_s / 1e6:.2f} M rows/s, "
          f"evaluate {ROWS / evaluate_s / 1e6:.2f} M rows/s; evaluate/lookup = {ratio:.2f}")
    assert len(findings) >= HIT_RATE * ROWS * 0.9  # the planted hits were found
    # Everything beyond the lookup (masks, ~1.5% findings as objects) costs at most 4x the lookup.
    assert ratio <= 5.0
