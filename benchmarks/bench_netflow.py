"""NetFlow v9 decoding speed against per-record decoding with struct, in the same run.

Run: PYTHONPATH=src /work/venv/bin/python -m pytest benchmarks/bench_netflow.py -p no:cacheprovider -s

Data: a generated pcap (Ethernet/IPv4/UDP) of NetFlow v9 export packets, 24 IPv4 flow
records each, the template repeated every 100 packets; CONNSCAN_BENCH_NETFLOW_PACKETS
packets (default 10,000: 240,000 flows, 7.8 MB). Baselines timed in the same test, best of
rounds: (1) walking the capture's UDP payloads only (the floor: no decoding at all), and
(2) decoding each record with struct.unpack_from into Python lists and one Arrow batch per
64k flows (what a straightforward pure-Python reader does). Gate: the reader is at least
2x faster than (2); the ratio to (1) is reported.
"""
from __future__ import annotations

import io
import ipaddress
import os
import random
import struct
import time

import pyarrow as pa
import pytest

from connscan.sources import netflow

PACKETS = int(os.environ.get("CONNSCAN_BENCH_NETFLOW_PACKETS", "10000"))
RECORDS = 24
FIELDS = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (22, 4), (21, 4), (1, 4), (2, 4)]
RECORD = struct.Struct(">4s4sHHBIIII")


def v9_capture(packets: int) -> bytes:
    rng = random.Random(5)
    template = struct.pack(">HH", 256, len(FIELDS)) + b"".join(struct.pack(">HH", *f) for f in FIELDS)
    template_set = struct.pack(">HH", 0, 4 + len(template)) + template
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i in range(packets):
        records = b"".join(
            RECORD.pack(rng.getrandbits(32).to_bytes(4, "big"), rng.getrandbits(32).to_bytes(4, "big"),
                        rng.randrange(65536), rng.choice((53, 80, 443)), rng.choice((6, 17)),
                        i * 10, i * 10 + 5, 1500, 3)
            for _ in range(RECORDS))
        body = struct.pack(">HH", 256, 4 + len(records)) + records
        if i % 100 == 0:
            body = template_set + body
        payload = struct.pack(">HHIIII", 9, RECORDS, 10_000_000, 1_700_000_000 + i, i, 0) + body
        udp = struct.pack(">HHHH", 2055, 9995, 8 + len(payload), 0) + payload
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                         bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2])) + udp
        frame = bytes(12) + b"\x08\x00" + ip
        out.append(struct.pack("<IIII", 1_700_000_000 + i, 0, len(frame), len(frame)) + frame)
    return b"".join(out)


def framing_only(data: bytes) -> int:
    account = netflow._FileCursor("bench", netflow.FileAccount("bench"))
    return sum(len(payload) for _, payload in netflow._payloads(io.BytesIO(data), account))


def struct_reader(data: bytes) -> int:
    """Per-record decoding: the template is known to be FIELDS (a pure-Python baseline)."""
    account = netflow._FileCursor("bench", netflow.FileAccount("bench"))
    columns = {name: [] for name in ("src", "dst", "sport", "dport", "proto", "start")}
    rows = 0
    for _, payload in netflow._payloads(io.BytesIO(data), account):
        _, _, uptime, secs, _, _ = struct.unpack_from(">HHIIII", payload)
        position = 20
        while position + 4 <= len(payload):
            set_id, length = struct.unpack_from(">HH", payload, position)
            if set_id == 256:
                for offset in range(position + 4, position + length - RECORD.size + 1, RECORD.size):
                    src, dst, sport, dport, proto, first, _, _, _ = RECORD.unpack_from(payload, offset)
                    columns["src"].append(str(ipaddress.IPv4Address(src)))
                    columns["dst"].append(str(ipaddress.IPv4Address(dst)))
                    columns["sport"].append(sport)
                    columns["dport"].append(dport)
                    columns["proto"].append(proto)
                    columns["start"].append((secs * 1000 - (uptime - first)) * 1000)
            position += length
        if len(columns["src"]) >= 65536:
            rows += pa.table(columns).num_rows
            columns = {name: [] for name in columns}
    return rows + pa.table(columns).num_rows


def connscan_reader(data: bytes) -> int:
    return sum(batch.num_rows for batch in netflow.read_netflow(io.BytesIO(data), "bench"))


def best_seconds(fn, data, rounds: int = 3) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn(data)
        best = min(best, time.perf_counter() - start)
    return best


@pytest.fixture(scope="module")
def capture():
    return v9_capture(PACKETS)


def test_v9_decoding_speed(benchmark, capture):
    flows = PACKETS * RECORDS
    assert connscan_reader(capture) == struct_reader(capture) == flows
    framing = best_seconds(framing_only, capture)
    naive = best_seconds(struct_reader, capture, rounds=2)
    ours = benchmark.pedantic(connscan_reader, args=(capture,), rounds=3, iterations=1)
    assert ours == flows
    seconds = benchmark.stats.stats.min
    megabytes = len(capture) / 1e6
    benchmark.extra_info.update({
        "flows": flows, "megabytes": round(megabytes, 1),
        "connscan_flows_per_s": round(flows / seconds), "struct_flows_per_s": round(flows / naive),
        "speedup_vs_struct": round(naive / seconds, 2), "time_vs_framing_only": round(seconds / framing, 2),
    })
    print(f"\nNetFlow v9, {flows:,} flows, {megabytes:.1f} MB: connscan {flows / seconds / 1e6:.2f} M flows/s "
          f"({megabytes / seconds:.0f} MB/s), per-record struct {flows / naive / 1e6:.2f} M flows/s "
          f"-> {naive / seconds:.1f}x; framing alone {framing:.2f} s, decoding total {seconds:.2f} s "
          f"({seconds / framing:.1f}x)")
    assert naive / seconds >= 2.0
