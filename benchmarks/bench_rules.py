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
    """Clean traffic (no rule fires): the rules cost at most 3x the bare engine lookup."""
    from connscan.rules import Evaluator, RuleConfig

    hits = engine.lookup(batch.column("rip")).signature >= 0
    clean = batch.filter(pa.array(~hits))
    clean = clean.set_column(clean.schema.get_field_index("rport"), "rport",
                             pa.array(np.full(clean.num_rows, 443, np.int32)))
    evaluator = Evaluator(engine, RuleConfig(relevant_countries=()), hostname="bench")
    lookup_s, _ = _best(lambda: engine.lookup(clean.column("rip")))
    evaluate_s, findings = _best(lambda: evaluator.evaluate(clean))
    benchmark.pedantic(evaluator.evaluate, args=(clean,), rounds=1, iterations=1)
    ratio = evaluate_s / lookup_s
    rows = clean.num_rows
    benchmark.extra_info.update({"rows": rows, "lookup_rows_per_s": rows / lookup_s,
                                 "evaluate_rows_per_s": rows / evaluate_s, "evaluate_over_lookup": ratio})
    print(f"\nrules, clean traffic: {rows} rows; lookup {rows / lookup_s / 1e6:.2f} M rows/s, "
          f"evaluate {rows / evaluate_s / 1e6:.2f} M rows/s; evaluate/lookup = {ratio:.2f}")
    assert findings == []
    assert ratio <= 3.0


def test_evaluator_with_findings(benchmark, engine, batch):
    """1% planted C2 hits, 0.5% port 4444, default relevant countries: cost per finding (reported)."""
    from connscan.rules import Evaluator, RuleConfig

    evaluator = Evaluator(engine, RuleConfig(), hostname="bench")
    lookup_s, _ = _best(lambda: engine.lookup(batch.column("rip")))
    first_s, findings = _best(lambda: Evaluator(engine, RuleConfig(), hostname="bench").evaluate(batch), rounds=1)
    evaluate_s, findings = _best(lambda: evaluator.evaluate(batch))
    benchmark.pedantic(evaluator.evaluate, args=(batch,), rounds=1, iterations=1)
    per_finding_us = max(evaluate_s - lookup_s, 0) / len(findings) * 1e6
    benchmark.extra_info.update({"rows": ROWS, "findings": len(findings), "evaluate_rows_per_s": ROWS / evaluate_s,
                                 "first_run_s": first_s, "us_per_finding": per_finding_us})
    print(f"\nrules with findings: {ROWS} rows, {len(findings)} findings; evaluate {ROWS / evaluate_s / 1e6:.2f} "
          f"M rows/s (first run, cold caches: {first_s:.2f} s); lookup {ROWS / lookup_s / 1e6:.2f} M rows/s; "
          f"~{per_finding_us:.1f} us per finding")
    assert len(findings) >= HIT_RATE * ROWS * 0.9  # the planted hits were found
