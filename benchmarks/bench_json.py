"""JSON flow logs: the native path (pyarrow parses each block) against the line-by-line path
(json.loads per line) of the same reader, in the same run.

Run: PYTHONPATH=src /work/venv/bin/python -m pytest benchmarks/bench_json.py -p no:cacheprovider -s

Data: generated Suricata eve.json flow events and Zeek conn.log JSON records (random
addresses and ports, the fields Suricata and Zeek write), CONNSCAN_BENCH_JSON_ROWS of each
(default 200,000: about 95 MB of eve.json and 85 MB of conn.log JSON). Each test reads the
file to contract batches ROUNDS times both ways, interleaved, and compares the best of each.
Gate: the native path is at least 2x faster (4.6x-5.7x measured here, and 3.8x-4.7x for the
whole `connscan flows` run of 1M rows, in the README).
"""
from __future__ import annotations

import json
import os
import random
import time

import pytest

from connscan.sources import ReaderOptions, jsonlines, open_source

ROWS = int(os.environ.get("CONNSCAN_BENCH_JSON_ROWS", "200000"))
ROUNDS = 3
MIN_SPEEDUP = 2.0


def _address(rng: random.Random, private: bool) -> str:
    return f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}" if private else \
        f"{rng.randrange(11, 223)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"


def _suricata(rng: random.Random, i: int) -> dict:
    return {"timestamp": "2024-03-01T12:00:00.123456+0000", "flow_id": rng.getrandbits(50), "in_iface": "eth0",
            "event_type": "flow", "src_ip": _address(rng, True), "src_port": rng.randrange(1024, 65536),
            "dest_ip": _address(rng, False), "dest_port": 443, "proto": "TCP", "app_proto": "tls",
            "flow": {"pkts_toserver": 5, "pkts_toclient": 4, "bytes_toserver": 500, "bytes_toclient": 4000,
                     "start": "2024-03-01T11:59:58.000000+0000", "end": "2024-03-01T12:00:00.000000+0000",
                     "age": 2, "state": "closed", "reason": "timeout", "alerted": False}}


def _zeek(rng: random.Random, i: int) -> dict:
    return {"ts": 1709294398.123456 + i, "uid": "CHhAvVGS1DHFjwGM9", "id.orig_h": _address(rng, True),
            "id.orig_p": rng.randrange(1024, 65536), "id.resp_h": _address(rng, False), "id.resp_p": 443, "proto": "tcp",
            "service": "ssl", "duration": 0.5, "orig_bytes": 100, "resp_bytes": 2000, "conn_state": "SF", "local_orig": True,
            "local_resp": False, "missed_bytes": 0, "history": "ShADadFf", "orig_pkts": 5, "orig_ip_bytes": 400,
            "resp_pkts": 4, "resp_ip_bytes": 2200}


def _read(path, fmt) -> tuple[float, int]:
    start = time.perf_counter()
    source = open_source(path, fmt, ReaderOptions())
    rows = sum(batch.num_rows for batch in source.batches())
    return time.perf_counter() - start, rows


@pytest.mark.parametrize("fmt, record", [("suricata-eve", _suricata), ("zeek-json", _zeek)])
def test_native_json_path_vs_line_by_line(benchmark, tmp_path, monkeypatch, fmt, record):
    rng = random.Random(2026)
    path = tmp_path / "flows.json"
    with open(path, "w") as out:
        for i in range(ROWS):
            out.write(json.dumps(record(rng, i)) + "\n")
    line_by_line, times = [], []

    def baseline():
        with monkeypatch.context() as patch:
            patch.setattr(jsonlines, "_native_table", lambda block, schema: None)
            line_by_line.append(_read(path, fmt)[0])

    def native():
        seconds, rows = _read(path, fmt)
        assert rows == ROWS
        times.append(seconds)

    benchmark.pedantic(native, setup=baseline, rounds=ROUNDS, iterations=1)
    fast, slow = min(times), min(line_by_line)
    mb = path.stat().st_size / 1e6
    print(f"\n{fmt}: {ROWS} records ({mb:.0f} MB): native {fast:.2f} s = {ROWS / fast / 1e6:.2f} M records/s, {mb / fast:.0f} MB/s; "
          f"line by line {slow:.2f} s; speed-up {slow / fast:.1f}x")
    benchmark.extra_info.update({"rows": ROWS, "native_s": round(fast, 3), "line_by_line_s": round(slow, 3),
                                 "speedup": round(slow / fast, 2)})
    assert slow >= MIN_SPEEDUP * fast
