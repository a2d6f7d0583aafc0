"""The flow pipeline end to end: for every format, a generated file with planted C2 hits
gives exactly the findings computed independently here with Python's ipaddress."""
from __future__ import annotations

import csv
import gzip
import ipaddress
import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connscan import cli
from connscan.engine import Engine
from connscan.flows import DEFAULT_HOME_NETS, aggregate, evaluate_flow_batch, home_engine_for, scan_paths
from connscan.rules import Evaluator, RuleConfig
from connscan.signatures import SignatureSet
from connscan.sources import BATCH_SCHEMA, ReaderOptions

HOME = [ipaddress.ip_network(n) for n in DEFAULT_HOME_NETS]
EPOCH = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)
SAFE_PORTS = [22, 53, 80, 443, 8080]  # none of them is a built-in suspicious port


def _random_address(rng) -> str:
    pick = rng.integers(0, 10)
    if pick < 3:
        return f"10.{rng.integers(0, 256)}.{rng.integers(0, 256)}.{rng.integers(1, 255)}"
    if pick < 4:
        return f"192.168.{rng.integers(0, 256)}.{rng.integers(1, 255)}"
    if pick < 5:
        return str(ipaddress.IPv6Address((0x2A00 << 112) | int(rng.integers(0, 2**62))))
    if pick < 6:
        return f"fd00::{rng.integers(1, 65535):x}"
    return str(ipaddress.IPv4Address(int(rng.integers(0x0B000000, 0xDF000000))))


def make_flows(n: int = 600, seed: int = 7):
    """(flows, c2 networks): random public/private flows, ~5% with a planted C2 endpoint."""
    rng = np.random.default_rng(seed)
    c2 = ["45.9.148.0/24", "185.220.101.7", "2a0e:fe40::/32", "91.92.240.12"]
    planted = ["45.9.148.33", "185.220.101.7", "2a0e:fe40::beef", "91.92.240.12", "45.9.148.200"]
    flows = []
    for i in range(n):
        src, dst = _random_address(rng), _random_address(rng)
        if rng.random() < 0.05:
            if rng.random() < 0.5:
                dst = planted[rng.integers(0, len(planted))]
            else:
                src = planted[rng.integers(0, len(planted))]
        sport = int(rng.integers(1024, 4000))
        dport = SAFE_PORTS[rng.integers(0, len(SAFE_PORTS))]
        proto = ["tcp", "udp"][i % 2]
        start = EPOCH + timedelta(seconds=i, microseconds=int(rng.integers(0, 1000)) * 1000)
        flows.append((src, dst, sport, dport, proto, start))
    return flows, c2


def expected_findings(flows, c2):
    """Independent computation of the findings' (row, lip, lport, rip, rport, direction)."""
    nets = [ipaddress.ip_network(n, strict=False) for n in c2]

    def is_home(a):
        return any(a.version == n.version and a in n for n in HOME)

    def is_c2(a):
        return any(a.version == n.version and a in n for n in nets)

    out = set()
    for row, (src, dst, sport, dport, _, _) in enumerate(flows, 1):
        s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        if not (is_c2(s) or is_c2(d)):
            continue
        if is_home(d) and not is_home(s):
            out.add((row, dst, dport, src, sport, "inbound"))
        else:
            out.add((row, src, sport, dst, dport, "outbound" if is_home(s) else "unknown"))
    return out


# --------------------------------------------------------------------------- writers


def write_nfdump(path, flows):
    header = "ts,te,td,sa,da,sp,dp,pr,flg,fwd,stos,ipkt,ibyt,opkt,obyt,in,out,sas,das,smk,dmk,dtos,dir,nh,nhb,svln,dvln,ismc,odmc,idmc,osmc,mpls1,mpls2,mpls3,mpls4,mpls5,mpls6,mpls7,mpls8,mpls9,mpls10,cl,sl,al,ra,eng,exid,tr"
    rest = ",".join(["0"] * 40)
    with open(path, "w") as f:
        f.write(header + "\n")
        for src, dst, sp, dp, proto, start in flows:
            ts = start.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
            f.write(f"{ts},{ts},0.000,{src},{dst},{sp},{dp},{proto.upper()},{rest}\n")
        f.write("Summary\nflows,bytes,packets,avg_bps,avg_pps,avg_bpp\n1,2,3,4,5,6\n")


def write_nfdump_fast(path, flows):
    with open(path, "w") as f:
        f.write("cnt,af,firstSeen,lastSeen,proto,srcAddr,srcPort,dstAddr,dstPort,srcAS,dstAS,input,output,flags,srcTos,packets,bytes\n")
        for i, (src, dst, sp, dp, proto, start) in enumerate(flows, 1):
            ms = int(start.timestamp() * 1000)
            f.write(f"{i},2,{ms},{ms},{6 if proto == 'tcp' else 17},{src},{sp},{dst},{dp},0,0,0,0,........,0,1,1\n")


def write_zeek_tsv(path, flows):
    with open(path, "w") as f:
        f.write("#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tconn\n")
        f.write("#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tservice\n")
        f.write("#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tstring\n")
        for src, dst, sp, dp, proto, start in flows:
            f.write(f"{start.timestamp():.6f}\tCx\t{src}\t{sp}\t{dst}\t{dp}\t{proto}\t-\n")
        f.write("#close\t2024-03-01-13-00-00\n")


def write_zeek_json(path, flows):
    with open(path, "w") as f:
        for src, dst, sp, dp, proto, start in flows:
            f.write(json.dumps({"ts": start.timestamp(), "id.orig_h": src, "id.orig_p": sp, "id.resp_h": dst, "id.resp_p": dp, "proto": proto}) + "\n")


def write_ecs_json(path, flows):
    """ECS-style JSON lines (Elastic, Filebeat exports): nested source/destination objects."""
    with open(path, "w") as f:
        for src, dst, sp, dp, proto, start in flows:
            event = {"@timestamp": start.isoformat(), "source": {"ip": src, "port": sp}, "destination": {"ip": dst, "port": dp},
                     "network": {"transport": proto}}
            f.write(json.dumps(event) + "\n")


def write_suricata(path, flows):
    with open(path, "w") as f:
        for src, dst, sp, dp, proto, start in flows:
            stamp = start.strftime("%Y-%m-%dT%H:%M:%S.%f+0000")
            event = {"timestamp": stamp, "event_type": "flow", "src_ip": src, "src_port": sp, "dest_ip": dst, "dest_port": dp, "proto": proto.upper(), "flow": {"start": stamp}}
            f.write(json.dumps(event) + "\n")


def write_aws(path, flows):
    with open(path, "w") as f:
        f.write("version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status\n")
        for src, dst, sp, dp, proto, start in flows:
            secs = int(start.timestamp())
            f.write(f"2 123456789012 eni-0a1b {src} {dst} {sp} {dp} {6 if proto == 'tcp' else 17} 1 60 {secs} {secs + 5} ACCEPT OK\n")


def write_csv(path, flows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["src_ip", "dst_ip", "src_port", "dst_port", "protocol", "timestamp"])
        for src, dst, sp, dp, proto, start in flows:
            writer.writerow([src, dst, sp, dp, proto, start.isoformat()])


def write_csv_headerless(path, flows):
    """No header line (read with --columns by field number), a comment line first."""
    with open(path, "w", newline="") as f:
        f.write("# exported without a header line\n")
        writer = csv.writer(f)
        for src, dst, sp, dp, proto, start in flows:
            writer.writerow([start.isoformat(), src, sp, dst, dp, proto])


HEADERLESS_COLUMNS = {"start": "1", "src": "2", "sport": "3", "dst": "4", "dport": "5", "proto": "6"}


def _table(flows):
    return pa.table(
        {
            "srcaddr": [f[0] for f in flows],
            "dstaddr": [f[1] for f in flows],
            "srcport": [f[2] for f in flows],
            "dstport": [f[3] for f in flows],
            "protocol": [f[4] for f in flows],
            "start": pa.array([f[5] for f in flows], pa.timestamp("us", tz="UTC")),
        }
    )


def write_parquet(path, flows):
    pq.write_table(_table(flows), path, row_group_size=128)


def write_arrow(path, flows):
    import pyarrow.ipc as ipc

    table = _table(flows)
    with ipc.new_file(str(path), table.schema) as writer:
        writer.write_table(table, max_chunksize=100)


def write_nfdump_gz(path, flows):
    plain = path.with_suffix(".plain")
    write_nfdump(plain, flows)
    path.write_bytes(gzip.compress(plain.read_bytes()))
    plain.unlink()


# writer, detected format, start precision in microseconds (None: no start)
WRITERS = {
    "nfdump-csv": (write_nfdump, "nfdump-csv", 1000),
    "nfdump-csv-gz": (write_nfdump_gz, "nfdump-csv", 1000),
    "nfdump-csv-fast": (write_nfdump_fast, "nfdump-csv-fast", 1000),
    "zeek-tsv": (write_zeek_tsv, "zeek-tsv", 1),
    "zeek-json": (write_zeek_json, "zeek-json", 1),
    "suricata-eve": (write_suricata, "suricata-eve", 1),
    "aws-vpc": (write_aws, "aws-vpc", 1_000_000),
    "csv": (write_csv, "csv", 1),
    "csv-headerless": (write_csv_headerless, "csv", 1),
    "json": (write_ecs_json, "json", 1),
    "parquet": (write_parquet, "parquet", 1),
    "arrow": (write_arrow, "arrow", 1),
}


@pytest.fixture(scope="module")
def c2_evaluator():
    flows, c2 = make_flows()
    engine = Engine(SignatureSet.from_networks(c2, description="planted C2"), None)
    config = RuleConfig(relevant_countries=(), suspicious_ports={})
    return flows, c2, Evaluator(engine, config, hostname="testhost")


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_end_to_end_findings_equal_independent_computation(tmp_path, c2_evaluator, kind):
    flows, c2, evaluator = c2_evaluator
    write, fmt, precision = WRITERS[kind]
    path = tmp_path / f"flows-{kind}"
    write(path, flows)
    found = []
    columns = HEADERLESS_COLUMNS if kind == "csv-headerless" else None
    run = scan_paths([str(path)], evaluator, home_engine_for(), options=ReaderOptions(tz="UTC", batch_rows=100, columns=columns),
                     on_findings=found.extend)
    assert run.files[0].format == fmt and not run.files[0].errors
    got = {(f.row, f.lip, f.lport, f.rip, f.rport, f.direction) for f in found}
    expected = expected_findings(flows, c2)
    assert len(expected) >= 15
    assert got == expected
    assert len(found) == len(expected)
    assert {f.file for f in found} == {str(path)}
    assert run.stats.records_read == run.stats.records_scanned == len(flows)
    for f in found:
        assert f.level == "Alert" and f.reasons[0].kind == "c2"
        true_start = flows[f.row - 1][5]
        assert abs((f.start - true_start) / timedelta(microseconds=1)) < precision


def test_home_net_decides_local_side():
    engine = Engine(SignatureSet.from_networks(["203.0.113.0/24", "10.9.9.9"]), None)
    evaluator = Evaluator(engine, RuleConfig(relevant_countries=(), suspicious_ports={}), hostname="h")
    batch = pa.RecordBatch.from_pydict(
        {
            "src": ["203.0.113.5", "10.0.0.1", "10.0.0.2", "198.51.100.1", "not-an-ip", "10.9.9.9"],
            "dst": ["10.0.0.1", "203.0.113.6", "10.9.9.9", "203.0.113.7", "203.0.113.8", "10.0.0.3"],
            "sport": [4000, 4001, 4002, 4003, 4004, 4005],
            "dport": [22, 443, 445, 80, 80, 53],
            "proto": ["tcp"] * 6,
            "start": [None] * 6,
            "row": [1, 2, 3, 4, 5, 6],
        },
        schema=BATCH_SCHEMA,
    )
    rejects = []
    findings = evaluate_flow_batch(batch, evaluator, home_engine_for(), "f.csv", rejects)
    got = sorted((f.row, f.lip, f.rip, f.lport, f.rport, f.direction) for f in findings)
    assert got == [
        (1, "10.0.0.1", "203.0.113.5", 22, 4000, "inbound"),  # only the destination is home
        (2, "10.0.0.1", "203.0.113.6", 4001, 443, "outbound"),
        (3, "10.0.0.2", "10.9.9.9", 4002, 445, "outbound"),  # both home: the source is local
        (4, "198.51.100.1", "203.0.113.7", 4003, 80, "unknown"),  # neither home: the source
        (6, "10.9.9.9", "10.0.0.3", 4005, 53, "outbound"),  # C2 on the local side is found too
    ]
    assert [r[:2] for r in rejects] == [(5, "invalid source address")]
    # a custom home network moves the local side
    findings = evaluate_flow_batch(batch, evaluator, home_engine_for(["198.51.100.0/24"]), "f.csv")
    assert {(f.row, f.direction) for f in findings if f.row == 4} == {(4, "outbound")}


def test_direct_internet_rule_on_flows():
    # Hosts of 10.0.0.0/28 must not talk to the Internet directly: only their outbound flows
    # to public addresses count, whichever column the host is in.
    engine = Engine(SignatureSet.from_networks(["192.0.2.99"]), None)
    config = RuleConfig(relevant_countries=(), suspicious_ports={}, no_direct_internet=("10.0.0.0/28",))
    evaluator = Evaluator(engine, config, home_engine=home_engine_for(), hostname="h")
    flows = [("10.0.0.5", "8.8.8.8"), ("8.8.8.8", "10.0.0.5"), ("10.0.0.5", "192.168.1.1"), ("10.0.0.99", "8.8.8.8"),
             ("10.0.0.7", "2001:4860::8888"), ("10.0.0.6", "198.51.100.3"), ("10.0.0.1", "100.64.0.1")]
    batch = pa.RecordBatch.from_pydict(
        {"src": [s for s, _ in flows], "dst": [d for _, d in flows], "sport": [5000] * 7, "dport": [443] * 7,
         "proto": ["tcp"] * 7, "start": [None] * 7, "row": list(range(1, 8))}, schema=BATCH_SCHEMA)
    findings = evaluate_flow_batch(batch, evaluator, home_engine_for(), "f.csv")
    assert [(f.row, f.lip, f.rip, f.reasons[0].kind, f.reasons[0].signature) for f in findings] == [
        (1, "10.0.0.5", "8.8.8.8", "direct-internet", "10.0.0.0/28"),
        (5, "10.0.0.7", "2001:4860::8888", "direct-internet", "10.0.0.0/28"),
    ]  # 198.51.100.0/24 is documentation space, 100.64/10 shared address space: not public


def test_aggregate_groups_and_counts(c2_evaluator, tmp_path):
    flows, c2, evaluator = c2_evaluator
    path = tmp_path / "flows.tsv"
    write_zeek_tsv(path, flows)
    found = []
    scan_paths([str(path)], evaluator, home_engine_for(), on_findings=found.extend)
    groups = aggregate(found)
    expected: dict = {}
    for f in found:
        key = (f.lip, f.rip, f.rport)
        expected.setdefault(key, []).append(f.start)
    assert {(g.lip, g.rip, g.rport): (g.count, g.first_seen, g.last_seen) for g in groups} == {
        k: (len(v), min(v), max(v)) for k, v in expected.items()
    }
    assert all(g.row is None for g in groups)


# --------------------------------------------------------------------------- CLI


def _cli(tmp_path, *args):
    out, stats, rejects = tmp_path / "out.jsonl", tmp_path / "stats.json", tmp_path / "rejects.jsonl"
    code = cli.main(["flows", "--format", "jsonl", "--output", str(out), "--stats", str(stats), "--rejects", str(rejects), "--relevant-countries", "", "--progress", "never", *args])
    lines = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return code, lines, json.loads(stats.read_text()) if stats.exists() else None, rejects


def test_cli_flows_accounts_for_every_record(tmp_path, c2_evaluator):
    flows, c2, _ = c2_evaluator
    iocs = tmp_path / "iocs.txt"
    iocs.write_text("\n".join(c2) + "\n")
    data = tmp_path / "in"
    data.mkdir()
    write_zeek_tsv(data / "conn.log", flows)
    bad = data / "z-bad.csv"
    write_nfdump(bad, flows[:10])
    text = bad.read_text().splitlines()
    text[3] = text[3].replace(",", ";", 5)  # wrong number of fields
    bad.write_text("\n".join(text) + "\n")
    (data / "notes.txt").write_text("not a flow file\n")
    code, lines, stats, rejects = _cli(tmp_path, "--iocs", str(iocs), "--tz", "UTC", str(data))
    in_bad = {e for e in expected_findings(flows[:10], c2) if e[0] != 3}
    assert code == 1  # Alert findings
    assert len(lines) == len(expected_findings(flows, c2)) + len(in_bad)
    assert {(line["row"], line["lip"], line["lport"], line["rip"], line["rport"], line["direction"]) for line in lines if line["file"] == str(bad)} == in_bad
    assert {"file", "row", "start", "lip", "rip", "reasons"} <= set(lines[0])
    assert "pid" not in lines[0]
    assert stats["records_read"] == len(flows) + 10
    assert stats["records_scanned"] == len(flows) + 9
    assert stats["records_rejected"] == {"expected 48 fields, got 43": 1}
    assert set(stats["files"]) == {str(data / "conn.log"), str(bad), str(data / "notes.txt")}
    assert stats["files"][str(bad)]["records_rejected"] == {"expected 48 fields, got 43": 1}
    assert "unknown flow format" in stats["files"][str(data / "notes.txt")]["errors"][0]
    rejected = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(r["file"], r["row"]) for r in rejected] == [(str(bad), 3)]


def _merged_intervals(networks) -> tuple[list[tuple[int, int, int]], list[tuple[int, int]]]:
    """The union of ipaddress networks as disjoint (version, first, last) intervals, and
    their (version, first) starts."""
    spans = sorted((n.version, int(n.network_address), int(n.broadcast_address)) for n in networks)
    merged: list[list[int]] = []
    for version, first, last in spans:
        if merged and merged[-1][0] == version and first <= merged[-1][2] + 1:
            merged[-1][2] = max(merged[-1][2], last)
        else:
            merged.append([version, first, last])
    return [tuple(m) for m in merged], [(m[0], m[1]) for m in merged]


def test_cli_flows_firehol_level1_does_not_flag_every_internal_host(tmp_path, shared_data):
    """firehol_level1 lists the private ranges as bogons: left out by default, a real
    Trickbot capture scanned with level1 + level4 gives C2 findings exactly for the flows
    with an end in the lists' other entries (computed here with ipaddress); with the
    bogons kept, every flow would be one."""
    import bisect

    lists = [shared_data / f"c2/firehol/firehol_level{n}.netset" for n in (1, 4)]
    log = shared_data / "flows/zeek-malware-conn/trickbot-2018-11-conn.log"
    private = [ipaddress.ip_network(n) for n in ("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
                                                 "172.16.0.0/12", "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4")]
    networks = [ipaddress.ip_network(line.strip(), strict=False) for path in lists for line in path.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    listed = [n for n in networks if not any(n.version == p.version and p.subnet_of(n) for p in private)]
    assert 0 < len(networks) - len(listed) < 20  # level1's bogons
    intervals, starts = _merged_intervals(listed)

    def is_listed(text):
        address = ipaddress.ip_address(text)
        k = bisect.bisect_right(starts, (address.version, int(address))) - 1
        return k >= 0 and intervals[k][0] == address.version and intervals[k][1] <= int(address) <= intervals[k][2]

    lines = log.read_text().splitlines()
    names = next(line.split("\t")[1:] for line in lines if line.startswith("#fields"))
    rows = [dict(zip(names, line.split("\t"))) for line in lines if line and not line.startswith("#")]
    expected = {number for number, row in enumerate(rows, 1) if is_listed(row["id.orig_h"]) or is_listed(row["id.resp_h"])}
    assert 0 < len(expected) < len(rows) / 10
    iocs = [arg for path in lists for arg in ("--iocs", str(path))]
    code, found, stats, _ = _cli(tmp_path, *iocs, str(log))
    assert code == 1 and stats["records_scanned"] == len(rows)
    assert {line["row"] for line in found if any(r["kind"] == "c2" for r in line["reasons"])} == expected
    code, found, _, _ = _cli(tmp_path, *iocs, "--keep-special-ranges", str(log))
    assert {line["row"] for line in found if any(r["kind"] == "c2" for r in line["reasons"])} == set(range(1, len(rows) + 1))


def test_cli_flows_geoip_findings_on_a_real_capture_equal_the_official_reader(tmp_path, shared_data):
    """Relevant-region findings of a real Trickbot capture with the embedded DB-IP: the
    local side chosen by the default home networks and the remote side's country looked up
    by the official maxminddb reader, both worked out here per flow."""
    import importlib.resources

    import maxminddb

    log = shared_data / "flows/zeek-malware-conn/trickbot-2018-11-conn.log"
    home = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                                              "127.0.0.0/8", "169.254.0.0/16", "::1/128", "fc00::/7", "fe80::/10")]
    lines = log.read_text().splitlines()
    names = next(line.split("\t")[1:] for line in lines if line.startswith("#fields"))
    rows = [dict(zip(names, line.split("\t"))) for line in lines if line and not line.startswith("#")]
    relevant = {"RU", "DE", "CO", "VN", "IR", "KP"}
    expected, visitors = {}, 0
    with maxminddb.open_database(str(importlib.resources.files("connscan") / "data" / "dbip-country.mmdb")) as reader:
        for number, row in enumerate(rows, 1):
            src, dst = (ipaddress.ip_address(row[k]) for k in ("id.orig_h", "id.resp_h"))
            src_home, dst_home = (any(a.version == n.version and a in n for n in home) for a in (src, dst))
            inbound = dst_home and not src_home  # the source is then the remote side
            record = reader.get(str(src if inbound else dst)) or {}  # DB-IP Lite: country_code; MaxMind: country.iso_code
            country = record.get("country_code") or (record.get("country") or {}).get("iso_code")
            if country in relevant and not inbound:  # an inbound visitor alone scores 25: no finding
                expected[number] = country
            visitors += country in relevant and inbound
    assert len(expected) > 100 and visitors > 0
    code, found, stats, _ = _cli(tmp_path, "--relevant-countries", ",".join(sorted(relevant)), "--suspicious-ports", "", str(log))
    got = {line["row"]: line.get("country") for line in found if any(r["kind"] == "geoip" for r in line["reasons"])}
    assert got == expected and stats["records_scanned"] == len(rows)


def test_cli_flows_aggregate_and_nothing_scanned(tmp_path, c2_evaluator):
    flows, c2, _ = c2_evaluator
    iocs = tmp_path / "iocs.txt"
    iocs.write_text("\n".join(c2) + "\n")
    write_zeek_tsv(tmp_path / "conn.log", flows)
    code, lines, stats, _ = _cli(tmp_path, "--iocs", str(iocs), "--aggregate", str(tmp_path / "conn.log"))
    assert code == 1
    assert sum(line["count"] for line in lines) == len(expected_findings(flows, c2))
    assert all("first_seen" in line and "last_seen" in line for line in lines)
    (tmp_path / "empty.log").write_text("")
    code, lines, stats, _ = _cli(tmp_path, str(tmp_path / "empty.log"))
    assert code == 3 and lines == [] and stats["records_scanned"] == 0


def test_cli_flows_stdin(tmp_path, c2_evaluator, monkeypatch):
    import io
    import sys

    flows, c2, _ = c2_evaluator
    iocs = tmp_path / "iocs.txt"
    iocs.write_text("\n".join(c2) + "\n")
    write_suricata(tmp_path / "eve.json", flows)
    fake = io.TextIOWrapper(io.BytesIO(gzip.compress((tmp_path / "eve.json").read_bytes())))
    monkeypatch.setattr(sys, "stdin", fake)
    code, lines, stats, _ = _cli(tmp_path, "--iocs", str(iocs), "-")
    assert code == 1 and len(lines) == len(expected_findings(flows, c2))
    assert lines[0]["file"] == "<stdin>"


def test_cli_progress_only_on_request_when_not_a_terminal(tmp_path, c2_evaluator, capsys):
    flows, _, _ = c2_evaluator
    write_zeek_tsv(tmp_path / "conn.log", flows)
    args = ["flows", "--format", "jsonl", "--output", str(tmp_path / "o.jsonl"), "--relevant-countries", ""]
    assert cli.main([*args, str(tmp_path / "conn.log")]) == 0
    quiet = capsys.readouterr().err
    assert "records" not in quiet and "600 read" in quiet  # the summary line only
    assert cli.main([*args, "--progress", "always", str(tmp_path / "conn.log")]) == 0
    assert "records" in capsys.readouterr().err


def test_cli_flow_option_errors_exit_2(tmp_path, capsys):
    (tmp_path / "f.csv").write_text("src_ip,dst_ip\n10.0.0.1,8.8.8.8\n")
    base = ["flows", "--relevant-countries", "", "--output", str(tmp_path / "o")]
    assert cli.main([*base, "--columns", "source", str(tmp_path / "f.csv")]) == 2
    assert "--columns" in capsys.readouterr().err
    assert cli.main([*base, "--tz", "Mars/Olympus", str(tmp_path / "f.csv")]) == 2
    assert "Mars/Olympus" in capsys.readouterr().err
    assert cli.main([*base, "--home-net", "10.0.0.0/8,10.0.0.0/33", str(tmp_path / "f.csv")]) == 2
    assert "error: --home-net:2: invalid network '10.0.0.0/33'" in capsys.readouterr().err
    for columns in ("src=1,dst=dst_ip", "src=0,dst=2"):  # names and numbers mixed; numbers count from 1
        assert cli.main([*base, "--columns", columns, str(tmp_path / "f.csv")]) == 2
        assert "every one by its field number from 1" in capsys.readouterr().err


def test_cli_event_types_and_columns(tmp_path, c2_evaluator):
    flows, c2, _ = c2_evaluator
    iocs = tmp_path / "iocs.txt"
    iocs.write_text("\n".join(c2) + "\n")
    write_suricata(tmp_path / "eve.json", flows)
    code, lines, stats, _ = _cli(tmp_path, "--iocs", str(iocs), "--event-types", "alert,dns", str(tmp_path / "eve.json"))
    assert code == 3 and lines == []  # every event is a flow event: all skipped, nothing scanned
    assert stats["records_skipped"] == {"event type flow not selected": len(flows)}
    with open(tmp_path / "odd.csv", "w") as f:
        f.write("a;b;c;d\n")
        for src, dst, sp, dp, _, _ in flows:
            f.write(f"{src};{dst};{sp};{dp}\n")
    code, lines, stats, _ = _cli(tmp_path, "--iocs", str(iocs), "--input-format", "csv", "--columns", "src=a,dst=b,sport=c,dport=d", str(tmp_path / "odd.csv"))
    got = {(line["row"], line["lip"], line["lport"], line["rip"], line["rport"], line["direction"]) for line in lines}
    assert code == 1 and got == expected_findings(flows, c2)


@pytest.mark.parametrize("fmt", ["text", "jsonl"])
def test_cli_flows_goes_on_counting_when_the_reader_goes_away(tmp_path, c2_evaluator, fmt):
    """`connscan flows ... | head -1`: the scan is not cut short and exits by its findings."""
    import os
    import subprocess
    import sys

    flows, c2, _ = c2_evaluator
    iocs = tmp_path / "iocs.txt"
    iocs.write_text("\n".join(c2) + "\n")
    log = tmp_path / "conn.log"
    write_zeek_tsv(log, flows * 20)  # thousands of findings: more than one pipe buffer
    stats = tmp_path / "stats.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "connscan", "flows", "--iocs", str(iocs), "--relevant-countries", "", "--format", fmt,
         "--stats", str(stats), "--progress", "never", str(log)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    first = proc.stdout.readline()
    proc.stdout.close()  # the reader goes away after one line
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 1, err  # Alert findings, not a crash (4)
    assert "MODULE: ProcessConnections" in first if fmt == "text" else json.loads(first)["module"] == "ProcessConnections"
    assert "Traceback" not in err and "output closed by the reader" in err
    assert json.loads(stats.read_text())["records_scanned"] == len(flows) * 20


def test_cli_flows_runs_with_pandas_hidden_and_the_same_findings(tmp_path, c2_evaluator):
    """pyarrow would import pandas (tens of MB) for `connscan flows`; the CLI hides it for the
    run and makes it importable again afterwards. Its findings equal the in-process run's."""
    import importlib.util
    import os
    import subprocess
    import sys

    if importlib.util.find_spec("pandas") is None:
        pytest.skip("pandas is not installed: nothing to hide")
    flows, c2, _ = c2_evaluator
    iocs = tmp_path / "iocs.txt"
    iocs.write_text("\n".join(c2) + "\n")
    log = tmp_path / "conn.log"
    write_zeek_tsv(log, flows)
    code, expected, _, _ = _cli(tmp_path, "--iocs", str(iocs), str(log))
    out = tmp_path / "hidden.jsonl"
    script = (
        "import sys\n"
        "from connscan import cli\n"
        f"code = cli.main({['flows', '--iocs', str(iocs), '--relevant-countries', '', '--format', 'jsonl', '--output', str(out), '--progress', 'never', str(log)]!r})\n"
        "print(code, 'pandas' in sys.modules)\n"
        "import pandas\n"  # importable again after the run
        "print(pandas.DataFrame({'a': [1]}).shape)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.stdout.split("\n")[:2] == [f"{code} False", "(1, 1)"], proc.stderr
    hidden = [json.loads(line) for line in out.read_text().splitlines()]
    assert expected and [dict(f, time=None) for f in hidden] == [dict(f, time=None) for f in expected]


def test_pandas_hidden_only_when_asked_and_not_loaded():
    import sys

    with cli.pandas_hidden(hide=False):
        assert cli._NoPandas not in sys.meta_path
    with cli.pandas_hidden():
        assert (cli._NoPandas in sys.meta_path) == ("pandas" not in sys.modules)
    assert cli._NoPandas not in sys.meta_path


@pytest.mark.parametrize("compress", ["gzip", "zstd"])
def test_compressed_netflow_capture_reads_like_the_plain_one(tmp_path, compress):
    """A compressed NetFlow file is decoded through the decompressed stream, not the path."""
    import zstandard

    from support import TEST_DATA

    plain = TEST_DATA / "netflow" / "netflow5.dat"
    packed = tmp_path / ("netflow5.dat.gz" if compress == "gzip" else "netflow5.dat.zst")
    data = plain.read_bytes()
    packed.write_bytes(gzip.compress(data) if compress == "gzip" else zstandard.ZstdCompressor().compress(data))
    counts = []
    for path in (plain, packed):
        code, _, stats, _ = _cli(tmp_path, "--all-connections", str(path))
        assert code in (0, 1), stats
        counts.append((stats["records_read"], stats["records_scanned"], stats["records_rejected"]))
    assert counts[0][1] > 0
    assert counts[1] == counts[0]


def test_malloc_arenas_are_capped_where_glibc_allows_it():
    import platform

    from connscan.flows import _cap_malloc_arenas

    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert _cap_malloc_arenas() is expected


def test_columns_setting_from_flag_or_config_table():
    from connscan.errors import ConfigError
    from connscan.flows import parse_columns

    assert parse_columns("src=a, dst=b") == parse_columns({"src": "a", "dst": "b"}) == {"src": "a", "dst": "b"}
    assert parse_columns({"src": 3, "dst": 4}) == {"src": "3", "dst": "4"}  # TOML integers: field numbers
    for bad in ({"source": "a"}, {"src": 1, "dst": "b"}, "src=1,dst=0", "src"):
        with pytest.raises(ConfigError, match="--columns"):
            parse_columns(bad)
