"""Live collection at scale: connscan vs psutil.net_connections() on the same sockets, same run.

The benchmark opens CONNSCAN_BENCH_SOCKETS established loopback TCP connections (default
200000, i.e. 400000 sockets: both ends are on this host) in child processes, each holding
at most a few thousand connections on its own 127.0.x.y listener (the open-file limit and
the ephemeral port range bound one process and one source address). Every connection is
closed (RST, so no TIME_WAIT is left behind) when the module's tests end.

    PYTHONPATH=src /work/venv/bin/python -m pytest benchmarks/bench_live.py -s
    PYTHONPATH=src /work/venv/bin/python benchmarks/bench_live.py      # figures only

The full size takes about 3-5 minutes here (psutil alone needs 25-50 s per round). CI can
use CONNSCAN_BENCH_SOCKETS=20000 (about 20 s): the 4x assertion applies from 200000
connections, below that the collection must still beat psutil.
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from connscan import live

SOCKETS = int(os.environ.get("CONNSCAN_BENCH_SOCKETS", "200000"))
# Issue 3's target: the whole scan at least 4x faster than psutil alone (override on a
# loaded machine, e.g. CONNSCAN_BENCH_MIN_RATIO=3).
MIN_RATIO = float(os.environ.get("CONNSCAN_BENCH_MIN_RATIO", "4.0"))
TARGET_SOCKETS = 200000  # the scale the target is set for

# One child: a listener on its own loopback address, `count` clients connected to it, all
# accepted; "ready" on stdout, then it holds them until its stdin closes.
_WORKER = r"""
import resource, socket, struct, sys
host, count = sys.argv[1], int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
linger = struct.pack("ii", 1, 0)  # close with RST: no TIME_WAIT left behind
listener = socket.socket()
listener.bind((host, 0))
listener.listen(4096)
held = []
while len(held) < 2 * count:
    batch = min(1000, count - len(held) // 2)
    for _ in range(batch):
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        client.bind((host, 0))
        client.connect(listener.getsockname())
        held.append(client)
    for _ in range(batch):
        server, _ = listener.accept()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        held.append(server)
print("ready", flush=True)
sys.stdin.read()
"""


def _per_worker() -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    limit = hard if hard != resource.RLIM_INFINITY else 1 << 20
    # Two fds per connection, some spare; one source address has ~28k ephemeral ports.
    return max(1, min((limit - 64) // 2, 20000))


@contextmanager
def loopback_connections(total: int):
    """Hold `total` established loopback TCP connections (2 * total sockets) in child processes."""
    per = _per_worker()
    workers = []
    try:
        for k, start in enumerate(range(0, total, per)):
            host = f"127.0.{1 + k // 250}.{1 + k % 250}"
            workers.append(subprocess.Popen(
                [sys.executable, "-c", _WORKER, host, str(min(per, total - start))],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            ))
        for worker in workers:
            line = worker.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"connection worker {worker.pid} failed (exit {worker.poll()})")
        yield [w.pid for w in workers]
    finally:
        for worker in workers:
            worker.stdin.close()
        for worker in workers:
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


def _timed(fn):
    start, cpu = time.perf_counter(), _cpu()
    result = fn()
    return time.perf_counter() - start, _cpu() - cpu, result


def _scan_to_jsonl(path: str):
    """The whole `connscan scan` (collect, evaluate, write JSON Lines) once it exists."""
    try:
        from connscan import cli
    except ImportError:
        return None
    return cli.main(["scan", "--include-loopback", "--format", "jsonl", "--output", path])


def measure(rounds: int = 1) -> dict:
    """Best-of-`rounds` wall (and CPU) seconds of psutil, collect() and the full scan."""
    figures: dict = {"connections": SOCKETS}
    best: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "findings.jsonl")
        for _ in range(rounds):
            runs = {
                "psutil": lambda: psutil.net_connections(kind="inet"),
                "collect": lambda: live.collect(include_loopback=True),
                "scan": lambda: _scan_to_jsonl(out),
            }
            for name, fn in runs.items():
                seconds, cpu, result = _timed(fn)
                if result is None:
                    continue  # no CLI yet
                if name not in best or seconds < best[name][0]:
                    best[name] = (seconds, cpu)
                if name == "collect":
                    figures["sockets"] = result.records_read
                    figures["implementation"] = result.implementation
                    figures["batch_bytes_per_socket"] = round(result.batch.nbytes / result.records_read, 1)
                del result
    n = figures["sockets"]
    for name, (seconds, cpu) in best.items():
        figures[f"{name}_s"] = round(seconds, 3)
        figures[f"{name}_cpu_s"] = round(cpu, 3)
        figures[f"{name}_sockets_per_s"] = round(n / seconds)
    for name in ("collect", "scan"):
        if name in best:
            figures[f"ratio_{name}"] = round(best["psutil"][0] / best[name][0], 2)
    figures["load_average_1min"] = round(os.getloadavg()[0], 1)
    return figures


@pytest.fixture(scope="module")
def connections():
    if not sys.platform.startswith("linux"):
        pytest.skip("the connection opener needs Linux loopback addresses 127.0.x.y")
    with loopback_connections(SOCKETS) as pids:
        yield pids


_best: dict[str, float] = {}  # fastest round of each path in this run, for the ratio


def _bench(benchmark, name, fn, rounds=2):
    result = benchmark.pedantic(fn, rounds=rounds, iterations=1)
    _best[name] = benchmark.stats.stats.min
    return result


def test_psutil_net_connections(connections, benchmark):
    conns = _bench(benchmark, "psutil", lambda: psutil.net_connections(kind="inet"))
    assert len(conns) >= 2 * SOCKETS


def test_connscan_collect(connections, benchmark):
    snapshot = _bench(benchmark, "collect", lambda: live.collect(include_loopback=True))
    assert snapshot.records_read >= 2 * SOCKETS  # both ends of every connection were seen
    benchmark.extra_info["sockets"] = snapshot.records_read
    benchmark.extra_info["implementation"] = snapshot.implementation
    benchmark.extra_info["batch_bytes_per_socket"] = round(snapshot.batch.nbytes / snapshot.records_read, 1)


def test_connscan_scan_jsonl(connections, benchmark, tmp_path):
    pytest.importorskip("connscan.cli")
    code = _bench(benchmark, "scan", lambda: _scan_to_jsonl(str(tmp_path / "findings.jsonl")))
    assert code == 0  # no signatures configured: nothing at or above the failing level


def test_ratio_against_psutil():
    if "psutil" not in _best or not {"collect", "scan"} & _best.keys():
        pytest.skip("run the whole module: the ratio needs psutil and connscan timed in this run")
    ratios = {name: _best["psutil"] / _best[name] for name in ("collect", "scan") if name in _best}
    sockets_per_s = {name: round(2 * SOCKETS / _best[name]) for name in ("psutil", "collect", "scan") if name in _best}
    print(f"\nlive, {SOCKETS} connections: sockets/s {sockets_per_s}; x psutil {ratios}")
    if SOCKETS >= TARGET_SOCKETS:
        assert ratios.get("scan", ratios.get("collect")) >= MIN_RATIO, ratios
    else:
        # Fewer sockets (CI): the scan's fixed start-up (GeoIP tables) dominates, so the
        # gate is on the collection alone (about 5x psutil at 20k sockets here).
        assert ratios["collect"] >= 3.0, ratios


def _synthetic_tcp6(lines: int) -> bytes:
    """A /proc/net/tcp6 text with `lines` established dual-stack and IPv6 sockets."""
    rows = ["  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode"]
    for i in range(lines):
        remote = f"0000000000000000FFFF0000{(0x0A000000 + i) & 0xFFFFFFFF:08X}" if i % 2 else f"B80D0120000000000000000{i % 16:X}{i & 0xFFFFFFF:08X}"
        rows.append(f"{i:6d}: 00000000000000000000000001000000:1F90 {remote}:{i % 65536:04X} 01 00000000:00000000 "
                    f"00:00000000 00000000  1000        0 {100000 + i} 1 0000000000000000 20 4 30 10 -1")
    return ("\n".join(rows) + "\n").encode()


@pytest.mark.parametrize("impl", ["c", "py"])
def test_parse_net_table_speed(benchmark, impl):
    """The native text parser against its pure-Python twin (100k lines, same run)."""
    from connscan import _native

    if impl not in _native.implementations("proc"):
        pytest.skip(f"connscan._proc_{impl} not built")
    proc = _native.load("proc", impl=impl)
    text = _synthetic_tcp6(100_000)
    table = benchmark.pedantic(proc.parse_net_table, args=(text, True, "tcp6"), rounds=3 if impl == "c" else 1)
    _best[f"parse_{impl}"] = benchmark.stats.stats.min
    assert len(table["lport"]) == 100_000 and table["bad_lines"] == 0
    if impl == "py" and "parse_c" in _best:
        print(f"\nparse_net_table 100k tcp6 lines: c {_best['parse_c']:.3f}s, py {_best['parse_py']:.3f}s, "
              f"x{_best['parse_py'] / _best['parse_c']:.0f}")
        assert _best["parse_c"] < _best["parse_py"]


if __name__ == "__main__":
    with loopback_connections(SOCKETS):
        for key, value in measure(rounds=int(os.environ.get("CONNSCAN_BENCH_ROUNDS", "1"))).items():
            print(f"{key}: {value}")
