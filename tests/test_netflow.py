"""NetFlow v5/v9/IPFIX reader: packets built here from the specs, real exports, and damage.

References: the packets encoded in this file (RFC 3954, RFC 7011 and the v5 record layout,
written with struct, independent of the reader), the 5-tuples that the PyPI ``netflow``
package decoded from the logstash samples, nfdump 1.7.1's CSV/JSON exports of the softflowd
captures, and the expectations in logstash's own spec.
"""
from __future__ import annotations

import collections
import csv
import datetime as dt
import io
import ipaddress
import json
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connscan.sources import BATCH_SCHEMA, open_source
from connscan.sources._batch import PROTO_NAMES  # the contract's protocol names
from connscan.sources.netflow import (
    SOURCE_METADATA_KEY,
    FileAccount,
    NetflowSession,
    finish_session,
    read_netflow,
    sniff,
)

FIXTURES = Path(__file__).parent / "data" / "netflow"
LOGSTASH = "flows/netflow-logstash-codec"
SOFTFLOWD = "flows/netflow-softflowd-from-zeek-traces"
UTC = dt.timezone.utc

# --------------------------------------------------------------------------- encoders


def v5_packet(flows, uptime=1_000_000, secs=1_600_000_000, nsecs=0) -> bytes:
    header = struct.pack(">HHIIIIBBH", 5, len(flows), uptime, secs, nsecs, 0, 0, 0, 0)
    records = b"".join(
        struct.pack(
            ">4s4s4sHHIIIIHHBBBBHHBBH",
            f["src"].packed, f["dst"].packed, bytes(4), 0, 0, 1, 64, f["first"], f["first"] + 5,
            f["sport"], f["dport"], 0, 0, f["proto"], 0, 0, 0, 0, 0, 0,
        )
        for f in flows
    )
    return header + records


def pad4(body: bytes) -> bytes:
    return body + bytes(-len(body) % 4)


def flowset(set_id: int, body: bytes, pad=True) -> bytes:
    body = pad4(body) if pad else body
    return struct.pack(">HH", set_id, 4 + len(body)) + body


V4_FIELDS = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (22, 4), (21, 4)]
V6_FIELDS = [(27, 16), (28, 16), (7, 2), (11, 2), (4, 1), (22, 4), (21, 4)]


def template_body(template_id: int, fields) -> bytes:
    return struct.pack(">HH", template_id, len(fields)) + b"".join(struct.pack(">HH", *f) for f in fields)


def v9_record(f) -> bytes:
    return f["src"].packed + f["dst"].packed + struct.pack(">HHBII", f["sport"], f["dport"], f["proto"],
                                                          f["first"], f["first"] + 5)


def v9_packet(flowsets, uptime=1_000_000, secs=1_600_000_000, source_id=7) -> bytes:
    return struct.pack(">HHIIII", 9, len(flowsets), uptime, secs, 0, source_id) + b"".join(flowsets)


def ipfix_message(sets, export_time=1_600_000_000, domain=3) -> bytes:
    body = b"".join(sets)
    return struct.pack(">HHIII", 10, 16 + len(body), export_time, 0, domain) + body


def expected(flows, uptime=1_000_000, secs=1_600_000_000):
    """The rows the reader must produce, computed from the flows (not by the reader)."""
    return [
        {
            "src": str(f["src"]), "dst": str(f["dst"]), "sport": f["sport"], "dport": f["dport"],
            "proto": PROTO_NAMES.get(f["proto"], str(f["proto"])),
            "start": dt.datetime.fromtimestamp(secs, UTC) - dt.timedelta(milliseconds=uptime - f["first"]),
        }
        for f in flows
    ]


def flow_key(row):
    return (row["src"], row["dst"], row["sport"], row["dport"], row["proto"], row["start"])


def rows(batches):
    out = []
    for batch in batches:
        assert batch.schema.equals(BATCH_SCHEMA)
        out.extend(batch.to_pylist())
    return out


def strip_rows(decoded):
    return [{k: v for k, v in r.items() if k != "row"} for r in decoded]


def ethernet_udp(payload: bytes, src="192.0.2.9", dst="192.0.2.1", vlan=False) -> bytes:
    udp = struct.pack(">HHHH", 2055, 9995, 8 + len(payload), 0) + payload
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed) + udp
    tag = struct.pack(">HH", 0x8100, 42) if vlan else b""
    return bytes(6) + bytes(6) + tag + struct.pack(">H", 0x0800) + ip


def pcap_file(frames, linktype=1) -> bytes:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)]
    for i, frame in enumerate(frames):
        out.append(struct.pack("<IIII", 1_600_000_000 + i, 0, len(frame), len(frame)) + frame)
    return b"".join(out)


def pcapng_file(frames, linktype=1) -> bytes:
    def block(block_type, body):
        body = pad4(body)
        return struct.pack("<II", block_type, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))

    out = [block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)),
           block(1, struct.pack("<HHI", linktype, 0, 65535))]
    for frame in frames:
        out.append(block(6, struct.pack("<IIIII", 0, 0, 0, len(frame), len(frame)) + frame))
    return b"".join(out)


# --------------------------------------------------------------------------- strategies

ipv4 = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
ipv6 = st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1)).filter(lambda a: a.ipv4_mapped is None)
port = st.integers(0, 65535)


def flows_of(address):
    flow = st.fixed_dictionaries({
        "src": address, "dst": address, "sport": port, "dport": port,
        "proto": st.sampled_from([1, 6, 17, 47, 132]), "first": st.integers(0, 999_000),
    })
    return st.lists(flow, min_size=1, max_size=30)


# --------------------------------------------------------------------------- packets built here


@settings(max_examples=60, deadline=None)
@given(flows_of(ipv4))
def test_v5_round_trip(flows):
    decoded = rows(read_netflow(io.BytesIO(v5_packet(flows)), "mem"))
    assert strip_rows(decoded) == expected(flows)
    assert [r["row"] for r in decoded] == list(range(1, len(flows) + 1))


@settings(max_examples=60, deadline=None)
@given(flows_of(ipv4), flows_of(ipv6), st.booleans())
def test_v9_round_trip_templates_before_or_after_data(flows4, flows6, data_first):
    templates = flowset(0, template_body(300, V4_FIELDS) + template_body(301, V6_FIELDS))
    data = [flowset(300, b"".join(map(v9_record, flows4))), flowset(301, b"".join(map(v9_record, flows6)))]
    packets = [v9_packet(data), v9_packet([templates])] if data_first else [v9_packet([templates] + data)]
    session = NetflowSession()
    decoded = []
    for i, packet in enumerate(packets):
        decoded += rows(batch for _, batch in session.read(io.BytesIO(packet), f"file{i}"))
    session.finish()
    assert sorted(strip_rows(decoded), key=flow_key) == sorted(expected(flows4) + expected(flows6), key=flow_key)
    assert session.account("file0").rejected == collections.Counter()


def ipfix_varlen_record(f, name: bytes, long_name: bool) -> bytes:
    # fields: src4, enterprise element (4 bytes, PEN 9), dst4, varlen string, sport, dport, proto, start ms
    length = (b"\xff" + struct.pack(">H", len(name))) if long_name else bytes([len(name)])
    return (f["src"].packed + b"ENTR" + f["dst"].packed + length + name
            + struct.pack(">HHBQ", f["sport"], f["dport"], f["proto"], f["start_ms"]))


IPFIX_FIELDS = struct.pack(">HH", 8, 4) + struct.pack(">HHI", 0x8000 | 12, 4, 9) + struct.pack(">HH", 12, 4) \
    + struct.pack(">HH", 82, 65535) + struct.pack(">HHHHHHHH", 7, 2, 11, 2, 4, 1, 152, 8)


@settings(max_examples=60, deadline=None)
@given(flows_of(ipv4), st.binary(max_size=300), st.booleans())
def test_ipfix_variable_length_and_enterprise_fields(flows, name, long_name):
    for f in flows:
        f["start_ms"] = 1_500_000_000_000 + f["first"]
    template = flowset(2, struct.pack(">HH", 400, 8) + IPFIX_FIELDS, pad=False)
    data = flowset(400, b"".join(ipfix_varlen_record(f, name, long_name) for f in flows), pad=False)
    reader = read_netflow(io.BytesIO(ipfix_message([data]) + ipfix_message([template])), "mem")
    decoded = rows(reader)
    # The enterprise element (PEN 9, id 12) must not be taken for destinationIPv4Address.
    assert [(r["src"], r["dst"], r["sport"], r["dport"]) for r in decoded] == [
        (str(f["src"]), str(f["dst"]), f["sport"], f["dport"]) for f in flows]
    assert [r["start"] for r in decoded] == [
        dt.datetime.fromtimestamp(f["start_ms"] / 1000, UTC) for f in flows]
    assert reader.account.records_read == 0


def test_ipfix_uptime_starts_use_the_options_record_init_time():
    options = flowset(3, struct.pack(">HHHHHHH", 500, 2, 1, 149, 4, 160, 8), pad=False)
    init_ms = 1_700_000_000_000
    option_data = flowset(500, struct.pack(">IQ", 3, init_ms), pad=False)
    fields = [(8, 4), (12, 4), (22, 4), (21, 4)]
    template = flowset(2, template_body(501, fields), pad=False)
    records = struct.pack(">4s4sII", bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 5000, 6000)
    wrapped = struct.pack(">4s4sII", bytes([10, 0, 0, 3]), bytes([10, 0, 0, 4]), 2**32 - 1000, 500)
    data = flowset(501, records + wrapped, pad=False)
    reader = read_netflow(io.BytesIO(ipfix_message([options, option_data, template, data])), "mem")
    decoded = rows(reader)
    base = dt.datetime.fromtimestamp(init_ms / 1000, UTC)
    assert [r["start"] for r in decoded] == [base + dt.timedelta(milliseconds=5000),
                                            base - dt.timedelta(milliseconds=1000)]
    assert [r["sport"] for r in decoded] == [-1, -1] and [r["proto"] for r in decoded] == ["", ""]
    assert reader.account.skipped == {"options record": 1}


def test_template_withdrawal_and_unknown_template_are_rejected_not_guessed():
    fields = [(8, 4), (12, 4)]
    record = bytes([192, 0, 2, 1, 198, 51, 100, 1])
    message = ipfix_message([
        flowset(2, template_body(600, fields), pad=False),
        flowset(600, record, pad=False),
        flowset(2, struct.pack(">HH", 600, 0), pad=False),  # withdrawal
        flowset(600, record, pad=False),
    ])
    reader = read_netflow(io.BytesIO(message), "mem")
    assert [(r["src"], r["row"]) for r in rows(reader)] == [("192.0.2.1", 1)]
    assert reader.account.rejected == {"unknown template": 1}
    assert reader.account.rejects[0][0] == 2


def test_v9_wrapped_uptime_counts_from_the_previous_epoch():
    flow = {"src": ipaddress.IPv4Address("10.1.1.1"), "dst": ipaddress.IPv4Address("8.8.8.8"), "sport": 1,
            "dport": 53, "proto": 17, "first": 2**32 - 2000}
    record = flow["src"].packed + flow["dst"].packed + struct.pack(">HHBII", 1, 53, 17, 2**32 - 2000, 3000)
    packet = v9_packet([flowset(0, template_body(300, V4_FIELDS)), flowset(300, record)], uptime=5000)
    (decoded,) = rows(read_netflow(io.BytesIO(packet), "mem"))
    assert decoded["start"] == dt.datetime.fromtimestamp(1_600_000_000, UTC) - dt.timedelta(milliseconds=7000)


def test_templates_are_scoped_by_source_id():
    record = bytes([192, 0, 2, 1, 198, 51, 100, 1])
    template = flowset(0, template_body(300, [(8, 4), (12, 4)]))
    session = NetflowSession()
    packets = v9_packet([template], source_id=1) + b""
    list(session.read(io.BytesIO(packets), "a"))
    list(session.read(io.BytesIO(v9_packet([flowset(300, record)], source_id=2)), "b"))
    session.finish()
    assert session.account("b").rejected == {"unknown template": 1}


# --------------------------------------------------------------------------- captures


@pytest.mark.parametrize("container", ["pcap", "pcapng", "pcap-vlan", "pcap-raw-ip", "pcap-linux-sll", "pcap-null",
                                       "pcap-ipv6"])
def test_capture_containers_give_the_same_flows(container):
    flows = [{"src": ipaddress.IPv4Address(f"10.0.0.{i}"), "dst": ipaddress.IPv4Address("203.0.113.5"),
              "sport": 1000 + i, "dport": 443, "proto": 6, "first": 900_000 + i} for i in range(1, 6)]
    payloads = [v5_packet(flows[:2]), v5_packet(flows[2:])]
    if container == "pcap":
        data = pcap_file([ethernet_udp(p) for p in payloads])
    elif container == "pcapng":
        data = pcapng_file([ethernet_udp(p) for p in payloads])
    elif container == "pcap-vlan":
        data = pcap_file([ethernet_udp(p, vlan=True) for p in payloads])
    elif container == "pcap-raw-ip":
        data = pcap_file([ethernet_udp(p)[14:] for p in payloads], linktype=101)
    elif container == "pcap-linux-sll":  # packet type, ARPHRD, address length, address, protocol
        data = pcap_file([struct.pack(">HHH8sH", 0, 1, 6, bytes(8), 0x0800) + ethernet_udp(p)[14:]
                          for p in payloads], linktype=113)
    elif container == "pcap-null":  # BSD loopback: address family in host byte order
        data = pcap_file([struct.pack("=I", 2) + ethernet_udp(p)[14:] for p in payloads], linktype=0)
    else:  # an IPv6 exporter, with a destination-options extension header before UDP
        frames = []
        for p in payloads:
            udp = struct.pack(">HHHH", 2055, 9995, 8 + len(p), 0) + p
            options = struct.pack(">BB6s", 17, 0, bytes(6))
            header = struct.pack(">IHBB16s16s", 6 << 28, len(options) + len(udp), 60, 64,
                                 ipaddress.IPv6Address("2001:db8::9").packed, ipaddress.IPv6Address("2001:db8::1").packed)
            frames.append(bytes(12) + struct.pack(">H", 0x86DD) + header + options + udp)
        data = pcap_file(frames)
    assert sniff(data[:64])
    reader = read_netflow(io.BytesIO(data), "mem")
    assert strip_rows(rows(reader)) == expected(flows)
    assert reader.account.records_read == 0


def test_capture_skips_other_packets_and_rejects_damage():
    good = ethernet_udp(v5_packet([{"src": ipaddress.IPv4Address("10.0.0.1"),
                                    "dst": ipaddress.IPv4Address("10.0.0.2"), "sport": 1, "dport": 2,
                                    "proto": 6, "first": 1}]))
    arp = bytes(12) + struct.pack(">H", 0x0806) + bytes(28)
    tcp = bytearray(good)
    tcp[14 + 9] = 6  # IP protocol TCP
    bad_udp_length = bytearray(good)
    struct.pack_into(">H", bad_udp_length, 14 + 20 + 4, 60000)
    dns = ethernet_udp(b"\x12\x34\x01\x00" + bytes(20))
    data = pcap_file([good, arp, bytes(tcp), bytes(bad_udp_length), dns, good])
    truncated = data + struct.pack("<IIII", 0, 0, 500, 500) + bytes(100)
    reader = read_netflow(io.BytesIO(truncated), "mem")
    assert len(rows(reader)) == 2
    assert reader.account.skipped == {"non-IP packets": 1, "non-UDP packets": 1, "non-NetFlow UDP packets": 1}
    assert reader.account.rejected == {"malformed capture": 2}
    reasons = [text for _, _, text in reader.account.rejects]
    assert any("UDP length 60000" in text for text in reasons)
    assert any("truncated (100 of 500 bytes)" in text for text in reasons)


# --------------------------------------------------------------------------- damage


def sample_packets():
    f = {"src": ipaddress.IPv4Address("10.0.0.1"), "dst": ipaddress.IPv4Address("203.0.113.9"), "sport": 5,
         "dport": 6, "proto": 6, "first": 10}
    v9 = v9_packet([flowset(0, template_body(300, V4_FIELDS)), flowset(300, v9_record(f) * 3)])
    ipfix = ipfix_message([flowset(2, struct.pack(">HH", 400, 8) + IPFIX_FIELDS, pad=False),
                           flowset(400, ipfix_varlen_record(dict(f, start_ms=5), b"abc", True) * 2, pad=False)])
    return [v5_packet([f] * 3), v9, ipfix, pcap_file([ethernet_udp(v9)]), pcapng_file([ethernet_udp(ipfix)])]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sample_packets()), st.data())
def test_damaged_input_is_counted_never_a_crash(packet, data):
    damaged = bytearray(packet)
    for _ in range(data.draw(st.integers(1, 6))):
        position = data.draw(st.integers(0, len(damaged) - 1))
        damaged[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(damaged)))
    reader = read_netflow(io.BytesIO(bytes(damaged[:cut])), "mem")
    decoded = rows(reader)
    for row in decoded:
        ipaddress.ip_address(row["src"]), ipaddress.ip_address(row["dst"])
        assert -1 <= row["sport"] <= 65535 and -1 <= row["dport"] <= 65535
    numbered = sorted([r["row"] for r in decoded] + [row for row, _, _ in reader.account.rejects])
    assert numbered == sorted(set(numbered))  # every row number used once


@pytest.mark.parametrize(("packet", "reason"), [
    (struct.pack(">HH", 5, 3) + bytes(20), "v5 packet of 24 bytes too short for 3 records"),
    (v9_packet([struct.pack(">HH", 0, 2)]), "flowset 0 length 2 does not fit"),
    (v9_packet([struct.pack(">HH", 300, 400) + bytes(8)]), "flowset 300 length 400 does not fit"),
    (v9_packet([flowset(0, struct.pack(">HH", 300, 50) + bytes(8))]), "template 300: 50 fields overrun the set"),
    (v9_packet([flowset(0, template_body(5, [(8, 4)]))]), "template id 5 below 256"),
    (struct.pack(">HHIII", 10, 400, 0, 0, 0) + bytes(8), "IPFIX message length 400 outside 16..24"),
    (struct.pack(">HH", 7, 1) + bytes(40), "not a NetFlow v5/v9/IPFIX packet (version 7)"),
])
def test_malformed_packets_name_their_reason(packet, reason):
    reader = read_netflow(io.BytesIO(packet), "mem")
    assert rows(reader) == []
    assert reader.account.rejected == {"malformed packet": 1}
    assert reason in reader.account.rejects[0][2]


def test_cut_record_is_rejected_and_zero_padding_is_not():
    template = flowset(0, template_body(300, [(8, 4), (12, 4)]))
    record = bytes([192, 0, 2, 1, 198, 51, 100, 1])
    padded = v9_packet([template, flowset(300, record + bytes(3), pad=False)])
    cut = v9_packet([template, flowset(300, record + record[:5], pad=False)])
    reader = read_netflow(io.BytesIO(padded + b""), "padded")
    assert len(rows(reader)) == 1 and not reader.account.rejected
    reader = read_netflow(io.BytesIO(cut), "cut")
    assert len(rows(reader)) == 1
    assert reader.account.rejects == [(2, "malformed record", "template 300: 5 bytes after the last whole record")]


def test_raw_files_split_self_delimiting_packets_only():
    fields = [(8, 4), (12, 4)]
    record = bytes([192, 0, 2, 1, 198, 51, 100, 1])
    messages = ipfix_message([flowset(2, template_body(700, fields), pad=False)]) + b"".join(
        ipfix_message([flowset(700, record, pad=False)]) for _ in range(3))
    reader = read_netflow(io.BytesIO(messages + bytes(40)), "ipfix")  # zero padding at the end
    assert len(rows(reader)) == 3 and not reader.account.rejected
    v9 = v9_packet([flowset(0, template_body(300, fields)), flowset(300, record)])
    reader = read_netflow(io.BytesIO(v9 + b"\x01" * 70000), "v9")
    assert rows(reader) == []
    assert reader.account.rejects == [(1, "malformed packet", "packet 1: more than 65535 bytes without a "
                                                              "v5/IPFIX length (one v9 packet per file)")]


def test_wide_port_and_protocol_fields_out_of_range_are_unknown():
    fields = [(8, 4), (12, 4), (7, 4), (11, 4), (4, 2)]
    record = bytes([192, 0, 2, 1, 198, 51, 100, 1]) + struct.pack(">IIH", 70000, 443, 300)
    packet = v9_packet([flowset(0, template_body(300, fields)), flowset(300, record)])
    (decoded,) = rows(read_netflow(io.BytesIO(packet), "wide"))
    assert (decoded["sport"], decoded["dport"], decoded["proto"]) == (-1, 443, "")


def test_unusable_template_rejects_its_records():
    packet = v9_packet([flowset(0, template_body(300, [(8, 16), (12, 4)])), flowset(300, bytes(20))])
    reader = read_netflow(io.BytesIO(packet), "mem")
    assert rows(reader) == []
    assert reader.account.rejects == [(1, "bad template", "template 300: address element 8 has length 16, not 4")]


# --------------------------------------------------------------------------- shipped fixtures


def test_invalid_logstash_v5_files_are_rejected_with_their_reason():
    for name, count in (("netflow5_test_invalid01.dat", 55582), ("netflow5_test_invalid02.dat", 163)):
        reader = read_netflow(FIXTURES / name, name)
        assert rows(reader) == []
        assert reader.account.rejects == [(1, "malformed packet", f"packet 1: v5 record count {count} outside 1..30")]


def test_logstash_v9_invalid01_is_decodable():
    # Named "invalid" because it crashed logstash; by RFC 3954 it is a valid packet whose header
    # count (2) differs from its 6 records, which many exporters do. Its two flows are real.
    reader = read_netflow(FIXTURES / "netflow9_test_invalid01.dat", "x")
    decoded = rows(reader)
    assert [(r["src"], r["sport"], r["dst"], r["dport"], r["proto"]) for r in decoded] == [
        ("2001:44b8:1118:7200::10", 123, "2001:44b8:4030:cd91:8075:bae:d39d:2621", 123, "udp"),
        ("192.168.0.1", 53, "192.168.0.105", 55575, "udp"),
    ]
    assert reader.account.skipped == {"options record": 1} and not reader.account.rejected


def read_in_order(names):
    session = NetflowSession()
    out = [(owner, batch) for name in names for owner, batch in session.read(FIXTURES / name, name)]
    session.finish()
    return out, session


def test_netscaler_ipfix_matches_logstash_expectations():
    data, tpl = "ipfix_test_netscaler_data.dat", "ipfix_test_netscaler_tpl.dat"
    out, session = read_in_order([tpl, data])  # logstash's order
    decoded = rows(b for _, b in out)
    assert len(decoded) == 3  # logstash: decode.size == 3
    first = decoded[0]
    assert (first["src"], first["sport"], first["dst"], first["dport"], first["proto"]) == (
        "192.168.0.1", 51053, "10.0.0.1", 443, "tcp")
    assert first["start"].replace(microsecond=0) == dt.datetime(2016, 11, 11, 12, 9, 19, tzinfo=UTC)
    assert session.account(data).rejected == {"unknown template": 1}
    late, late_session = read_in_order([data, tpl])  # templates after the data
    assert {owner for owner, _ in late} == {data}
    assert sorted(strip_rows(rows(b for _, b in late)), key=flow_key) == sorted(strip_rows(decoded), key=flow_key)
    assert late_session.account(data).rejected == {"unknown template": 1}


def test_open_source_detects_netflow_and_fills_its_account():
    source = open_source(FIXTURES / "netflow5_test_invalid02.dat")
    assert source.format == "netflow"
    assert list(source.batches()) == []
    assert source.account.records_read == 1 and source.account.rejected == {"malformed packet": 1}
    source = open_source(FIXTURES / "netflow5.dat")
    assert sum(b.num_rows for b in source.batches()) == 30
    assert source.account.records_scanned == 30


def test_deferred_session_routes_late_records_to_their_file():
    session = {"netflow_deferred": True}
    data_name, tpl_name = "asa_data", "asa_tpl"
    data_account, tpl_account = FileAccount(data_name), FileAccount(tpl_name)
    first = list(read_netflow(FIXTURES / "netflow9_test_cisco_asa_1_data.dat", data_name,
                              account=data_account, session=session))
    later = list(read_netflow(FIXTURES / "netflow9_test_cisco_asa_1_tpl.dat", tpl_name,
                              account=tpl_account, session=session))
    finish_session(session)
    assert first == []
    assert {b.schema.metadata[SOURCE_METADATA_KEY] for b in later} == {data_name.encode()}
    assert sum(b.num_rows for b in later) == 14
    assert not data_account.rejected and not tpl_account.rejected


def test_without_deferral_waiting_sets_are_rejected_at_the_end_of_their_file():
    session: dict = {}
    account = FileAccount("d")
    assert list(read_netflow(FIXTURES / "netflow9_test_cisco_asa_1_data.dat", "d", account=account,
                             session=session)) == []
    assert account.rejected == {"unknown template": 1}
    assert "v9 template 265" in account.rejects[0][2]


def test_sniff():
    assert sniff((FIXTURES / "netflow5.dat").read_bytes()[:64])
    assert sniff((FIXTURES / "ipfix_test_netscaler_tpl.dat").read_bytes()[:64])
    assert sniff((FIXTURES / "netflow9_test_cisco_asa_1_tpl.dat").read_bytes()[:64])
    assert not sniff(b"ts,te,td,sa,da,sp,dp,pr\n")
    assert not sniff(b"#separator \\x09\n")
    assert not sniff(b"")


# --------------------------------------------------------------------------- real data

# Device groups of the logstash samples (templates and data in separate files), as its spec
# feeds them; each group is also read in reverse, so that data arrives before its templates.
LOGSTASH_GROUPS = [
    ["netflow5.dat"], ["netflow5_test_invalid01.dat"], ["netflow5_test_invalid02.dat"],
    ["netflow9_test_valid01.dat"], ["netflow9_test_macaddr_tpl.dat", "netflow9_test_macaddr_data.dat"],
    ["netflow9_test_cisco_aci_tpl256-258.dat", "netflow9_test_cisco_aci_data256.dat"],
    ["netflow9_test_cisco_asa_1_tpl.dat", "netflow9_test_cisco_asa_1_data.dat"],
    ["netflow9_test_nprobe_tpl.dat", "netflow9_test_softflowd_tpl_data.dat", "netflow9_test_nprobe_data.dat"],
    ["netflow9_test_invalid01.dat"], ["ipfix.dat"],
    ["netflow9_test_cisco_asa_2_tpl_26x.dat", "netflow9_test_cisco_asa_2_tpl_27x.dat",
     "netflow9_test_cisco_asa_2_data.dat"],
    ["ipfix_test_openbsd_pflow_tpl.dat", "ipfix_test_openbsd_pflow_data.dat"],
    ["netflow5_test_microtik.dat"], ["netflow5_test_juniper_mx80.dat"],
    ["netflow9_test_iptnetflow_reduced_size_encoding_tpldata260.dat"],
    ["netflow9_test_h3c_tpl3281.dat", "netflow9_test_h3c_data3281.dat"],
    ["netflow9_test_unknown_tpl266_292_data.dat"],
    ["netflow9_test_paloalto_81_tpl256-263.dat",
     "netflow9_test_paloalto_81_data257_1flowset_in_large_zerofilled_packet.dat"],
    ["netflow9_test_h3c_netstream_varstring_tpl3281.dat", "netflow9_test_h3c_netstream_varstring_data3281.dat"],
    ["netflow9_test_fortigate_fortios_542_appid_tpl258-269.dat",
     "netflow9_test_fortigate_fortios_542_appid_data258_262.dat"],
    ["ipfix_test_ixia_tpldata256.dat"], ["ipfix_test_ixia_tpldata271.dat"],
    ["ipfix_test_juniper_mx240_junos151r6s3_opttpl512.dat", "ipfix_test_juniper_mx240_junos151r6s3_data512.dat"],
    ["ipfix_test_nokia_bras_tpl.dat", "ipfix_test_nokia_bras_data256.dat"],
    ["ipfix_test_procera_tpl52935.dat", "ipfix_test_procera_data52935.dat"],
    ["ipfix_test_barracuda_extended_uniflow_tpl256.dat", "ipfix_test_barracuda_extended_uniflow_data256.dat"],
    ["netflow9_test_ubnt_edgerouter_tpl.dat", "netflow9_test_ubnt_edgerouter_data1024.dat",
     "netflow9_test_ubnt_edgerouter_data1025.dat"],
    ["netflow9_test_nprobe_dpi.dat"],
    ["netflow9_test_fortigate_fortios_521_tpl.dat", "netflow9_test_fortigate_fortios_521_data256.dat",
     "netflow9_test_fortigate_fortios_521_data257.dat"],
    ["netflow9_test_streamcore_tpl_data256.dat", "netflow9_test_streamcore_tpl_data260.dat"],
    ["ipfix_test_mikrotik_tpl.dat", "ipfix_test_mikrotik_data258.dat", "ipfix_test_mikrotik_data259.dat"],
    ["ipfix_test_netscaler_tpl.dat", "ipfix_test_netscaler_data.dat"],
    ["ipfix_test_vmware_vds_tpl.dat", "ipfix_test_vmware_vds_data264.dat", "ipfix_test_vmware_vds_data266.dat",
     "ipfix_test_vmware_vds_data266_267.dat"],
    ["netflow9_test_juniper_srx_tplopt.dat"], ["netflow9_test_0length_fields_tpl_data.dat"],
    ["netflow9_test_cisco_asr9k_opttpl256.dat", "netflow9_test_cisco_asr9k_opttpl257.dat",
     "netflow9_test_cisco_asr9k_opttpl334.dat", "netflow9_test_cisco_asr9k_data256.dat"],
    ["netflow9_test_huawei_netstream_tpl.dat", "netflow9_test_huawei_netstream_data.dat"],
    ["netflow9_test_field_layer2segmentid_tpl.dat", "netflow9_test_field_layer2segmentid_data.dat"],
    ["netflow9_test_cisco_asr9k_tpl260.dat", "netflow9_test_cisco_asr9k_tpl266.dat",
     "netflow9_test_cisco_asr9k_data260.dat"],
    ["netflow9_test_cisco_nbar_opttpl260.dat", "netflow9_test_cisco_nbar_tpl262.dat",
     "netflow9_test_cisco_nbar_data262.dat"],
    ["netflow9_test_cisco_wlc_tpl.dat", "netflow9_test_cisco_wlc_8510_tpl_262.dat",
     "netflow9_test_cisco_wlc_data261.dat"],
    ["netflow9_test_cisco_1941K9.dat"], ["netflow9_cisco_asr1001x_tpl259.dat"],
    ["netflow9_test_paloalto_panos_tpl.dat", "netflow9_test_paloalto_panos_data.dat"],
    ["ipfix_test_viptela_tpl257.dat", "ipfix_test_viptela_data257.dat"],
    ["ipfix_test_barracuda_tpl.dat", "ipfix_test_barracuda_data256.dat"],
    ["ipfix_test_yaf_tpls_option_tpl.dat", "ipfix_test_yaf_tpl45841.dat", "ipfix_test_yaf_data45841.dat",
     "ipfix_test_yaf_data45873.dat", "ipfix_test_yaf_data53248.dat"],
]

# Files that hold data sets for templates they never send (no file of the sample set has them).
KNOWN_UNKNOWN_TEMPLATES = {
    "netflow9_test_iptnetflow_reduced_size_encoding_tpldata260.dat": 6,  # templates 259, 262
    "ipfix_test_netscaler_data.dat": 1,  # template 280
}
# python-netflow reads only the first packet of a file holding several.
FIRST_PACKET_ONLY = {"netflow5.dat": 2, "ipfix.dat": 6}


def read_group(directory: Path, files):
    session = NetflowSession()
    decoded = collections.defaultdict(list)
    for name in files:
        for owner, batch in session.read(directory / name, name):
            decoded[owner] += batch.to_pylist()
    session.finish()
    return decoded, session


def reference_tuples(directory: Path):
    reference = collections.defaultdict(list)
    with open(directory / "decoded-5tuples-by-python-netflow.tsv", encoding="utf-8") as handle:
        for line in list(handle)[1:]:
            name, _, src, sport, dst, dport, proto = line.rstrip("\n").split("\t")
            if src:  # records without addresses are not flows
                reference[name].append((src, sport, dst, dport, proto))
    return reference


NAMED = {name: str(number) for number, name in PROTO_NAMES.items()}


def as_reference(row, v5: bool):
    if v5:  # python-netflow's v5 output has no ports or protocol
        return (row["src"], "", row["dst"], "", "")
    return (row["src"], str(row["sport"]), row["dst"], str(row["dport"]), NAMED.get(row["proto"], row["proto"]))


def test_every_logstash_sample_is_in_a_group(shared_data):
    listed = {name for group in LOGSTASH_GROUPS for name in group}
    assert listed == {p.name for p in (shared_data / LOGSTASH).glob("*.dat")}


def test_logstash_samples_match_python_netflow(shared_data):
    directory = shared_data / LOGSTASH
    reference = reference_tuples(directory)
    compared = set()
    for group in LOGSTASH_GROUPS:
        forward, session = read_group(directory, group)
        backward, back_session = read_group(directory, group[::-1])
        for name in group:
            got = [as_reference(r, name.startswith("netflow5")) for r in forward[name]]
            # Reading the group backwards (data before templates) decodes the same flows.
            assert sorted(got) == sorted(as_reference(r, name.startswith("netflow5")) for r in backward[name])
            unknown = KNOWN_UNKNOWN_TEMPLATES.get(name, 0)
            assert session.account(name).rejected.get("unknown template", 0) == unknown, name
            assert back_session.account(name).rejected.get("unknown template", 0) == unknown, name
            if name in FIRST_PACKET_ONLY:
                assert got[: FIRST_PACKET_ONLY[name]] == reference[name], name
                compared.add(name)
            elif name in reference:
                assert sorted(got) == sorted(reference[name]), name
                compared.add(name)
    assert compared == set(reference)


def test_every_logstash_sample_decodes_alone_without_error(shared_data):
    for path in sorted((shared_data / LOGSTASH).glob("*.dat")):
        reader = read_netflow(path, path.name)
        decoded = rows(reader)
        reasons = set(reader.account.rejected)
        assert reasons <= {"unknown template", "malformed packet", "malformed record"}, path.name
        if "malformed packet" in reasons:
            assert path.name in ("netflow5_test_invalid01.dat", "netflow5_test_invalid02.dat")
        if "malformed record" in reasons:  # nprobe sends 17 bytes of junk after its one record
            assert reader.account.rejects == [(2, "malformed record", "template 256: 17 bytes after the last whole record")]
            assert path.name == "netflow9_test_nprobe_dpi.dat"
        assert all(r["row"] >= 1 for r in decoded)


NFDUMP_PROTOCOLS = {"ICMP": 1, "IGMP": 2, "IPIP": 4, "TCP": 6, "UDP": 17, "IPv6": 41, "RSVP": 46, "GRE": 47,
                    "ESP": 50, "AH": 51, "ICMP6": 58, "GMTP": 100, "SCTP": 132, "MHEAD": 135}


def nfdump_csv(path: Path):
    lines = path.read_text(encoding="utf-8").splitlines()
    body = lines[1: lines.index("Summary")]  # the Summary footer is not data
    for row in csv.reader(body):
        name = row[7].strip()
        yield row[0], row[3], row[4], int(row[5]), int(row[6]), NFDUMP_PROTOCOLS.get(name) or int(name)


def decoded_flows(path: Path):
    reader = read_netflow(path, path.name)
    decoded = rows(reader)
    assert not reader.account.rejected
    for r in decoded:
        yield r, int(NAMED.get(r["proto"], r["proto"]))


def test_softflowd_v9_capture_matches_nfdump_exactly(shared_data):
    directory = shared_data / SOFTFLOWD
    ours = collections.Counter()
    for r, proto in decoded_flows(directory / "export-v9.pcap"):
        # nfdump 1.7.1 drops icmpTypeCodeIPv6 from v9 records (it keeps it for IPFIX).
        sport, dport = (0, 0) if proto == 58 else (r["sport"], r["dport"])
        ours[(r["src"], r["dst"], sport, dport, proto, r["start"].strftime("%Y-%m-%d %H:%M:%S"))] += 1
    theirs = collections.Counter(
        (src, dst, sport, dport, proto, ts) for ts, src, dst, sport, dport, proto in nfdump_csv(directory / "nfdump-v9.csv"))
    assert sum(theirs.values()) == 5468
    assert ours == theirs


def test_softflowd_v9_start_times_match_nfdump_json_to_the_millisecond(shared_data):
    directory = shared_data / SOFTFLOWD
    ours = collections.Counter((r["src"], r["dst"], r["start"].isoformat(timespec="milliseconds")[:23])
                               for r, _ in decoded_flows(directory / "export-v9.pcap"))
    with open(directory / "nfdump-v9.json", encoding="utf-8") as handle:
        records = json.load(handle)
    theirs = collections.Counter(
        (r.get("src4_addr") or r["src6_addr"], r.get("dst4_addr") or r["dst6_addr"], r["first"]) for r in records)
    assert ours == theirs


@pytest.mark.parametrize("version", ["v5", "ipfix"])
def test_softflowd_v5_and_ipfix_captures_contain_every_nfdump_flow(shared_data, version):
    # nfcapd missed packets of these two exports (softflowd-stats: 3,159 and 2,759 of the
    # flows in the capture), so every flow it stored must be among ours, not the reverse.
    directory = shared_data / SOFTFLOWD
    ours = collections.Counter((r["src"], r["dst"], r["sport"], r["dport"], proto)
                               for r, proto in decoded_flows(directory / f"export-{version}.pcap"))
    theirs = collections.Counter((src, dst, sport, dport, proto)
                                 for _, src, dst, sport, dport, proto in nfdump_csv(directory / f"nfdump-{version}.csv"))
    assert sum(ours.values()) == {"v5": 4774, "ipfix": 5468}[version]  # softflowd: records exported
    assert not theirs - ours


def test_pipeline_reads_data_before_its_template_file():
    from connscan.engine import Engine
    from connscan.flows import home_engine_for, scan_paths
    from connscan.rules import Evaluator
    from connscan.signatures import SignatureSet

    data, tpl = FIXTURES / "netflow9_test_cisco_asa_1_data.dat", FIXTURES / "netflow9_test_cisco_asa_1_tpl.dat"
    expected_rows = [r["row"] for r in rows(b for _, b in read_in_order([tpl.name, data.name])[0])
                     if "164.164.37.11" in (r["src"], r["dst"])]
    evaluator = Evaluator(Engine(SignatureSet.from_networks(["164.164.37.11"]), None))
    findings: list = []
    run = scan_paths([str(data), str(tpl)], evaluator, home_engine_for(None), on_findings=findings.extend)
    assert sorted((f.file, f.row) for f in findings) == [(str(data), row) for row in sorted(expected_rows)]
    assert len(expected_rows) == 9  # python-netflow: 9 of the 14 flows involve 164.164.37.11
    assert run.stats.files[str(data)].records_scanned == 14
    assert run.stats.files[str(tpl)].records_read == 0
    assert not run.stats.records_rejected
