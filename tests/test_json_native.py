"""The JSON readers' native path (pyarrow parses a block of Suricata or Zeek JSON lines)
gives exactly what the line-by-line path (json.loads per line) gives: the same batches, the
same skipped and rejected records with the same reasons and texts."""
from __future__ import annotations

import json

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connscan.sources import BATCH_SCHEMA, ReaderOptions, jsonlines, open_source

ADDRESSES = st.sampled_from(["10.0.0.1", "8.8.8.8", "2001:db8::1", "::ffff:1.2.3.4", "", "x", "10.0.0.300"])
PORTS = st.one_of(st.none(), st.integers(-3, 70000), st.sampled_from(["80", "-", "", True]), st.floats(allow_nan=False, width=32))
TIME_TEXTS = st.one_of(
    st.sampled_from(["2024-03-01T11:59:58.123456+0000", "2024-03-01T11:59:58Z", "2024-03-01 11:59:58+02:00",
                     "2024-03-01T11:59:58", "2024-02-30T00:00:00+0000", "9999-12-31T23:59:59.999999+0000",
                     "2024-03-01T11:59:58.123456789+0000", "garbage"]),
    # the plain zoned form with any two digits: dates and hours out of range included
    st.builds("20{:02d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}.{:d}{}".format, *[st.integers(0, 99)] * 6, st.integers(0, 999999),
              st.sampled_from(["Z", "+0000", "-05:30", "+14:00", "+2400"])),
)
TIMES = st.one_of(st.none(), TIME_TEXTS, st.integers(-10**12, 10**13), st.floats(allow_nan=True, allow_infinity=True))


def _suricata_event():
    flow = st.one_of(st.none(), st.fixed_dictionaries({}, optional={"start": TIMES, "age": st.integers(0, 9)}), st.just("x"))
    return st.fixed_dictionaries({}, optional={
        "timestamp": TIMES, "event_type": st.sampled_from(["flow", "alert", "dns", "stats", None]),
        "src_ip": ADDRESSES, "dest_ip": ADDRESSES, "src_port": PORTS, "dest_port": PORTS,
        "proto": st.sampled_from(["TCP", "UDP", "IPv6-ICMP", 6, None]), "flow": flow,
    })


def _zeek_record():
    plain = st.fixed_dictionaries({"id.orig_h": ADDRESSES, "id.resp_h": ADDRESSES}, optional={
        "ts": TIMES, "id.orig_p": PORTS, "id.resp_p": PORTS, "proto": st.sampled_from(["tcp", "udp", "icmp", None]),
        "uid": st.just("C1")})
    nested = st.builds(lambda h, p: {"ts": 1.5, "id": {"orig_h": h, "resp_h": "8.8.8.8", "orig_p": p}}, ADDRESSES, PORTS)
    scoped = st.builds(lambda h: {"ts": 2.5, "id_orig_h": h, "id_resp_h": "8.8.8.8"}, ADDRESSES)
    return st.one_of(plain, plain, plain, nested, scoped, st.just({"ts": 1.0, "msg": "no addresses"}))


def _lines(records):
    """JSON lines of the records, with now and then a line pyarrow and json.loads read
    differently or not at all."""
    odd = st.sampled_from([b"", b"   ", b"not json", b"[1, 2]", b'{"a": 1} {"b": 2}', b'{"src_ip": "1.1.1.1", "src_ip": "2.2.2.2"}',
                           b'{"src_ip": "\\ud800", "dest_ip": "8.8.8.8"}', b'{"id.orig_h": "\xff", "id.resp_h": "8.8.8.8"}',
                           b'{"id.orig_h": "10.0.0.1", "id.resp_h": "8.8.8.8", "ts": 1700000000}\r', b"{"])
    line = st.one_of(records.map(lambda r: json.dumps(r).encode()), records.map(lambda r: json.dumps(r).encode()), odd)
    return st.lists(line, max_size=30).flatmap(lambda ls: st.sampled_from([b"\n", b"\r\n"]).map(lambda end: end.join(ls) + end))


def _read(path, fmt, native: bool, monkeypatch, event_types=None):
    with monkeypatch.context() as patch:
        if not native:
            patch.setattr(jsonlines, "_native_table", lambda block, schema: None)
        source = open_source(path, fmt, ReaderOptions(event_types=event_types, block_bytes=256))
        table = pa.Table.from_batches(list(source.batches()), schema=BATCH_SCHEMA)
    account = source.account
    return table.to_pylist(), (account.records_read, account.records_scanned, dict(account.skipped), dict(account.rejected),
                               sorted(account.pending_rejects))


@pytest.mark.parametrize("fmt, records", [("suricata-eve", _suricata_event()), ("zeek-json", _zeek_record())])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_native_json_blocks_equal_line_by_line(tmp_path, monkeypatch, fmt, records, data):
    content = data.draw(_lines(records))
    event_types = data.draw(st.sampled_from([None, frozenset({"flow"}), frozenset({"alert", "dns"})])) if fmt == "suricata-eve" else None
    path = tmp_path / "events.json"
    path.write_bytes(content)
    assert _read(path, fmt, True, monkeypatch, event_types) == _read(path, fmt, False, monkeypatch, event_types)


@pytest.mark.parametrize("fmt, line", [
    ("suricata-eve", {"timestamp": "2024-03-01T12:00:00.5+0000", "event_type": "flow", "src_ip": "10.0.0.1", "src_port": 5000,
                      "dest_ip": "8.8.8.8", "dest_port": 53, "proto": "UDP", "flow": {"start": "2024-03-01T11:59:58.25+0000"}}),
    ("zeek-json", {"ts": 1709294398.25, "id.orig_h": "10.0.0.1", "id.orig_p": 5000, "id.resp_h": "8.8.8.8", "id.resp_p": 53, "proto": "udp"}),
])
def test_clean_blocks_take_the_native_path(tmp_path, monkeypatch, fmt, line):
    """Ordinary logs are read by pyarrow (else the test above would compare the line path
    with itself), and give the values written."""
    path = tmp_path / "events.json"
    path.write_text((json.dumps(line) + "\n") * 3000)
    native = []
    real = jsonlines._native_table
    monkeypatch.setattr(jsonlines, "_native_table", lambda block, schema: native.append(real(block, schema)) or native[-1])
    source = open_source(path, fmt, ReaderOptions())
    table = pa.Table.from_batches(list(source.batches()), schema=BATCH_SCHEMA)
    assert native and all(t is not None for t in native)
    assert table.num_rows == 3000 and table.column("row").to_pylist() == list(range(1, 3001))
    first = table.slice(0, 1).to_pylist()[0]
    assert (first["src"], first["sport"], first["dst"], first["dport"], first["proto"]) == ("10.0.0.1", 5000, "8.8.8.8", 53, "udp")
    assert first["start"].isoformat() == "2024-03-01T11:59:58.250000+00:00"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(TIME_TEXTS, TIME_TEXTS.map(lambda t: t[:19]), TIME_TEXTS.map(lambda t: f" {t} ")), min_size=1, max_size=8))
def test_time_columns_equal_value_by_value(texts):
    from connscan.sources import tabular

    column = pa.array(texts, pa.string())
    assert jsonlines.zoned_micros_column(column).to_pylist() == [jsonlines.zoned_micros(text) for text in texts]
    assert jsonlines.json_time_column(column).to_pylist() == [jsonlines.json_time(text) for text in texts]
    # CSV/Parquet start columns (generic_times): spaces around the text allowed
    assert jsonlines.iso_micros_column(column, tabular._iso_micros, naive_utc=True).to_pylist() == list(map(tabular._iso_micros, texts))


@pytest.mark.parametrize("name, fmt", [
    ("suricata-eve/eve-MAGNC-suricata_data_training-2023-02-28.json", "suricata-eve"),
    ("suricata-eve/eve-alaajili-EVE-Json-Parser-2022-11-18.json", "suricata-eve"),
    ("zeek-wrccdc-brimdata/zeek-json_dns.json.gz", "zeek-json"),
    ("zeek-wrccdc-brimdata/zeek-json_ssl.json.gz", "zeek-json"),
])
@pytest.mark.parametrize("block_bytes", [1 << 16, 4 << 20])
def test_native_equals_line_by_line_on_real_logs(shared_data, monkeypatch, name, fmt, block_bytes):
    path = shared_data / "flows" / name
    real, parsed = jsonlines._native_table, []

    def read(native):
        with monkeypatch.context() as patch:
            patch.setattr(jsonlines, "_native_table", (lambda b, s: parsed.append(real(b, s)) or parsed[-1]) if native else (lambda b, s: None))
            source = open_source(path, fmt, ReaderOptions(block_bytes=block_bytes))
            table = pa.Table.from_batches(list(source.batches()), schema=BATCH_SCHEMA)
        account = source.account
        return table, (account.records_read, dict(account.skipped), dict(account.rejected))

    native, line_by_line = read(True), read(False)
    assert native[0].num_rows > 100 and any(table is not None for table in parsed)  # pyarrow read some blocks
    assert native[0].equals(line_by_line[0]) and native[1] == line_by_line[1]
