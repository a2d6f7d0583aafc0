"""Flow readers: every format -> the contract batch, with every record accounted for.

Expected values come from independent parses of the same files (Python's csv/json modules,
plain string splitting), never from the readers under test.
"""
from __future__ import annotations

import bz2
import csv
import gzip
import io
import ipaddress
import json
import lzma
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connscan.errors import InputError
from connscan.sources import BATCH_SCHEMA, ReaderOptions, detect_format, open_source
from support import TEST_DATA, impl_fixture

FLOWS = "flows"
flowparse = impl_fixture("flowparse")


def read_all(path, input_format=None, options=None, **kw):
    """(format, table of every batch, account) of one input."""
    source = open_source(path, input_format, options, **kw)
    batches = list(source.batches())
    for batch in batches:
        assert batch.schema == BATCH_SCHEMA
    table = pa.Table.from_batches(batches, schema=BATCH_SCHEMA)
    return source.format, table, source.account


def accounted(account) -> bool:
    return account.records_read == account.records_scanned + sum(account.rejected.values()) + sum(account.skipped.values())


# --------------------------------------------------------------------------- native extractor


def _oracle(block: bytes, delimiter: int, ncols: int, wanted, comment: int):
    """Independent expectation: what each non-blank line should give."""
    status, fields_out = [], [[] for _ in wanted]
    for raw in block.split(b"\n"):
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if not line:
            continue
        if comment >= 0 and line[0] == comment:
            status.append(1)
            continue
        parts = line.split(bytes([delimiter]))
        if len(parts) != ncols:
            status.append(2)
        elif any(not all(32 <= b < 127 for b in parts[c]) for c in wanted):
            status.append(3)
        else:
            status.append(0)
            for j, c in enumerate(wanted):
                fields_out[j].append(parts[c])
    return status, fields_out


def _columns(columns):
    out = []
    for offsets, data in columns:
        data = bytes(data)
        out.append([data[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)])
    return out


line_bytes = st.lists(st.sampled_from([b"a", b"1", b".", b":", b",", b"\t", b" ", b"\r", b"#", b"\xff", b"\x00", b"\n"]), max_size=30)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(line_bytes, max_size=20), ncols=st.integers(1, 4), delim=st.sampled_from([b",", b"\t"]), data=st.data())
def test_split_fields_matches_oracle_on_random_blocks(flowparse, pieces, ncols, delim, data):
    block = b"".join(b"".join(p) for p in pieces)
    wanted = data.draw(st.lists(st.integers(0, ncols - 1), unique=True, min_size=1, max_size=ncols))
    comment = data.draw(st.sampled_from([-1, ord("#")]))
    status, starts, ends, nfields, columns, bad_slot = flowparse.split_fields(block, delim[0], ncols, np.array(wanted, np.int32), comment)
    exp_status, exp_fields = _oracle(block, delim[0], ncols, wanted, comment)
    assert status.tolist() == exp_status
    assert _columns(columns) == exp_fields
    assert set(bad_slot.tolist()) <= {-1}
    # line boundaries point at the lines themselves
    lines = [raw[:-1] if raw.endswith(b"\r") else raw for raw in block.split(b"\n")]
    assert [block[s:e] for s, e in zip(starts, ends)] == [line for line in lines if line]


typed_field = st.one_of(
    st.integers(0, 70000).map(lambda v: str(v).encode()),
    st.sampled_from([b"", b"-", b"X", b" 80", b"1e3", b"007", b"XXXXXXXXXX.XXXXXX", b"1700000000.", b"12.3456789"]),
    st.datetimes(datetime(1900, 1, 1), datetime(2200, 1, 1)).map(lambda d: d.strftime("%Y-%m-%d %H:%M:%S.%f").encode()),
    st.datetimes(datetime(1960, 1, 1), datetime(2100, 1, 1)).map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%S").encode()),
    st.sampled_from([b"2023-02-29 00:00:00", b"2024-13-01 00:00:00", b"2024-01-01 24:00:00", b"2024-01-01 00:00:00.1234567890"]),
    st.floats(0, 4e9).map(lambda f: f"{f:.6f}".encode()),
)


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(st.lists(typed_field, min_size=3, max_size=3), max_size=15), kinds=st.lists(st.integers(0, 4), min_size=3, max_size=3))
def test_typed_columns_native_equals_twin(rows, kinds):
    from connscan import _native

    if len(_native.implementations("flowparse")) < 2:
        pytest.skip("compiled extractor not built")
    block = b"".join(b",".join(r) + b"\n" for r in rows)
    c, py = (_native.load("flowparse", impl=i).split_fields(block, ord(","), 3, np.array([2, 0, 1], np.int32), -1, kinds) for i in ("c", "py"))
    for a, b in zip(c[:4] + c[5:], py[:4] + py[5:]):
        assert a.tolist() == b.tolist()
    for kind, a, b in zip(kinds, c[4], py[4]):
        if kind == 1:
            assert a.tolist() == b.tolist()
        else:
            assert [x.tolist() for x in a] == [x.tolist() for x in b]


def test_typed_columns_against_independent_values(flowparse):
    block = (b"2024-02-29 23:59:59.5,80,1700000000.25\n"
             b"2023-02-29 00:00:00,-,XXXXXXXXXX.XXXXXX\n"
             b"1970-01-01T00:00:00,99999,12\n"
             b"1969-12-31 23:59:59.999999,65535,1.\n")
    status, _, _, _, columns, bad_slot = flowparse.split_fields(block, ord(","), 3, np.array([0, 1, 2], np.int32), -1, [2, 1, 3])
    assert status.tolist() == [0, 0, 4, 0] and bad_slot.tolist() == [-1, -1, 1, -1]
    times, valid = columns[0]
    expected = [datetime(2024, 2, 29, 23, 59, 59, 500000, tzinfo=timezone.utc), None, datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc)]
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    assert [epoch + timedelta(microseconds=t.item()) if v else None for t, v in zip(times, valid)] == expected
    assert columns[1].tolist() == [80, -1, 65535]
    assert [int(t) if v else None for t, v in zip(*columns[2])] == [1700000000250000, None, 1000000]


def test_split_fields_rejects_bad_arguments(flowparse):
    with pytest.raises(ValueError):
        flowparse.split_fields(b"a,b\n", ord(","), 2, np.array([2], np.int32))
    with pytest.raises(ValueError):
        flowparse.split_fields(b"a,b\n", ord(","), 0, np.array([0], np.int32))
    with pytest.raises(ValueError):
        flowparse.split_fields(b"a,b\n", 300, 2, np.array([0], np.int32))
    for line_break in (10, 13):  # lines end at LF (CR LF): neither can also split fields
        with pytest.raises(ValueError, match="delimiter"):
            flowparse.split_fields(b"a,b\n", line_break, 2, np.array([0], np.int32))
        with pytest.raises(ValueError, match="comment"):
            flowparse.split_fields(b"a,b\n", ord(","), 2, np.array([0], np.int32), line_break)


def test_split_fields_native_equals_twin_on_real_nfdump(shared_data):
    from connscan import _native

    impls = _native.implementations("flowparse")
    if len(impls) < 2:
        pytest.skip("compiled extractor not built")
    block = (shared_data / FLOWS / "netflow-softflowd-from-zeek-traces" / "nfdump-v9.csv").read_bytes()
    wanted = np.array([0, 3, 4, 5, 6, 7], np.int32)
    kinds = [2, 0, 0, 1, 1, 0]
    c, py = (_native.load("flowparse", impl=i).split_fields(block, ord(","), 48, wanted, -1, kinds) for i in ("c", "py"))
    for a, b in zip(c[:4] + c[5:], py[:4] + py[5:]):
        assert a.tolist() == b.tolist()
    assert _columns(c[4][1:3]) == _columns(py[4][1:3])
    assert c[4][3].tolist() == py[4][3].tolist()
    assert c[4][0][0].tolist() == py[4][0][0].tolist()


# --------------------------------------------------------------------------- nfdump


def _nfdump_expected(path: Path):
    """Independent parse with the csv module: data rows until the Summary footer."""
    rows = []
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        for fields in reader:
            if fields == ["Summary"]:
                break
            if fields:
                rows.append(dict(zip(header, fields)))
    return rows


@pytest.mark.parametrize("name", ["nfdump-v5.csv", "nfdump-v9.csv", "nfdump-ipfix.csv"])
def test_nfdump_csv_real_exports(shared_data, name):
    path = shared_data / FLOWS / "netflow-softflowd-from-zeek-traces" / name
    fmt, table, account = read_all(path, options=ReaderOptions(tz="Europe/Berlin"))
    expected = _nfdump_expected(path)
    assert fmt == "nfdump-csv"
    assert table.num_rows == len(expected) and account.records_read == len(expected)  # footer is not data
    assert accounted(account) and not account.rejected
    assert table.column("src").to_pylist() == [r["sa"] for r in expected]
    assert table.column("dst").to_pylist() == [r["da"] for r in expected]
    assert table.column("sport").to_pylist() == [int(r["sp"]) for r in expected]
    assert table.column("dport").to_pylist() == [int(r["dp"]) for r in expected]
    assert table.column("row").to_pylist() == list(range(1, len(expected) + 1))
    berlin = ZoneInfo("Europe/Berlin")
    first = datetime.strptime(expected[0]["ts"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=berlin)
    assert table.column("start")[0].as_py() == first.astimezone(timezone.utc)


def test_nfdump_footer_fixture_and_protocol_names():
    path = TEST_DATA / FLOWS / "nfdump-v5-tail.csv"
    expected = _nfdump_expected(path)
    fmt, table, account = read_all(path, options=ReaderOptions(tz="UTC"))
    assert fmt == "nfdump-csv"
    assert table.num_rows == len(expected) == 30 and account.records_read == 30
    names = {"TCP": "tcp", "UDP": "udp", "ICMP": "icmp", "IGMP": "igmp", "ICMP6": "icmp6"}
    assert table.column("proto").to_pylist() == [names.get(r["pr"].strip(), r["pr"].strip()) for r in expected]
    starts = [datetime.strptime(r["ts"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc) for r in expected]
    assert table.column("start").to_pylist() == starts


def test_nfdump_csv_fast(tmp_path):
    path = tmp_path / "fast.csv"
    path.write_text(
        "cnt,af,firstSeen,lastSeen,proto,srcAddr,srcPort,dstAddr,dstPort,srcAS,dstAS,input,output,flags,srcTos,packets,bytes\n"
        "1,2,1700000000123,1700000001000,6,192.0.2.1,1234,198.51.100.7,443,0,0,0,0,........,0,1,60\n"
        "2,10,1700000000500,1700000001000,17,2001:db8::1,53,2001:db8::2,5353,0,0,0,0,........,0,1,60\n"
    )
    fmt, table, account = read_all(path)
    assert fmt == "nfdump-csv-fast"
    assert table.column("proto").to_pylist() == ["tcp", "udp"]
    assert table.column("start")[0].as_py() == datetime.fromtimestamp(1700000000.123, timezone.utc)
    assert table.column("dport").to_pylist() == [443, 5353]


def test_malformed_rows_are_rejected_with_their_row(tmp_path):
    header = "ts,te,td,sa,da,sp,dp,pr"
    lines = [
        "2024-01-01 00:00:00,x,0,10.0.0.1,8.8.8.8,1000,53,UDP",
        "2024-01-01 00:00:01,x,0,10.0.0.1,8.8.8.8,1000",  # short
        "",  # blank: not a record
        "2024-01-01 00:00:02,x,0,10.0.0.1,8.8.8.8,99999,53,UDP",  # port out of range
        "2024-01-01 00:00:03,x,0,10.0.0.2,1.1.1.1,1001,abc,TCP",  # port not a number
        "2024-01-01 00:00:04,x,0,10.0.0.3,9.9.9.9,-,443,TCP",  # unset port
    ]
    path = tmp_path / "bad.csv"
    path.write_text(header + "\n" + "\n".join(lines) + "\nSummary\nflows,bytes\n1,2\n")
    fmt, table, account = read_all(path, options=ReaderOptions(tz="UTC"))
    assert table.column("row").to_pylist() == [1, 5]
    assert table.column("sport").to_pylist() == [1000, -1]
    rejects = sorted((row, reason) for row, reason, _ in account.take_rejects())
    assert rejects == [(2, "expected 8 fields, got 6"), (3, "invalid sport"), (4, "invalid dport")]
    assert account.records_read == 5 and accounted(account)


# --------------------------------------------------------------------------- Zeek


def _zeek_expected(path: Path):
    """Independent TSV parse: #fields names, data lines until #close; '-' unset."""
    names, rows = None, []
    for line in path.read_text().splitlines():
        if line.startswith("#fields"):
            names = line.split("\t")[1:]
        elif line.startswith("#") or not line:
            continue
        else:
            rows.append(dict(zip(names, line.split("\t"))))
    return rows


def _port(text):
    return -1 if text in ("-", "") else int(text)


def test_zeek_conn_log_real(shared_data):
    path = shared_data / FLOWS / "zeek-malware-conn" / "trickbot-2018-11-conn.log"
    fmt, table, account = read_all(path)
    expected = _zeek_expected(path)
    assert fmt == "zeek-tsv" and len(expected) == 13001
    assert table.num_rows == len(expected) and accounted(account)
    assert table.column("src").to_pylist() == [r["id.orig_h"] for r in expected]
    assert table.column("dst").to_pylist() == [r["id.resp_h"] for r in expected]
    assert table.column("sport").to_pylist() == [_port(r["id.orig_p"]) for r in expected]
    assert table.column("dport").to_pylist() == [_port(r["id.resp_p"]) for r in expected]
    assert table.column("proto").to_pylist() == [r["proto"] for r in expected]
    micros = [round(float(r["ts"]) * 1e6) for r in expected]
    got = table.column("start").cast(pa.int64()).to_pylist()
    assert got == micros


def test_zeek_masked_timestamps_fixture():
    fmt, table, account = read_all(TEST_DATA / FLOWS / "core.history-flip__conn.log")
    assert fmt == "zeek-tsv"
    assert table.num_rows == 1 and account.records_read == 1
    assert table.column("start").null_count == 1  # XXXXXXXXXX.XXXXXX is not a time
    assert table.column("src").to_pylist() == ["141.42.64.125"]
    assert table.column("dport").to_pylist() == [80]


def test_zeek_without_fields_header_fixture():
    fmt, table, account = read_all(TEST_DATA / FLOWS / "scripts.base.protocols.postgresql.greenhouse-app__conn.log")
    assert fmt == "zeek-tsv"
    assert table.column("src").to_pylist() == ["172.21.0.8", "172.21.0.9"]
    assert table.column("dport").to_pylist() == [5432, 5432]
    assert table.column("proto").to_pylist() == ["", ""]  # no proto column: unknown


def _zeek_rows(path) -> list[dict]:
    """Independent parse of a Zeek TSV fixture: its #fields names and tab-split data lines."""
    lines = Path(path).read_text().splitlines()
    names = next(line.split("\t")[1:] for line in lines if line.startswith("#fields"))
    return [dict(zip(names, line.split("\t"))) for line in lines if line and not line.startswith("#")]


@pytest.mark.parametrize("name, src, dst, sport, dport", [
    ("scripts.base.frameworks.logging.field-name-map__conn.log", "src", "dst", "src_port", "dst_port"),
    ("scripts.base.frameworks.logging.scope_sep__conn.log", "id_orig_h", "id_resp_h", "id_orig_p", "id_resp_p"),
])
def test_zeek_renamed_fields_fixture(name, src, dst, sport, dport):
    """Zeek's field name map and another scope separator rename id.orig_h & co.: found."""
    expected = _zeek_rows(TEST_DATA / FLOWS / name)
    fmt, table, account = read_all(TEST_DATA / FLOWS / name)
    assert fmt == "zeek-tsv" and len(expected) == 34
    assert table.column("src").to_pylist() == [row[src] for row in expected]
    assert table.column("dst").to_pylist() == [row[dst] for row in expected]
    assert table.column("sport").to_pylist() == [int(row[sport]) for row in expected]
    assert table.column("dport").to_pylist() == [int(row[dport]) for row in expected]
    assert table.column("proto").to_pylist() == [row["proto"] for row in expected]
    assert account.records_read == 34 and accounted(account) and not account.rejected


def test_zeek_columns_option_names_other_fields(tmp_path):
    """--columns picks fields no rule would recognise, and a clash of roles is refused."""
    path = tmp_path / "conn.log"
    path.write_text(_zeek_section(["ts", "peer_a", "peer_b", "pa", "pb"],
                                  [{"ts": "1700000000.5", "peer_a": "10.0.0.1", "peer_b": "8.8.8.8", "pa": 5353, "pb": 53}]))
    with pytest.raises(InputError, match="--columns src="):
        read_all(path)
    columns = {"src": "peer_a", "dst": "peer_b", "sport": "pa", "dport": "pb"}
    _, table, account = read_all(path, options=ReaderOptions(columns=columns))
    assert table.column("src").to_pylist() == ["10.0.0.1"] and table.column("dst").to_pylist() == ["8.8.8.8"]
    assert table.column("sport").to_pylist() == [5353] and table.column("dport").to_pylist() == [53]
    assert table.column("start").cast(pa.int64()).to_pylist() == [1_700_000_000_500_000]
    with pytest.raises(InputError, match="two roles"):
        read_all(path, options=ReaderOptions(columns={**columns, "dport": "pa"}))
    # names this log lacks (a run that also reads generic CSV) leave Zeek's own names in place
    standard = tmp_path / "standard.log"
    standard.write_text(_zeek_section(["ts", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p"],
                                      [{"ts": "1.0", "id.orig_h": "10.0.0.3", "id.orig_p": 1, "id.resp_h": "9.9.9.9", "id.resp_p": 2}]))
    _, table, _ = read_all(standard, options=ReaderOptions(columns=columns))
    assert table.column("src").to_pylist() == ["10.0.0.3"] and table.column("dport").to_pylist() == [2]


def test_zeek_json_scope_separator_and_columns(tmp_path):
    """Zeek JSON with scope separator "_" is recognised; --columns names other keys."""
    path = tmp_path / "conn.json"
    records = [{"ts": 1700000000.25, "uid": "C1", "id_orig_h": "10.0.0.1", "id_orig_p": 5353, "id_resp_h": "8.8.8.8",
                "id_resp_p": 53, "proto": "udp", "a": "10.0.0.2", "b": "1.1.1.1"}]
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    fmt, table, account = read_all(path)
    assert fmt == "zeek-json" and accounted(account)
    assert table.column("src").to_pylist() == ["10.0.0.1"] and table.column("dport").to_pylist() == [53]
    assert table.column("start").cast(pa.int64()).to_pylist() == [1_700_000_000_250_000]
    _, table, _ = read_all(path, options=ReaderOptions(columns={"src": "a", "dst": "b"}))
    assert table.column("src").to_pylist() == ["10.0.0.2"] and table.column("dst").to_pylist() == ["1.1.1.1"]
    _, table, account = read_all(path, options=ReaderOptions(columns={"src": "peer_a", "dst": "peer_b"}))  # not here
    assert table.column("src").to_pylist() == ["10.0.0.1"] and account.records_scanned == 1


def test_zeek_json_times_outside_the_calendar_are_unknown(tmp_path):
    """A damaged ts (1e300, Infinity, NaN, beyond year 9999) is no time, not an overflow."""
    path = tmp_path / "conn.json"
    times = ["1e300", "-1e300", "Infinity", "NaN", "253402300800", "253402300799.5", "-62135596800", "true", "1700000000"]
    path.write_text("".join(f'{{"ts": {ts}, "id.orig_h": "10.0.0.1", "id.resp_h": "8.8.8.8"}}\n' for ts in times))
    _, table, account = read_all(path, "zeek-json")
    expected = [None, None, None, None, None, 253402300799_500000, -62135596800_000000, None, 1700000000_000000]
    assert table.column("start").cast(pa.int64()).to_pylist() == expected
    assert account.records_scanned == len(times) and accounted(account)


@pytest.mark.parametrize("fmt, template", [
    ("zeek-json", '{{"ts": 1.5, "id.orig_h": "{a}", "id.resp_h": "8.8.8.8", "id.orig_p": "{p}", "proto": "{p}"}}'),
    ("suricata-eve", '{{"timestamp": "x", "event_type": "fl{p}", "src_ip": "{a}", "dest_ip": "8.8.8.8", "proto": "{p}"}}'),
    ("json", '{{"src_ip": "{a}", "dst_ip": "8.8.8.8", "src_port": "{p}"}}'),
])
def test_json_lone_surrogate_escapes_are_text_not_a_crash(tmp_path, fmt, template):
    """json.loads keeps an escaped lone surrogate ("\\ud800"), which UTF-8 cannot hold: the
    value becomes U+FFFD text (then an invalid address or port), never an encoding error."""
    path = tmp_path / "f.json"
    path.write_text(template.format(a="10.0.0.1", p="80") + "\n" + template.format(a="10.0.0.\\ud800", p="\\udc00") + "\n")
    _, table, account = read_all(path, fmt)
    assert table.column("src").to_pylist()[0] == "10.0.0.1" and accounted(account)
    shown = table.column("src").to_pylist() + [text for _, _, text in account.pending_rejects]
    assert account.records_read == 2 and "\ufffd" in "".join(shown)


def test_zeek_without_addresses_is_a_clear_error():
    with pytest.raises(InputError, match="id.orig_h"):
        read_all(TEST_DATA / FLOWS / "core.reporter-limit-reached-weird__conn.log")


def test_zeek_line_break_separator_is_a_clear_error(tmp_path):
    path = tmp_path / "conn.log"
    path.write_text("#separator \\x0d\n#fields\tts\tid.orig_h\tid.resp_h\n1.0\t10.0.0.1\t8.8.8.8\n")
    with pytest.raises(InputError, match="line break"):
        read_all(str(path), "zeek-tsv")


def _zeek_section(fields: list[str], rows: list[dict], separator: str = "\t") -> str:
    """One Zeek TSV log (header block, rows, #close) with ``fields`` in that order."""
    escaped = "\\x" + format(ord(separator), "02x")
    head = [f"#separator {escaped}", f"#set_separator{separator},", f"#empty_field{separator}(empty)",
            f"#unset_field{separator}-", f"#path{separator}conn", f"#open{separator}2026-01-01-00-00-00",
            "#fields" + separator + separator.join(fields), "#types" + separator + separator.join("string" for _ in fields)]
    lines = [separator.join(str(row.get(name, "-")) for name in fields) for row in rows]
    return "\n".join(head + lines + [f"#close{separator}2026-01-01-01-00-00"]) + "\n"


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("block_bytes", [64, 700, 1 << 20])
def test_concatenated_zeek_logs_are_read_section_by_section(tmp_path, workers, block_bytes, monkeypatch):
    """`cat` of logs whose headers differ (field order, extra fields, separator): each
    section with its own fields; row numbers run on across the file; nothing is lost."""
    from connscan.sources import delimited

    monkeypatch.setattr(delimited, "SPLIT_WORKERS", workers)
    rng = np.random.default_rng(5)

    def rows(n):
        return [{"ts": f"{1767225600 + i}.5", "uid": f"C{i}", "id.orig_h": str(ipaddress.IPv4Address(int(rng.integers(1, 2**32)))),
                 "id.orig_p": int(rng.integers(0, 65536)), "id.resp_h": str(ipaddress.IPv6Address(int(rng.integers(1, 2**63)) << 64)),
                 "id.resp_p": int(rng.integers(0, 65536)), "proto": str(rng.choice(["tcp", "udp"])), "service": "-"} for i in range(n)]

    standard = ["ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "service"]
    reordered = ["uid", "id.resp_p", "id.resp_h", "proto", "extra", "id.orig_p", "id.orig_h", "ts"]
    sections = [(standard, rows(30), "\t"), (reordered, rows(25), "\t"), (standard, rows(1), "\t"),
                (standard, rows(0), "\t"), (reordered, rows(20), "|"), (standard, rows(12), "\t")]
    path = tmp_path / "all-conn.log"
    path.write_text("".join(_zeek_section(fields, data, sep) for fields, data, sep in sections))
    expected = [row for _, data, _ in sections for row in data]

    fmt, table, account = read_all(path, options=ReaderOptions(block_bytes=block_bytes, batch_rows=16))
    assert fmt == "zeek-tsv"
    assert table.column("row").to_pylist() == list(range(1, len(expected) + 1))
    assert table.column("src").to_pylist() == [row["id.orig_h"] for row in expected]
    assert table.column("dst").to_pylist() == [row["id.resp_h"] for row in expected]
    assert table.column("sport").to_pylist() == [row["id.orig_p"] for row in expected]
    assert table.column("dport").to_pylist() == [row["id.resp_p"] for row in expected]
    assert table.column("proto").to_pylist() == [row["proto"] for row in expected]
    assert table.column("start").cast(pa.int64()).to_pylist() == [int(float(row["ts"]) * 1e6) for row in expected]
    assert account.records_read == len(expected) and accounted(account) and not account.rejected


def test_every_zeek_btest_baseline(shared_data):
    """Each of the 211 files: read completely, or refused with a reason naming the columns."""
    read = refused = 0
    for path in sorted((shared_data / FLOWS / "zeek-btest-baselines" / "tsv").iterdir()):
        lines = [l for l in path.read_text(errors="replace").splitlines() if l and not l.startswith("#")]
        has_fields = any(l.startswith("#fields") for l in path.read_text(errors="replace").splitlines())
        try:
            _, table, account = read_all(path)
        except InputError as exc:
            assert "id.orig_h" in str(exc) or "unknown flow format" in str(exc), str(exc)
            refused += 1
            continue
        data_lines = len(lines) if has_fields else len(lines) - 1  # minus the header line
        assert account.records_read == data_lines, path.name
        assert accounted(account)
        read += 1
    assert read >= 140 and refused >= 1


def test_zeek_json_equals_zeek_tsv(shared_data):
    """The same ssl log in both Zeek encodings gives the same flows."""
    base = shared_data / FLOWS / "zeek-wrccdc-brimdata"
    fmt_tsv, tsv, _ = read_all(base / "zeek-default_ssl.log.gz")
    fmt_json, js, account = read_all(base / "zeek-json_ssl.json.gz")
    assert (fmt_tsv, fmt_json) == ("zeek-tsv", "zeek-json")
    assert js.num_rows == tsv.num_rows == 49474 and accounted(account)
    for name in ("src", "dst", "sport", "dport", "row"):
        assert js.column(name).to_pylist() == tsv.column(name).to_pylist(), name
    # TSV epoch seconds and JSON ISO text agree to the microsecond
    assert js.column("start").cast(pa.int64()).to_pylist() == tsv.column("start").cast(pa.int64()).to_pylist()


# --------------------------------------------------------------------------- Suricata, AWS


@pytest.mark.parametrize("name", ["eve-MAGNC-suricata_data_training-2023-02-28.json", "eve-alaajili-EVE-Json-Parser-2022-11-18.json"])
def test_suricata_eve_real(shared_data, name):
    path = shared_data / FLOWS / "suricata-eve" / name
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    with_addresses = [e for e in events if "src_ip" in e and "dest_ip" in e]
    fmt, table, account = read_all(path)
    assert fmt == "suricata-eve"
    assert table.column("src").to_pylist() == [e["src_ip"] for e in with_addresses]
    assert table.column("dport").to_pylist() == [e.get("dest_port", -1) for e in with_addresses]
    assert sum(account.skipped.values()) == len(events) - len(with_addresses)
    assert accounted(account) and account.records_read == len(events)
    flows_only = [e for e in with_addresses if e["event_type"] == "flow"]
    _, table, account = read_all(path, options=ReaderOptions(event_types=frozenset({"flow"})))
    assert table.num_rows == len(flows_only) and accounted(account)
    if flows_only:
        start = datetime.fromisoformat(flows_only[0]["flow"]["start"])
        assert table.column("start")[0].as_py() == start


def test_aws_vpc_samples(shared_data):
    base = shared_data / FLOWS / "aws-vpc-flow-samples"
    fmt, table, account = read_all(base / "test-extra-samples.log")
    assert fmt == "aws-vpc"
    assert dict(account.skipped) == {"NODATA": 1, "SKIPDATA": 1}  # counted, not errors
    assert not account.rejected and accounted(account) and account.records_read == 7
    assert table.column("src").to_pylist()[1:3] == ["78.24.182.42", "78.24.182.42"]
    assert table.column("proto").to_pylist()[:2] == ["tcp", "tcp"]
    assert table.column("row").to_pylist() == [1, 4, 5, 6, 7]
    assert table.column("start")[1].as_py() == datetime.fromtimestamp(1418530010, timezone.utc)
    fmt, table, account = read_all(base / "test-ecs-samples.log")
    assert table.num_rows == 4 and dict(account.skipped) == {"NODATA": 4, "SKIPDATA": 2}
    fmt, table, account = read_all(base / "test-v5-all-fields.log")
    assert table.column("dport").to_pylist() == [33004]


def test_aws_custom_format_from_header(tmp_path):
    path = tmp_path / "custom.log"
    path.write_text(
        "srcport dstaddr srcaddr dstport protocol log-status\n"
        "443 10.0.0.5 203.0.113.9 51000 6 OK\n"
        "- - - - - NODATA\n"
    )
    fmt, table, account = read_all(path)
    assert fmt == "aws-vpc"
    assert table.to_pydict()["src"] == ["203.0.113.9"] and table.column("sport").to_pylist() == [443]
    assert dict(account.skipped) == {"NODATA": 1}


# --------------------------------------------------------------------------- generic tables


def _sample_rows(n=50, seed=3):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        src = str(ipaddress.IPv4Address(int(rng.integers(0, 2**32))))
        dst = str(ipaddress.IPv6Address(int(rng.integers(0, 2**63)) << 64)) if i % 5 == 0 else str(ipaddress.IPv4Address(int(rng.integers(0, 2**32))))
        rows.append((src, dst, int(rng.integers(0, 65536)), int(rng.integers(0, 65536)), ["tcp", "udp", "6"][i % 3]))
    return rows


def test_generic_csv_with_known_names_and_quotes(tmp_path):
    rows = _sample_rows()
    path = tmp_path / "flows.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, quoting=csv.QUOTE_ALL)
        writer.writerow(["note", "source.ip", "destination.ip", "source.port", "destination.port", "network.transport", "@timestamp"])
        for i, r in enumerate(rows):
            writer.writerow([f"a, b {i}", r[0], r[1], r[2], r[3], r[4], "2024-05-01T10:00:00+02:00"])
    fmt, table, account = read_all(path)
    assert fmt == "csv"
    assert table.column("src").to_pylist() == [r[0] for r in rows]
    assert table.column("dst").to_pylist() == [r[1] for r in rows]
    assert table.column("dport").to_pylist() == [r[3] for r in rows]
    assert table.column("proto").to_pylist() == [{"6": "tcp"}.get(r[4], r[4]) for r in rows]
    assert table.column("start")[0].as_py() == datetime(2024, 5, 1, 8, 0, tzinfo=timezone.utc)


def test_generic_tsv_with_columns_option(tmp_path):
    rows = _sample_rows(10)
    path = tmp_path / "flows.tsv"
    path.write_text("a\tb\tc\td\n" + "".join(f"{r[0]}\t{r[1]}\t{r[2]}\t{r[3]}\n" for r in rows))
    options = ReaderOptions(columns={"src": "a", "dst": "b", "sport": "c", "dport": "d"})
    fmt, table, account = read_all(path, "csv", options)
    assert table.column("dst").to_pylist() == [r[1] for r in rows]
    assert table.column("sport").to_pylist() == [r[2] for r in rows]
    with pytest.raises(InputError, match="no source/destination"):
        read_all(path, "csv")


def _ecs(r, stamp):
    return {"@timestamp": stamp, "source": {"ip": r[0], "port": r[2]}, "destination": {"ip": r[1], "port": r[3]},
            "network": {"transport": r[4]}}


def _ecs_dotted(r, stamp):  # the same keys, flattened (some exporters write them so)
    return {"@timestamp": stamp, "source.ip": r[0], "source.port": r[2], "destination.ip": r[1], "destination.port": r[3],
            "network.transport": r[4]}


def _gcp(r, stamp):  # a VPC flow log record as Cloud Logging exports it: protocol is a number
    return {"insertId": "x", "timestamp": "2030-01-01T00:00:00Z", "jsonPayload": {
        "connection": {"src_ip": r[0], "dest_ip": r[1], "src_port": r[2], "dest_port": r[3], "protocol": 6},
        "start_time": stamp, "end_time": stamp, "bytes_sent": "10"}}


def _flat(r, stamp_ms):
    return {"src_ip": r[0], "dst_ip": r[1], "src_port": r[2], "dst_port": r[3], "protocol": r[4], "timestamp": stamp_ms}


@pytest.mark.parametrize("shape", [_ecs, _ecs_dotted, _gcp, _flat])
def test_generic_json_lines(tmp_path, shape):
    """JSON flow records of other tools: fields found by the common names, nested or dotted."""
    rows = _sample_rows(40)
    moment = datetime(2024, 5, 1, 10, 0, 0, 123000, tzinfo=timezone.utc)
    stamp = round(moment.timestamp() * 1000) if shape is _flat else "2024-05-01T12:00:00.123+02:00"
    path = tmp_path / "flows.json"
    lines = [json.dumps(shape(r, stamp)) for r in rows]
    lines[7:7] = ['{"message": "no addresses here"}', "not json", "[1, 2]", ""]
    path.write_text("\n".join(lines) + "\n")
    fmt, table, account = read_all(path)
    assert fmt == "json"
    assert table.column("src").to_pylist() == [r[0] for r in rows]
    assert table.column("dst").to_pylist() == [r[1] for r in rows]
    assert table.column("sport").to_pylist() == [r[2] for r in rows]
    assert table.column("dport").to_pylist() == [r[3] for r in rows]
    protocols = ["tcp"] * len(rows) if shape is _gcp else [{"6": "tcp"}.get(r[4], r[4]) for r in rows]
    assert table.column("proto").to_pylist() == protocols
    assert set(table.column("start").to_pylist()) == {moment}
    # rows count the non-blank lines: the three bad ones are rows 8-10
    assert table.column("row").to_pylist() == list(range(1, 8)) + list(range(11, 44))
    assert account.skipped == {"no source/destination address fields": 1}
    assert sum(account.rejected.values()) == 2 and accounted(account)


def test_generic_json_lines_detection_and_columns(tmp_path):
    path = tmp_path / "other.json"
    path.write_text("".join(json.dumps({"flow": {"a": r[0], "b": r[1]}, "src": {"x": 1}, "dst": {"y": 2}}) + "\n" for r in _sample_rows(5)))
    with pytest.raises(InputError, match="unknown flow format"):
        open_source(path)  # no known field holds an address ("src", "dst" hold objects)
    fmt, table, account = read_all(path, options=ReaderOptions(columns={"src": "flow.a", "dst": "flow.b"}))
    assert fmt == "json" and table.column("dst").to_pylist() == [r[1] for r in _sample_rows(5)]
    assert set(table.column("sport").to_pylist()) == {-1} and table.column("start").null_count == 5


def test_headerless_zeek_log_read_by_field_numbers(shared_data):
    """A Zeek log written without its header block (btest baseline: ts, uid, orig_h,
    resp_h, history, service): not a known format by itself, read with field numbers."""
    path = shared_data / FLOWS / "zeek-btest-baselines" / "tsv" / "supervisor.config-cluster-pcap__zeek.worker.conn.log"
    with pytest.raises(InputError, match="unknown flow format"):
        open_source(path)
    records = [line.split("\t") for line in path.read_text().splitlines() if line and not line.startswith("#")]
    fmt, table, account = read_all(path, options=ReaderOptions(columns={"src": "3", "dst": "4", "start": "1"}))
    assert fmt == "csv" and len(records) == 34
    assert table.column("src").to_pylist() == [r[2] for r in records]
    assert table.column("dst").to_pylist() == [r[3] for r in records]
    assert table.column("start").cast(pa.int64()).to_pylist() == [round(float(r[0]) * 1e6) for r in records]
    assert table.column("row").to_pylist() == list(range(1, 35))
    assert set(table.column("sport").to_pylist()) == {-1}  # no port columns: unknown
    assert account.records_read == 34 and accounted(account) and not account.rejected


def test_headerless_csv_refusals(tmp_path):
    rows = _sample_rows(5)
    path = tmp_path / "flows.txt"
    path.write_text("".join(f"{r[0]};{r[1]};{r[3]}\n" for r in rows))
    fmt, table, account = read_all(path, options=ReaderOptions(columns={"src": "1", "dst": "2", "dport": "3"}))
    assert table.column("dst").to_pylist() == [r[1] for r in rows]
    assert table.column("dport").to_pylist() == [r[3] for r in rows]
    with pytest.raises(InputError, match=r"flows.txt: --columns dport=4: its first line has 3 fields"):
        read_all(path, options=ReaderOptions(columns={"src": "1", "dst": "2", "dport": "4"}))
    # a header line that is there after all is a record with bad addresses, counted
    (tmp_path / "with-header.csv").write_text("src,dst\n" + "".join(f"{r[0]},{r[1]}\n" for r in rows))
    _, table, account = read_all(tmp_path / "with-header.csv", options=ReaderOptions(columns={"src": "1", "dst": "2"}))
    assert account.records_read == 6 and accounted(account)
    assert table.num_rows == 6 and table.column("row").to_pylist() == list(range(1, 7))
    (tmp_path / "one-field.txt").write_text("10.0.0.1\n10.0.0.2\n")
    with pytest.raises(InputError, match="unknown flow format"):
        read_all(tmp_path / "one-field.txt", options=ReaderOptions(columns={"src": "1", "dst": "2"}))
    with pytest.raises(InputError, match="one-field.txt: no line of delimited fields"):
        read_all(tmp_path / "one-field.txt", "csv", ReaderOptions(columns={"src": "1", "dst": "2"}))


@pytest.mark.parametrize("kind", ["parquet", "csv"])
def test_aws_vpc_delivered_as_parquet_or_csv_skips_no_flow_records(tmp_path, kind):
    """AWS delivers VPC flow logs as Parquet too (and Athena queries them to CSV): NODATA and
    SKIPDATA records, without addresses, are counted as skipped as in the text logs."""
    rows = _sample_rows(30)
    status = ["OK"] * 30
    status[4], status[9], status[20] = "NODATA", "SKIPDATA", "NODATA"
    keep = [i for i, s in enumerate(status) if s == "OK"]
    table = pa.table({
        "version": [5] * 30, "srcaddr": [None if s != "OK" else r[0] for r, s in zip(rows, status)],
        "dstaddr": [None if s != "OK" else r[1] for r, s in zip(rows, status)],
        "srcport": pa.array([r[2] for r in rows], pa.int32()), "dstport": pa.array([r[3] for r in rows], pa.int32()),
        "protocol": pa.array([6] * 30, pa.int32()), "start": pa.array(range(1_700_000_000, 1_700_000_030), pa.int64()),
        "log_status": status,
    })
    path = tmp_path / f"vpc.{kind}"
    if kind == "parquet":
        pq.write_table(table, path, row_group_size=8)
    else:
        pacsv.write_csv(table, path)
    fmt, got, account = read_all(path)
    assert fmt == kind
    assert got.column("src").to_pylist() == [rows[i][0] for i in keep]
    assert got.column("row").to_pylist() == [i + 1 for i in keep]
    assert got.column("start").cast(pa.int64()).to_pylist() == [(1_700_000_000 + i) * 1_000_000 for i in keep]
    assert account.skipped == {"NODATA": 2, "SKIPDATA": 1} and not account.rejected and accounted(account)


@pytest.mark.parametrize("kind", ["parquet", "arrow", "arrow-stream"])
def test_parquet_and_arrow_ipc(tmp_path, kind):
    rows = _sample_rows(300)
    data = pa.table(
        {
            "srcaddr": [r[0] for r in rows],
            "dstaddr": [r[1] for r in rows],
            "srcport": pa.array([r[2] for r in rows], pa.int64()),
            "dstport": pa.array([r[3] for r in rows], pa.int32()),
            "protocol": pa.array([6 if i % 2 else 17 for i in range(len(rows))], pa.int8()),
            "start": pa.array([1_700_000_000 + i for i in range(len(rows))], pa.int64()),
        }
    )
    path = tmp_path / f"flows.{kind}"
    if kind == "parquet":
        pq.write_table(data, path, row_group_size=100)
    else:
        import pyarrow.ipc as ipc

        opener = ipc.new_file if kind == "arrow" else ipc.new_stream
        with opener(str(path), data.schema) as writer:
            writer.write_table(data, max_chunksize=64)
    fmt, table, account = read_all(path, options=ReaderOptions(batch_rows=128))
    assert fmt == ("parquet" if kind == "parquet" else "arrow")
    assert table.column("src").to_pylist() == data.column("srcaddr").to_pylist()
    assert table.column("sport").to_pylist() == data.column("srcport").to_pylist()
    assert table.column("proto").to_pylist() == ["tcp" if i % 2 else "udp" for i in range(len(rows))]
    assert table.column("row").to_pylist() == list(range(1, len(rows) + 1))
    assert table.column("start")[5].as_py() == datetime.fromtimestamp(1_700_000_005, timezone.utc)


def test_parquet_unsigned_and_float_ports(tmp_path):
    """uint16 ports (flow exporters) and float64 ports with NaN gaps (pandas) are ports."""
    rows = _sample_rows(50)
    dport = [float("nan") if i % 7 == 0 else float(r[3]) for i, r in enumerate(rows)]
    data = pa.table({"src_ip": [r[0] for r in rows], "dst_ip": [r[1] for r in rows],
                     "src_port": pa.array([r[2] for r in rows], pa.uint16()), "dst_port": pa.array(dport, pa.float64())})
    pq.write_table(data, tmp_path / "flows.parquet")
    _, table, account = read_all(tmp_path / "flows.parquet")
    assert table.column("sport").to_pylist() == [r[2] for r in rows]
    assert table.column("dport").to_pylist() == [-1 if d != d else int(d) for d in dport]
    assert account.records_scanned == len(rows) and accounted(account) and not account.rejected


@pytest.mark.parametrize("kind", ["parquet", "arrow"])
def test_nested_ecs_columns_are_found(tmp_path, kind):
    """ECS-style structs (source.ip inside a source column) are columns like flat ones;
    a column whose type has no text form is a clear error, not a crash."""
    rows = _sample_rows(20)
    data = pa.table({
        "source": pa.array([{"ip": r[0], "port": r[2]} for r in rows]),
        "destination": pa.array([{"ip": r[1], "port": r[3], "geo": {"country": "XX"}} for r in rows]),
        "network": pa.array([{"transport": r[4]} for r in rows]),
    })
    path = tmp_path / f"flows.{kind}"
    if kind == "parquet":
        pq.write_table(data, path, row_group_size=8)
    else:
        import pyarrow.ipc as ipc

        with ipc.new_file(str(path), data.schema) as writer:
            writer.write_table(data, max_chunksize=8)
    _, table, account = read_all(path)
    assert table.column("src").to_pylist() == [r[0] for r in rows]
    assert table.column("dst").to_pylist() == [r[1] for r in rows]
    assert table.column("sport").to_pylist() == [r[2] for r in rows]
    assert table.column("dport").to_pylist() == [r[3] for r in rows]
    assert table.column("proto").to_pylist() == [{"6": "tcp"}.get(r[4], r[4]) for r in rows]
    assert account.records_scanned == len(rows) and accounted(account)
    pq.write_table(pa.table({"src_ip": pa.array([["10.0.0.1"]]), "dst_ip": ["8.8.8.8"]}), tmp_path / "list.parquet")
    with pytest.raises(InputError, match=r"src_ip \(src\) is of type list"):
        read_all(tmp_path / "list.parquet")


def _address_oracle(value) -> str:
    """What an address column value must read as (ipaddress only): "" for no address."""
    if isinstance(value, int):
        return str(ipaddress.IPv4Address(value)) if 0 <= value < 2**32 else ""
    if isinstance(value, bytes) and len(value) in (4, 16):
        address = ipaddress.ip_address(value)
        mapped = address.ipv4_mapped if address.version == 6 else None
        return str(mapped or address)
    return ""


@settings(max_examples=150, deadline=None)
@given(data=st.data(), int_type=st.sampled_from([pa.int32(), pa.int64(), pa.uint32(), pa.uint64()]))
def test_packed_and_numeric_addresses_read_as_text(data, int_type):
    from connscan.sources import _batch

    info = np.iinfo(int_type.to_pandas_dtype())
    numbers = data.draw(st.lists(st.none() | st.integers(max(int(info.min), -2), min(int(info.max), 2**32 + 1))
                                 | st.integers(int(info.min), int(info.max)), max_size=20))
    assert _batch.address_text(pa.array(numbers, int_type)).to_pylist() == [_address_oracle(v) for v in numbers]
    packed = data.draw(st.lists(st.none() | st.binary(min_size=0, max_size=17) | st.binary(min_size=4, max_size=4)
                                | st.binary(min_size=16, max_size=16).map(lambda b: bytes(10) + b"\xff\xff" + b[:4] if b[0] & 1 else b),
                                max_size=20))
    for column in (pa.array(packed, pa.binary()), pa.array(packed, pa.large_binary()), pa.array(packed, pa.binary()).dictionary_encode()):
        assert _batch.address_text(column).to_pylist() == [_address_oracle(v) for v in packed]
    sixteen = [v for v in packed if v is None or len(v) == 16]
    assert _batch.address_text(pa.array(sixteen, pa.binary(16))).to_pylist() == [_address_oracle(v) for v in sixteen]


def test_parquet_with_packed_addresses(tmp_path):
    """Flow collectors' Parquet: addresses as 16-byte values (IPv4 mapped) and ports as uint16."""
    rows = _sample_rows(40)
    packed = [ipaddress.IPv6Address(f"::ffff:{r[0]}").packed for r in rows]
    dst = [ipaddress.ip_address(r[1]).packed for r in rows]
    data = pa.table({"src_addr": pa.array(packed, pa.binary(16)), "dst_addr": pa.array(dst, pa.binary()),
                     "src_port": pa.array([r[2] for r in rows], pa.uint16())})
    pq.write_table(data, tmp_path / "flows.parquet")
    _, table, account = read_all(tmp_path / "flows.parquet")
    assert table.column("src").to_pylist() == [r[0] for r in rows]
    assert table.column("dst").to_pylist() == [str(ipaddress.ip_address(r[1])) for r in rows]
    assert account.records_scanned == len(rows) and accounted(account)


# --------------------------------------------------------------------------- compression, stdin, errors


def _zeek_bytes():
    return (TEST_DATA / FLOWS / "core.history-flip__conn.log").read_bytes()


@pytest.mark.parametrize(
    "compress",
    [gzip.compress, bz2.compress, lzma.compress, lambda b: zstandard.ZstdCompressor().compress(b)],
    ids=["gzip", "bz2", "xz", "zstd"],
)
def test_compressed_inputs_read_like_plain(tmp_path, compress):
    plain = (TEST_DATA / FLOWS / "nfdump-v5-tail.csv").read_bytes()
    path = tmp_path / "flows.bin"
    path.write_bytes(compress(plain))
    (tmp_path / "plain.csv").write_bytes(plain)
    _, expected, _ = read_all(tmp_path / "plain.csv", options=ReaderOptions(tz="UTC"))
    fmt, table, account = read_all(path, options=ReaderOptions(tz="UTC"))
    assert fmt == "nfdump-csv" and table.equals(expected) and not account.errors


def _many_rows_csv(n):
    lines = ["src_ip,dst_ip,src_port,dst_port,proto"]
    lines += [f"10.0.{i // 256 % 256}.{i % 256},198.51.100.{i % 200},{1024 + i % 60000},443,tcp" for i in range(n)]
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.parametrize(
    "compress",
    [gzip.compress, bz2.compress, lzma.compress, lambda b: zstandard.ZstdCompressor().compress(b)],
    ids=["gzip", "bz2", "xz", "zstd"],
)
def test_truncated_compressed_input_reports_the_damage(tmp_path, compress):
    plain = _many_rows_csv(50_000)
    packed = compress(plain)
    path = tmp_path / "cut.bin"
    path.write_bytes(packed[: len(packed) * 2 // 3])
    fmt, table, account = read_all(path, options=ReaderOptions(block_bytes=1 << 16))
    assert account.damaged and account.errors and "damaged" in account.errors[0]
    assert 0 < table.num_rows < 50_000  # records up to the damage were read
    # every record read is a prefix of the file, in order
    assert table.column("row").to_pylist() == list(range(1, table.num_rows + 1))
    expected_src = [f"10.0.{i // 256 % 256}.{i % 256}" for i in range(table.num_rows)]
    assert table.column("src").to_pylist() == expected_src
    assert accounted(account)


def test_stdin_is_read_and_detected():
    data = io.BytesIO(gzip.compress(_zeek_bytes()))
    fmt, table, account = read_all("-", stdin=data)
    assert fmt == "zeek-tsv" and table.num_rows == 1 and account.name == "<stdin>"


def test_unknown_and_unreadable_inputs_are_clear_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("hello world\nnothing to see\n")
    with pytest.raises(InputError, match="notes.txt: unknown flow format"):
        open_source(tmp_path / "notes.txt")
    with pytest.raises(InputError, match="missing.csv: cannot read"):
        open_source(tmp_path / "missing.csv")
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(InputError, match="empty input"):
        open_source(tmp_path / "empty.csv")
    with pytest.raises(InputError, match="unknown input format"):
        open_source(tmp_path / "notes.txt", "excel")


def test_detect_format_on_heads():
    assert detect_format(b"ts,te,td,sa,da,sp,dp,pr,flg\n") == "nfdump-csv"
    assert detect_format(b"#separator \\x09\n#fields\tts\n") == "zeek-tsv"
    assert detect_format(b'{"ts":1.0,"id.orig_h":"10.0.0.1","id.resp_h":"8.8.8.8"}\n') == "zeek-json"
    assert detect_format(b'{"timestamp":"2024-01-01T00:00:00+0000","event_type":"flow","src_ip":"1.1.1.1"}\n') == "suricata-eve"
    assert detect_format(b"2 123 eni-1 1.1.1.1 2.2.2.2 1 2 6 1 1 1 2 ACCEPT OK\n") == "aws-vpc"
    assert detect_format(b"PAR1....") == "parquet"
    assert detect_format(b"just words\n") is None


def test_non_ascii_bytes_in_a_field_are_rejected(tmp_path):
    path = tmp_path / "bytes.csv"
    path.write_bytes(b"ts,te,td,sa,da,sp,dp,pr\n2024-01-01 00:00:00,x,0,10.0.0.\xff,8.8.8.8,1,2,TCP\n2024-01-01 00:00:00,x,0,10.0.0.1,8.8.8.8,1,2,TCP\n")
    _, table, account = read_all(path, options=ReaderOptions(tz="UTC"))
    assert table.column("row").to_pylist() == [2]
    assert [r[:2] for r in account.take_rejects()] == [(1, "non-text bytes in an address, port, protocol or time field")]


# --------------------------------------------------------------------------- column conversions


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.one_of(st.none(), st.sampled_from(["tcp", "TCP", "Udp", "6", "17", "99", " udp ", "ipv6-icmp", "", "-", "(empty)", "Ünk", "İ", "ICMP6"])), max_size=30))
def test_normalise_proto_equals_the_per_value_names(values):
    from connscan.sources import _batch

    # the reference: the plain per-value function on every row
    expected = [_batch.proto_name(v or "") for v in values]
    assert _batch.normalise_proto(pa.array(values, pa.string())).to_pylist() == expected


def _pyarrow_swallows(line: bytes, delimiter: bytes) -> bool:
    """Independent oracle: whether pyarrow's CSV parser reads the line after ``line`` into
    one of its values (the three lines then make fewer than three records)."""
    rows = []
    table = pacsv.read_csv(io.BytesIO(b"A\n" + line + b"\nZ\n"), pacsv.ReadOptions(autogenerate_column_names=True),
                           pacsv.ParseOptions(delimiter=delimiter.decode(), invalid_row_handler=lambda row: rows.append(1) or "skip"))
    return table.num_rows + len(rows) < 3


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=(st.text(st.characters(max_codepoint=0x7F, blacklist_characters="\r\n"), max_size=12)
             | st.text(alphabet='"a,;x ', max_size=14)).map(str.encode),
       delimiter=st.sampled_from([b",", b";"]))
def test_open_quote_lines_agree_with_pyarrow(flowparse, line, delimiter):
    """A line is reported exactly when pyarrow would read the next line into its value."""
    if not line or line.isspace():  # pyarrow skips blank lines
        return
    starts, ends = flowparse.open_quote_lines(line, ord(delimiter))
    assert (len(starts) == 1) == _pyarrow_swallows(line, delimiter)
    assert len(starts) == 0 or (starts.tolist(), ends.tolist()) == ([0], [len(line)])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(block=st.text(alphabet='"a,\r\n\t', max_size=60).map(str.encode))
def test_open_quote_lines_equal_the_twin_on_blocks(flowparse, block):
    from connscan import _flowparse_py

    expected = _flowparse_py.open_quote_lines(block, ord(","))
    starts, ends = flowparse.open_quote_lines(block, ord(","))
    assert (starts.tolist(), ends.tolist()) == (expected[0].tolist(), expected[1].tolist())
    for start, end in zip(starts.tolist(), ends.tolist()):  # whole lines, without their breaks
        assert start == 0 or block[start - 1] in b"\r\n"
        assert end == len(block) or block[end] in b"\r\n"
        assert not set(block[start:end]) & set(b"\r\n")
        assert _pyarrow_swallows(block[start:end], b",")


def test_stray_quote_rejects_its_line_only(tmp_path):
    """An open quote in a CSV flow line rejects that record; the lines after it are read
    (a CSV parser alone would have read them into the open value)."""
    path = tmp_path / "flows.csv"
    lines = ["10.0.0.1,8.8.8.8,\"open", "10.0.0.2,8.8.4.4,b\"", "10.0.0.3,1.1.1.1,\"a,b\"", "10.0.0.4,9.9.9.9,\"x\"\"", "10.0.0.5,2.2.2.2,c"]
    path.write_text("src_ip,dst_ip,note\n" + "\r\n".join(lines) + "\n")
    _, table, account = read_all(path, "csv", options=ReaderOptions(columns={"src": "src_ip", "dst": "dst_ip"}))
    assert table.column("src").to_pylist() == ["10.0.0.2", "10.0.0.3", "10.0.0.5"]
    assert table.column("row").to_pylist() == [2, 3, 5]
    assert account.records_read == 5 and accounted(account)
    assert account.rejected == {"unbalanced quote (a value would run into the next lines)": 2}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.text(alphabet="tcpUDPiIgG6-é ", max_size=5), max_size=30), cut=st.integers(0, 5))
def test_lower_letters_matches_the_string_methods(flowparse, values, cut):
    """Native and twin against str methods, on slices of an Arrow column (offset != 0)."""
    column = pa.array(values, pa.string()).slice(min(cut, len(values)))
    kept = values[min(cut, len(values)):]
    offsets = np.frombuffer(column.buffers()[1], np.int32, len(column) + 1, column.offset * 4)
    data = np.frombuffer(column.buffers()[2], np.uint8) if column.buffers()[2] is not None else np.zeros(0, np.uint8)
    letters, lowered = flowparse.lower_letters(offsets, data)
    assert letters == all(v.isascii() and v.isalpha() for v in kept)
    if letters and lowered is not None:
        assert [bytes(lowered[a:b]).decode() for a, b in zip(offsets[:-1], offsets[1:])] == [v.lower() for v in kept]
    assert (lowered is None) == (not letters or all(v.islower() for v in kept))
    from connscan.sources import _batch

    assert _batch.normalise_proto(column).to_pylist() == [_batch.proto_name(v) for v in kept]


def test_lower_letters_refuses_offsets_outside_the_data(flowparse):
    with pytest.raises(ValueError, match="outside"):
        flowparse.lower_letters(np.array([0, 3, 9], np.int32), np.frombuffer(b"tcpudp", np.uint8))
    with pytest.raises(ValueError, match="outside"):
        flowparse.lower_letters(np.array([-2, 3], np.int32), np.frombuffer(b"tcpudp", np.uint8))
    assert flowparse.lower_letters(np.array([3, 1], np.int32), np.frombuffer(b"tcpudp", np.uint8)) == (False, None)


_PORT_TYPES = [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64(),
               pa.float32(), pa.float64()]


@given(data=st.data(), port_type=st.sampled_from(_PORT_TYPES), nulls=st.booleans())
def test_parse_ports_of_numeric_columns(data, port_type, nulls):
    """Any integer width and sign, and floats (pandas' ports with gaps): each value decided
    as written out per value; NaN and null are unknown, never malformed."""
    from connscan.sources import _batch

    if pa.types.is_floating(port_type):
        element = st.one_of(st.floats(-3, 70000, width=port_type.bit_width, allow_nan=False), st.integers(-3, 70000).map(float),
                            st.just(float("nan")))
    else:
        info = np.iinfo(port_type.to_pandas_dtype())
        element = st.one_of(st.integers(max(int(info.min), -3), min(int(info.max), 70000)),
                            st.integers(int(info.min), int(info.max)))
    values = data.draw(st.lists(element, max_size=30))
    column = pa.array([None if nulls and i % 3 == 0 else v for i, v in enumerate(values)], port_type)

    def port(v):  # (value, malformed)
        if v is None or v != v:
            return -1, False
        if v != int(v) or not -1 <= v <= 65535:
            return -1, True
        return int(v), False

    ports, bad = _batch.parse_ports(column)
    expected = [port(v) for v in column.to_pylist()]
    assert ports.tolist() == [value for value, _ in expected]
    assert bad.tolist() == [malformed for _, malformed in expected]


def test_parse_ports_of_text_with_gaps_and_other_types():
    from connscan.sources import _batch

    ports, bad = _batch.parse_ports(pa.array(["80", " 443 ", "-", "x", None, "65536"]))
    assert ports.tolist() == [80, 443, -1, -1, -1, -1] and bad.tolist() == [False, False, False, True, False, True]
    ports, bad = _batch.parse_ports(pa.array([True, None]))  # no port number: malformed, null unknown
    assert ports.tolist() == [-1, -1] and bad.tolist() == [True, False]


# wall-clock instants next to zone transitions (gaps, overlaps, 30-minute shifts)
_TRANSITIONS = [
    ("Europe/Berlin", datetime(2024, 3, 31, 2, 30)),
    ("Europe/Berlin", datetime(2024, 10, 27, 2, 30)),
    ("America/New_York", datetime(2024, 11, 3, 1, 30)),
    ("Australia/Lord_Howe", datetime(2024, 4, 7, 1, 45)),
    ("Australia/Lord_Howe", datetime(2024, 10, 6, 2, 15)),
    ("Pacific/Apia", datetime(2011, 12, 30, 12, 0)),  # a skipped day
    ("Asia/Kathmandu", datetime(2024, 6, 1, 12, 0)),  # no transition, odd offset
]


@settings(max_examples=200, deadline=None)
@given(
    where=st.sampled_from(_TRANSITIONS),
    window_s=st.sampled_from([1, 90, 3600, 4 * 3600, 3 * 86400]),
    fractions=st.lists(st.one_of(st.none(), st.floats(-1, 1)), min_size=1, max_size=40),
)
def test_wallclock_to_utc_equals_the_zone_conversion(where, window_s, fractions):
    from connscan.sources import _batch

    tz, anchor = where
    base = int((anchor - datetime(1970, 1, 1)).total_seconds()) * 1_000_000
    naive = pa.array([None if f is None else base + int(f * window_s * 1_000_000) for f in fractions], pa.timestamp("us"))
    # the reference: Arrow's per-row zone conversion with the same gap/overlap rule
    expected = pc.assume_timezone(naive, tz, ambiguous="earliest", nonexistent="earliest")
    assert _batch.wallclock_to_utc(naive, tz).cast(pa.int64()).to_pylist() == expected.cast(pa.int64()).to_pylist()
