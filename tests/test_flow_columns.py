"""The columnar findings path of `connscan flows` writes exactly what the object path writes.

- The JSON lines rendered from a FlowFindings' columns == json.dumps(finding_to_dict(f))
  for each of its Finding objects, byte for byte, on random batches (escaping, IPv6,
  missing ports and start times, fractional seconds, pre-1970 times); its text lines ==
  format_text_line(f), with both renderers.
- Those Finding objects == the ones evaluate_flow_batch gives (the object path).
- scan_paths + FindingWriter: the columnar path's output file == the object path's.
"""
from __future__ import annotations

import io
import json
import re
from dataclasses import replace
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connscan import _native
from connscan.engine import Engine
from connscan.flows import evaluate_flow_batch, evaluate_flow_columns, home_engine_for, scan_paths
from connscan.geoip import GeoTable
from connscan.output import (FindingWriter, finding_to_dict, format_text_line, json_lines_of_flow_findings,
                             text_lines_of_flow_findings)
from connscan.rules import Evaluator, RuleConfig
from connscan.signatures import SignatureSet
from connscan.sources import BATCH_SCHEMA, ReaderOptions

C2 = ["45.9.148.0/24", "185.220.101.7", "2a0e:fe40::/32", "91.92.240.12"]
GEO = GeoTable.from_ranges(v4=[("128.0.0.0/1", "KP"), ("1.0.0.0/8", "DE")], v6=[("2a0e::/16", "RU")])
ADDRESSES = ["10.1.2.3", "192.168.7.9", "fd00::17", "fe80::1", "45.9.148.33", "185.220.101.7", "2a0e:fe40::beef",
             "91.92.240.12", "1.2.3.4", "200.1.1.1", "8.8.8.8", "2001:db8::5", "::ffff:45.9.148.1", "not-an-ip",
             # the text escapes: a trailing ":", and a zone with ": ", control, format and non-ASCII characters
             "2a0e:fe40::", "fe80::1%a: \u200b\xa0é\n\x7f:"]
# Text JSON must escape (quotes, backslashes, control characters) and must not (non-ASCII, U+2028).
_TEXT = st.text(alphabet=st.sampled_from(['a', 'Z', '0', ' ', ':', '"', '\\', '\n', '\t', '\x00', '\x1f',
                                          '\x7f', 'é', '\u2028', '😀', '/', '\xa0', '\u200b', '\U000e0001']), max_size=10)
_MICROS = st.integers(-3_000_000_000_000_000, 4_000_000_000_000_000)  # about 1875..2096


def _json_line(finding) -> str:
    return json.dumps(finding_to_dict(finding), ensure_ascii=False, separators=(",", ":"))


def _evaluator(**config) -> Evaluator:
    engine = Engine(SignatureSet.from_networks(C2, description='C2 "test" \\ list'), GEO)
    return Evaluator(engine, RuleConfig(**config), hostname="host\t\"one\"")


@st.composite
def flow_batches(draw):
    n = draw(st.integers(1, 40))
    start = draw(st.lists(st.none() | _MICROS | st.integers(0, 10**6) | st.just(1_767_225_600_000_000), min_size=n, max_size=n))
    return pa.record_batch([
        pa.array(draw(st.lists(st.sampled_from(ADDRESSES), min_size=n, max_size=n)), pa.string()),
        pa.array(draw(st.lists(st.sampled_from(ADDRESSES), min_size=n, max_size=n)), pa.string()),
        pa.array(draw(st.lists(st.none() | st.sampled_from([0, 80, 443, 4444, 9001, 65535]), min_size=n, max_size=n)), pa.int32()),
        pa.array(draw(st.lists(st.none() | st.sampled_from([0, 53, 1337, 8080, 31337]), min_size=n, max_size=n)), pa.int32()),
        pa.array(draw(st.lists(st.none() | st.sampled_from(["tcp", "udp", "", "ICMP"]) | _TEXT, min_size=n, max_size=n)), pa.string()),
        pa.array(start, pa.timestamp("us", tz="UTC")),
        pa.array(sorted(draw(st.lists(st.integers(1, 10**9), min_size=n, max_size=n, unique=True))), pa.int64()),
    ], schema=BATCH_SCHEMA)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=flow_batches(), file=st.none() | _TEXT, all_connections=st.booleans(), tag=_TEXT,
       hostname=st.none() | _TEXT, host_ip=st.none() | st.sampled_from(["", "10.0.0.9", "a: b:"]))
def test_columnar_lines_equal_object_lines(batch, file, all_connections, tag, hostname, host_ip):
    evaluator = _evaluator(all_connections=all_connections)
    home = home_engine_for()
    flow = evaluate_flow_columns(batch, evaluator, home, file)
    objects = evaluate_flow_batch(batch, evaluator, home, file)
    if flow is None:
        assert objects == []
        return
    findings = flow.findings()
    # The object path's findings, apart from the evaluation time (now() per call).
    assert [replace(f, time=None) for f in findings] == [replace(f, time=None) for f in objects]
    expected = "".join(_json_line(f) + "\n" for f in findings)
    for impl in _native.implementations("render"):  # both renderers
        assert json_lines_of_flow_findings(flow, impl=_native.load("render", impl)) == expected
    expected = "".join(format_text_line(f, tag, hostname, host_ip) + "\n" for f in findings)
    for impl in _native.implementations("render"):
        assert text_lines_of_flow_findings(flow, tag, hostname, host_ip, impl=_native.load("render", impl)) == expected
    for fmt in ("jsonl", "text"):
        columnar, plain = io.StringIO(), io.StringIO()
        FindingWriter(columnar, fmt, tag, hostname, host_ip).write_flow_findings(flow)
        FindingWriter(plain, fmt, tag, hostname, host_ip).write_all(findings)
        assert columnar.getvalue() == plain.getvalue()
    assert flow.flagged.level_counts() == {level: sum(f.level == level for f in findings) for level in {f.level for f in findings}}


def test_text_output_of_a_flow():
    batch = pa.record_batch([pa.array(["10.0.0.1"]), pa.array(["45.9.148.2"]), pa.array([5000], pa.int32()),
                             pa.array([443], pa.int32()), pa.array(["tcp"]),
                             pa.array([datetime(2026, 1, 2, tzinfo=timezone.utc)], pa.timestamp("us", tz="UTC")),
                             pa.array([7], pa.int64())], schema=BATCH_SCHEMA)
    flow = evaluate_flow_columns(batch, _evaluator(), home_engine_for(), "f.csv")
    out = io.StringIO()
    writer = FindingWriter(out, "text", hostname="h")
    writer.write_flow_findings(flow)
    assert writer.written == 1
    assert "RIP: 45.9.148.2 RPORT: 443 FILE: f.csv ROW: 7 START: 2026-01-02T00:00:00Z" in out.getvalue()


def test_start_times_beyond_years_1_to_9999_are_unknown():
    # e.g. 12-digit epoch seconds in a damaged record: no ISO 8601 text, no OverflowError.
    micros = [253_402_300_800_000_000, -62_135_596_800_000_001, 253_402_300_799_999_999, -62_135_596_800_000_000]
    batch = pa.record_batch([pa.array(["10.0.0.1"] * 4), pa.array(["45.9.148.2"] * 4), pa.array([5000] * 4, pa.int32()),
                             pa.array([443] * 4, pa.int32()), pa.array(["tcp"] * 4),
                             pa.array(micros, pa.timestamp("us", tz="UTC")), pa.array([1, 2, 3, 4], pa.int64())],
                            schema=BATCH_SCHEMA)
    flow = evaluate_flow_columns(batch, _evaluator(), home_engine_for(), "f.csv")
    assert [f.start for f in flow.findings()] == [None, None, datetime.max.replace(tzinfo=timezone.utc),
                                                   datetime.min.replace(tzinfo=timezone.utc)]
    out = io.StringIO()
    FindingWriter(out, "jsonl").write_flow_findings(flow)
    assert [json.loads(line).get("start") for line in out.getvalue().splitlines()] == [
        None, None, "9999-12-31T23:59:59.999999Z", "0001-01-01T00:00:00Z"]


def test_scan_paths_columnar_output_equals_object_output(tmp_path):
    rng = np.random.default_rng(4)
    path = tmp_path / "flows.csv"
    with open(path, "w") as handle:
        handle.write("src_ip,dst_ip,src_port,dst_port,proto,start\n")
        for i in range(3000):
            src, dst = (ADDRESSES[k] for k in rng.integers(0, len(ADDRESSES) - 1, 2))
            handle.write(f"{src},{dst},{rng.integers(1, 65536)},{[443, 4444, 53][i % 3]},tcp,2026-01-01T00:00:{i % 60:02d}.{i:06d}Z\n")
    outputs, stats = [], []
    for columnar in (True, False):
        out = io.StringIO()
        writer = FindingWriter(out, "jsonl")
        run = scan_paths([str(path)], _evaluator(), home_engine_for(), options=ReaderOptions(batch_rows=700),
                         on_findings=writer.write_flow_findings if columnar else writer.write_all, columnar=columnar)
        outputs.append(re.sub(r'^\{"time":"[^"]*",', "", out.getvalue(), flags=re.M))  # now() of each run
        stats.append(run.stats.to_dict() | {"elapsed_s": None, "files": None})
    assert outputs[0] == outputs[1]
    assert outputs[0].count("\n") == sum(stats[0]["findings"].values()) > 100
    assert stats[0] == stats[1]


def test_writer_on_files_keeps_the_order_of_text_and_columnar_writes(tmp_path):
    # A UTF-8 file gets the rendered bytes straight into its buffer; other encodings get text.
    batch = pa.record_batch([pa.array(["10.0.0.1", "fe80::1%é"]), pa.array(["45.9.148.2", "185.220.101.7"]),
                             pa.array([5000, None], pa.int32()), pa.array([443, 80], pa.int32()), pa.array(["tcp", "udp"]),
                             pa.array([None, None], pa.timestamp("us", tz="UTC")), pa.array([1, 2], pa.int64())],
                            schema=BATCH_SCHEMA)
    flow = evaluate_flow_columns(batch, _evaluator(), home_engine_for(), "flöws.csv")
    findings = flow.findings()
    assert len(findings) == 2
    for fmt in ("jsonl", "text"):
        expected = io.StringIO()
        writer = FindingWriter(expected, fmt)
        writer.write(findings[1])
        writer.write_all(findings)
        writer.write(findings[0])
        for encoding in ("utf-8", "UTF8", "latin-1", "utf-16"):
            path = tmp_path / f"{fmt}-{encoding}"
            with open(path, "w", encoding=encoding) as handle:
                writer = FindingWriter(handle, fmt)
                writer.write(findings[1])
                writer.write_flow_findings(flow)
                writer.write(findings[0])
                writer.flush()
                assert writer.written == 4
            assert path.read_text(encoding=encoding) == expected.getvalue(), (fmt, encoding)


def test_a_saved_engine_flags_exactly_what_the_fresh_one_does(tmp_path):
    # Nested and overlapping signatures (the real lists' case): the rules then ask the
    # signatures for their bounds, which a loaded engine answers from its file.
    networks = ["45.9.0.0/16", "45.9.148.0/24", "45.9.148.7", "45.9.148.5-45.9.149.20", "2a0e::/16",
                "2a0e:fe40::/32", "91.92.240.12", "91.92.0.0/16"]
    sigs = SignatureSet.from_networks(networks, description="c2")
    sigs += SignatureSet.from_networks(["45.9.148.9", "91.92.7.0/24"], kind="allowlist")
    fresh = Engine(sigs, GEO)
    fresh.save(tmp_path / "engine.cstab")
    loaded = Engine.load(tmp_path / "engine.cstab")
    rng = np.random.default_rng(7)
    remote = [f"45.9.{rng.integers(147, 150)}.{rng.integers(0, 256)}" for _ in range(300)]
    remote += [f"91.92.{rng.integers(0, 256)}.{rng.integers(0, 256)}" for _ in range(100)]
    remote += [f"2a0e:fe{rng.integers(30, 50):02x}::{rng.integers(1, 999)}" for _ in range(100)]
    n = len(remote)
    batch = pa.record_batch([pa.array(["10.0.0.1"] * n), pa.array(remote), pa.array(rng.integers(1024, 65535, n), pa.int32()),
                             pa.array(rng.choice([443, 4444, 8080], n), pa.int32()), pa.array(["tcp"] * n),
                             pa.array([None] * n, pa.timestamp("us", tz="UTC")), pa.array(np.arange(1, n + 1), pa.int64())],
                            schema=BATCH_SCHEMA)
    found = []
    for engine in (fresh, loaded):
        flow = evaluate_flow_columns(batch, Evaluator(engine, hostname="h"), home_engine_for(), "f.csv")
        found.append([replace(f, time=None) for f in flow.findings()])
    assert len(found[0]) > n // 2
    assert found[0] == found[1]
