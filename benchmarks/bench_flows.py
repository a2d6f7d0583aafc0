"""Flow scan speed: `connscan flows` on a generated nfdump CSV and Zeek conn.log.

Run (full size, 5,000,000 rows, about 850 MB per file, in a temp dir deleted afterwards):
    PYTHONPATH=src /work/venv/bin/python -m pytest benchmarks/bench_flows.py -s -p no:cacheprovider
CI scales down with CONNSCAN_BENCH_FLOW_ROWS (e.g. 200000).

Signatures: ipsum + FireHOL level4 + Spamhaus DROP + C2-Tracker all.txt (about 270k) and
DB-IP (embedded). Random public and private addresses, 1% of the flows with a planted C2
endpoint. Baseline in the same run: ``pyarrow.csv.read_csv`` reading only the address,
port and protocol columns as strings (multithreaded). ROUNDS rounds of two reads and a scan
interleaved, best of each compared; gates on same-run ratios only.
The scan writes JSON Lines as `connscan flows` does: from the evaluator's columns
(FlowFindings, FindingWriter.write_flow_findings), no Finding object per row.
The issue's target, the whole scan with findings written in at most 1.5x that read,
depends on the machine and on pyarrow's version (README, "How it works, and how fast"): on machine A it
is met for nfdump (1.2x-1.5x at 5M rows; 1.57x in 1 of 18 runs) and NOT for Zeek
(1.95x-2.4x: pyarrow reads the smaller Zeek file faster; the scan's cost is mostly per
row and per finding, about the same for both formats); on machine B, where everything is
slower and pyarrow's read more so, it is met for both in every run (Zeek 1.24x-1.42x
against pyarrow 22.0.0, 1.02x-1.09x against 26.0.1, whose read_csv is slower). The
pipeline with rules that flag nothing is 0.5x-0.9x. The report names the pyarrow version
and CPU. On a shared machine pyarrow's read is now and then much slower for a whole test
(all rounds), which flatters the ratio: compare the printed read time with its usual value. Each test
prints whether the target is met; the gates are regression guards at the level reached
(NFDUMP_GUARD, ZEEK_GUARD, QUIET_GUARD). Peak memory of a separate ``connscan flows``
process (signatures and DB-IP included; sampled with psutil) must stay under 500 MB.
"""
from __future__ import annotations

import gc
import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pytest

ROWS = int(os.environ.get("CONNSCAN_BENCH_FLOW_ROWS", "5000000"))
TARGET_RATIO = 1.5  # issue 4: the scan with findings written vs the pyarrow read
ROUNDS = 5  # scans and reads, interleaved; the best of each is compared (the machine is noisy)
# Regression guards (scan/read), with a margin for shared machines over the levels reached
# (see the docstring): CI runs at 1M rows, where fixed costs weigh more than at 5M.
NFDUMP_GUARD, ZEEK_GUARD, QUIET_GUARD = 4.0, 6.0, 2.0
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
C2 = SHARED / "c2"
SIGNATURE_FILES = [
    C2 / "ipsum" / "ipsum.txt",
    C2 / "firehol" / "firehol_level4.netset",
    C2 / "spamhaus" / "drop-wsock-trace.txt",
    C2 / "c2-tracker" / "2023-12-07" / "data" / "all.txt",
]
CHUNK = 500_000
NFDUMP_HEADER = (
    "ts,te,td,sa,da,sp,dp,pr,flg,fwd,stos,ipkt,ibyt,opkt,obyt,in,out,sas,das,smk,dmk,dtos,dir,nh,nhb,"
    "svln,dvln,ismc,odmc,idmc,osmc,mpls1,mpls2,mpls3,mpls4,mpls5,mpls6,mpls7,mpls8,mpls9,mpls10,cl,sl,al,ra,eng,exid,tr\n"
)
NFDUMP_TAIL = "........," + ",".join(["0"] * 39) + "\n"  # the 40 columns after pr


def _ipv4_text(values: np.ndarray) -> pa.Array:
    octets = [pc.cast(pa.array((values >> shift) & 255), pa.string()) for shift in (24, 16, 8, 0)]
    return pc.binary_join_element_wise(*octets, ".")


def _addresses(rng, n: int, planted: np.ndarray) -> pa.Array:
    """Half private (10/8, 192.168/16), half random public IPv4; 1% planted C2 addresses."""
    public = rng.integers(0x0B000000, 0xDF000000, n, dtype=np.uint64)
    private = np.where(rng.random(n) < 0.7, 0x0A000000 + rng.integers(0, 1 << 24, n, dtype=np.uint64), 0xC0A80000 + rng.integers(0, 1 << 16, n, dtype=np.uint64))
    values = np.where(rng.random(n) < 0.5, private, public)
    hits = rng.random(n) < 0.005  # each side: about 1% of the flows have a planted endpoint
    values[hits] = planted[rng.integers(0, len(planted), int(hits.sum()))]
    return _ipv4_text(values)


def generate(directory: Path, rows: int, planted: np.ndarray) -> tuple[Path, Path]:
    """The nfdump CSV (with Summary footer) and the Zeek conn.log of the same random flows."""
    rng = np.random.default_rng(2026)
    nfdump, zeek = directory / "flows.csv", directory / "conn.log"
    with open(nfdump, "wb") as nf, open(zeek, "wb") as zk:
        nf.write(NFDUMP_HEADER.encode())
        zk.write(
            b"#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tconn\n#open\t2026-01-01-00-00-00\n"
            b"#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tservice\tduration\torig_bytes\tresp_bytes\tconn_state\n"
            b"#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tstring\tinterval\tcount\tcount\tstring\n"
        )
        for offset in range(0, rows, CHUNK):
            n = min(CHUNK, rows - offset)
            src, dst = _addresses(rng, n, planted), _addresses(rng, n, planted)
            sport = pc.cast(pa.array(rng.integers(1024, 65536, n)), pa.string())
            dport = pc.cast(pa.array(rng.choice([53, 80, 123, 443, 993, 8080], n)), pa.string())
            seconds = 1_767_225_600 + offset + np.arange(n)
            stamp = pc.strftime(pa.array(seconds * 1_000_000, pa.timestamp("us")), "%Y-%m-%d %H:%M:%S")
            udp = rng.random(n) < 0.3
            proto_nf = pa.array(np.where(udp, "UDP", "TCP"))
            line = pc.binary_join_element_wise(stamp, stamp, pa.scalar("0.000"), src, dst, sport, dport, proto_nf, pa.scalar(NFDUMP_TAIL), ",")
            nf.write(_text(line))
            epoch = pc.cast(pa.array(seconds), pa.string())
            proto_zk = pa.array(np.where(udp, "udp", "tcp"))
            line = pc.binary_join_element_wise(
                pc.binary_join_element_wise(epoch, pa.scalar("123456"), "."), pa.scalar("CHhAvVGS1DHFjwGM9"), src, sport, dst, dport, proto_zk,
                pa.scalar("-"), pa.scalar("0.1"), pa.scalar("100"), pa.scalar("200"), pa.scalar("SF\n"), "\t",
            )
            zk.write(_text(line))
        nf.write(f"Summary\nflows,bytes,packets,avg_bps,avg_pps,avg_bpp\n{rows},0,0,0,0,0\n".encode())
        zk.write(b"#close\t2026-01-01-01-00-00\n")
    return nfdump, zeek


def _text(lines: pa.Array) -> memoryview:
    """The concatenated values of a string array without nulls (its data buffer slice)."""
    offsets = np.frombuffer(lines.buffers()[1], np.int32, len(lines) + 1, lines.offset * 4)
    return memoryview(lines.buffers()[2])[offsets[0] : offsets[-1]]


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    missing = [p for p in SIGNATURE_FILES if not p.exists()]
    if missing:
        pytest.skip(f"real signature data not available: {missing[0]}")
    from connscan.engine import Engine
    from connscan.geoip import GeoTable
    from connscan.signatures import SignatureSet

    start = time.perf_counter()
    signatures = SignatureSet.load([str(p) for p in SIGNATURE_FILES], strict=False)
    engine = Engine(signatures, GeoTable.open())
    build_s = time.perf_counter() - start
    # every 1000th IPv4 network signature gives a planted C2 address
    planted = np.array([int(ipaddress.ip_network(s.network).network_address) for s in list(signatures)[::1000]
                        if "-" not in s.network and ":" not in s.network], np.uint64)
    directory = tmp_path_factory.mktemp("flows-bench")
    start = time.perf_counter()
    nfdump, zeek = generate(directory, ROWS, planted)
    os.sync()  # the files' write-back would otherwise run during the first measurements
    print(f"\n{len(signatures)} signatures + DB-IP compiled in {build_s:.1f} s; generated {ROWS} rows in {time.perf_counter() - start:.1f} s "
          f"({nfdump.stat().st_size / 1e6:.0f} MB nfdump CSV, {zeek.stat().st_size / 1e6:.0f} MB Zeek conn.log)\n"
          f"baseline: pyarrow {pa.__version__} on {_cpu_model()}, {os.cpu_count()} cores")
    yield engine, nfdump, zeek, signatures
    for path in (nfdump, zeek):
        path.unlink()


def _cpu_model() -> str:
    """The CPU's model name (Linux), for the report: ratios differ between machines."""
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def _pyarrow_read(path: Path, columns: list[str], **parse) -> float:
    parse = dict(parse)  # called twice with the same options
    start = time.perf_counter()
    table = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(**parse.pop("read", {})),
        parse_options=pacsv.ParseOptions(invalid_row_handler=lambda row: "skip", **parse),
        convert_options=pacsv.ConvertOptions(include_columns=columns, column_types={c: pa.string() for c in columns}),
    )
    seconds = time.perf_counter() - start
    assert table.num_rows == ROWS
    return seconds


def _scan(engine, path: Path, out: Path) -> tuple[float, int, int]:
    from connscan.flows import home_engine_for, scan_paths
    from connscan.output import FindingWriter
    from connscan.rules import Evaluator
    from connscan.sources import ReaderOptions

    evaluator = Evaluator(engine, hostname="bench")
    home = home_engine_for()
    gc.freeze()  # as `connscan flows` does: the signatures are long-lived objects
    out.unlink(missing_ok=True)  # every round writes a new file, as the first one does
    start = time.perf_counter()
    with open(out, "w") as handle:
        writer = FindingWriter(handle, "jsonl")
        # As `connscan flows` writes JSON Lines: findings rendered from columns, no object per row.
        run = scan_paths([str(path)], evaluator, home, options=ReaderOptions(tz="UTC"),
                         on_findings=writer.write_flow_findings, columnar=True)
    seconds = time.perf_counter() - start
    assert run.stats.records_scanned == ROWS and not run.files[0].errors
    return seconds, run.stats.records_scanned, writer.written


def _cli_peak(path: Path, out: Path) -> tuple[float, float]:
    """Wall time and peak RSS (MB, sampled every 20 ms) of a separate `connscan flows` process.

    Sampled with psutil rather than getrusage(RUSAGE_CHILDREN): the child's maxrss would
    include this (large) benchmark process at the moment it forks.
    """
    import psutil

    args = [sys.executable, "-m", "connscan", "flows", "--format", "jsonl", "--output", str(out), "--tz", "UTC", "--progress", "never"]
    for p in SIGNATURE_FILES:
        args += ["--iocs", str(p)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))  # the same connscan as this process
    start = time.perf_counter()
    proc = subprocess.Popen(args + [str(path)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watched = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    stderr = proc.stderr.read()
    assert proc.returncode in (0, 1), stderr
    return seconds, peak / 2**20


def _report(name, seconds, baseline, rows, size, found, peak=None):
    print(f"{name}: scan {seconds:.2f} s = {rows / seconds / 1e6:.2f} M rows/s, {size / seconds / 1e6:.0f} MB/s, "
          f"{found} findings written; pyarrow read_csv (5 columns as strings) {baseline:.2f} s "
          f"= {rows / baseline / 1e6:.2f} M rows/s; ratio scan/read {seconds / baseline:.2f} "
          f"(target {TARGET_RATIO}x {'met' if seconds <= TARGET_RATIO * baseline else 'NOT met'})")


def _scan_vs_read(benchmark, engine, path: Path, out: Path, read) -> tuple[float, float, int, int]:
    """Best of ROUNDS scans and best of ROUNDS pyarrow reads, interleaved (each scan runs
    right after a read), so that both sides see the same machine: (scan s, read s, rows,
    findings written)."""
    reads, scans = [], []

    def scan():
        seconds, rows, found = _scan(engine, path, out)
        scans.append(seconds)
        return rows, found

    rows, found = benchmark.pedantic(scan, setup=lambda: reads.extend(_reads_twice(read)), rounds=ROUNDS, iterations=1)
    return min(scans), min(reads), rows, found


def _reads_twice(read) -> tuple[float, float]:
    """Two pyarrow reads in a row: the first after a scan is sometimes much slower (its
    allocator faults its memory in again), the second shows what pyarrow can do."""
    return read(), read()


def test_nfdump_scan_vs_pyarrow_read(benchmark, workload, tmp_path):
    engine, nfdump, _, _ = workload
    seconds, baseline, rows, found = _scan_vs_read(benchmark, engine, nfdump, tmp_path / "out.jsonl",
                                                   lambda: _pyarrow_read(nfdump, ["sa", "da", "sp", "dp", "pr"]))
    _report("nfdump CSV", seconds, baseline, rows, nfdump.stat().st_size, found)
    cli_seconds, peak_mb = _cli_peak(nfdump, tmp_path / "cli.jsonl")
    print(f"connscan flows process (loads 270k signatures too): {cli_seconds:.1f} s wall, peak RSS {peak_mb:.0f} MB")
    benchmark.extra_info.update({"rows": rows, "findings": found, "scan_s": round(seconds, 3), "pyarrow_read_s": round(baseline, 3),
                                 "ratio": round(seconds / baseline, 2), "pyarrow": pa.__version__, "peak_rss_mb": round(peak_mb), "cli_s": round(cli_seconds, 1)})
    assert found > rows // 200  # the planted hits were found
    assert seconds <= NFDUMP_GUARD * baseline  # regression guard; the 1.5x target is not met on every run
    assert peak_mb < 500


def test_zeek_scan_vs_pyarrow_read(benchmark, workload, tmp_path):
    engine, _, zeek, _ = workload
    columns = ["id.orig_h", "id.resp_h", "id.orig_p", "id.resp_p", "proto"]
    names = ["ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "service", "duration", "orig_bytes", "resp_bytes", "conn_state"]
    parse = {"delimiter": "\t", "quote_char": False, "read": {"skip_rows": 8, "column_names": names}}
    seconds, baseline, rows, found = _scan_vs_read(benchmark, engine, zeek, tmp_path / "out.jsonl",
                                                   lambda: _pyarrow_read(zeek, columns, **parse))
    _report("Zeek conn.log", seconds, baseline, rows, zeek.stat().st_size, found)
    benchmark.extra_info.update({"rows": rows, "findings": found, "scan_s": round(seconds, 3), "pyarrow_read_s": round(baseline, 3),
                                 "ratio": round(seconds / baseline, 2), "pyarrow": pa.__version__})
    assert found > rows // 200
    assert seconds <= ZEEK_GUARD * baseline  # regression guard; the 1.5x target is not met


def test_nfdump_pipeline_without_findings(benchmark, workload, tmp_path):
    """Diagnostic: read + evaluate with rules that flag nothing (no per-finding work), to
    separate the pipeline's own cost from the cost of building and writing findings."""
    from connscan.engine import Engine
    from connscan.signatures import SignatureSet

    _, nfdump, _, _ = workload
    quiet = Engine(SignatureSet.from_networks(["192.0.2.1"]), None)
    reads, scans = [], []

    def scan():
        from connscan.flows import home_engine_for, scan_paths
        from connscan.rules import Evaluator, RuleConfig
        from connscan.sources import ReaderOptions

        evaluator = Evaluator(quiet, RuleConfig(relevant_countries=(), suspicious_ports={}), hostname="bench")
        start = time.perf_counter()
        run = scan_paths([str(nfdump)], evaluator, home_engine_for(), options=ReaderOptions(tz="UTC"))
        assert run.stats.records_scanned == ROWS
        scans.append(time.perf_counter() - start)

    benchmark.pedantic(scan, setup=lambda: reads.extend(_reads_twice(lambda: _pyarrow_read(nfdump, ["sa", "da", "sp", "dp", "pr"]))),
                       rounds=ROUNDS, iterations=1)
    seconds, baseline = min(scans), min(reads)
    print(f"nfdump CSV, no findings: scan {seconds:.2f} s = {ROWS / seconds / 1e6:.2f} M rows/s; "
          f"pyarrow read {baseline:.2f} s; ratio {seconds / baseline:.2f}")
    benchmark.extra_info.update({"scan_s": round(seconds, 3), "pyarrow_read_s": round(baseline, 3), "ratio": round(seconds / baseline, 2), "pyarrow": pa.__version__})
    assert seconds <= QUIET_GUARD * baseline  # regression guard for the pipeline itself
