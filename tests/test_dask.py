"""connscan.dask on a real distributed.LocalCluster (2 worker processes) against the local run.

The input is generated here with planted C2 hits; the expected hits are computed with
Python's ipaddress, and the distributed findings must equal the local pipeline's, record by
record (the evaluation time stamp aside).
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import random
import struct
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed")

from connscan import dask as connscan_dask  # noqa: E402
from connscan.engine import Engine  # noqa: E402
from connscan.errors import ConnscanError  # noqa: E402
from connscan.flows import evaluate_flow_batch, home_engine_for, scan_paths  # noqa: E402
from connscan.geoip import GeoTable  # noqa: E402
from connscan.rules import Evaluator, RuleConfig  # noqa: E402
from connscan.signatures import SignatureSet  # noqa: E402
from connscan.sources import ReaderOptions  # noqa: E402

NFDUMP_HEADER = ("ts,te,td,sa,da,sp,dp,pr,flg,fwd,stos,ipkt,ibyt,opkt,obyt,in,out,sas,das,smk,dmk,dtos,dir,nh,"
                 "nhb,svln,dvln,ismc,odmc,idmc,osmc,mpls1,mpls2,mpls3,mpls4,mpls5,mpls6,mpls7,mpls8,mpls9,"
                 "mpls10,cl,sl,al,ra,eng,exid,tr")
HOSTNAME = "dask-test-host"
C2_NETWORKS = ["198.18.7.0/24", "45.33.1.17", "2001:db8:c2::/48", "93.184.0.0/20"]


def public_v4(rng):
    while True:
        address = ipaddress.IPv4Address(rng.getrandbits(32))
        if address.is_global:
            return address


def random_flow(rng, hit: bool):
    local = ipaddress.IPv4Address(f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}")
    if hit:
        network = ipaddress.ip_network(rng.choice(C2_NETWORKS))
        remote = network[rng.randrange(min(network.num_addresses, 1 << 16))]
        if remote.version == 6:
            local = ipaddress.IPv6Address("fd00::1") + rng.randrange(1 << 32)
    else:
        remote = public_v4(rng)
    src, dst = (local, remote) if rng.random() < 0.5 else (remote, local)
    return src, dst, rng.randrange(1024, 65536), rng.choice([443, 80, 53, 4444, 8080]), rng.choice(["TCP", "UDP"])


def write_nfdump(path, flows):
    lines = [NFDUMP_HEADER]
    for i, (src, dst, sport, dport, proto) in enumerate(flows):
        ts = f"2024-05-01 12:{i // 60 % 60:02d}:{i % 60:02d}"
        lines.append(f"{ts},{ts},0.000,{src},{dst},{sport},{dport},{proto}," + ",".join(["0"] * 40))
    lines += ["Summary", "flows,bytes,packets,avg_bps,avg_pps,avg_bpp", f"{len(flows)},0,0,0,0,0"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def v9_files(directory, flows):
    """A data packet and, in the next file, its template packet (IPv4 flows only)."""
    fields = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1)]
    template = struct.pack(">HH", 300, len(fields)) + b"".join(struct.pack(">HH", *f) for f in fields)
    records = b"".join(src.packed + dst.packed + struct.pack(">HHB", sport, dport, 6 if proto == "TCP" else 17)
                       for src, dst, sport, dport, proto in flows)
    records += bytes(-len(records) % 4)

    def packet(set_id, body):
        return struct.pack(">HHIIII", 9, 1, 1000, 1_700_000_000, 0, 1) + struct.pack(">HH", set_id, 4 + len(body)) + body

    (directory / "export-1-data.dat").write_bytes(packet(300, records))
    (directory / "export-2-template.dat").write_bytes(packet(0, template))
    return [directory / "export-1-data.dat", directory / "export-2-template.dat"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    rng = random.Random(20240501)
    directory = tmp_path_factory.mktemp("flows")
    inputs = {}
    for name in ("a.csv", "b.csv"):
        flows = [random_flow(rng, rng.random() < 0.05) for _ in range(1500)]
        write_nfdump(directory / name, flows)
        inputs[str(directory / name)] = flows
    v9_flows = [f for f in (random_flow(rng, rng.random() < 0.2) for _ in range(200)) if f[0].version == 4]
    data, template = v9_files(directory, v9_flows)
    inputs[str(data)] = v9_flows  # decoded once the next file brings the template
    inputs[str(template)] = []
    return inputs


# A small country table: remote addresses in the upper half of IPv4 are "KP", so the GeoIP
# rule fires too (on the workers and locally alike).
GEO = GeoTable.from_ranges(v4=[("128.0.0.0/1", "KP"), ("1.0.0.0/8", "DE")])


@pytest.fixture(scope="module")
def engine():
    return Engine(SignatureSet.from_networks(C2_NETWORKS, description="planted C2"), GEO)


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with distributed.Client(cluster) as dask_client:
        yield dask_client
    cluster.close()


def comparable(findings):
    return [{k: v for k, v in dataclasses.asdict(f).items() if k != "time"} for f in findings]


def expected_c2_rows(inputs):
    """(file, row) of every flow with a C2 address on either side, by ipaddress."""
    networks = [ipaddress.ip_network(n) for n in C2_NETWORKS]
    hits = set()
    for name, flows in inputs.items():
        for row, (src, dst, *_rest) in enumerate(flows, start=1):
            if any(address in network for address in (src, dst) for network in networks
                   if address.version == network.version):
                hits.add((name, row))
    return hits


def local_run(paths, engine, config):
    findings = []
    evaluator = Evaluator(engine, config, hostname=HOSTNAME)
    run = scan_paths(paths, evaluator, home_engine_for(None), options=ReaderOptions(tz="UTC"),
                     on_findings=findings.extend)
    return findings, run


def test_distributed_findings_equal_the_local_run(planted, engine, client):
    config = RuleConfig()
    paths = list(planted)
    local, local_run_result = local_run(paths, engine, config)
    result = connscan_dask.scan(paths, engine=engine, config=config, scheduler=client, hostname=HOSTNAME,
                                options=ReaderOptions(tz="UTC"))
    assert comparable(result) == comparable(local)
    hits = {(f.file, f.row) for f in result if any(r.kind == "c2" for r in f.reasons)}
    assert hits == expected_c2_rows(planted)
    assert len(hits) > 100
    assert any(r.kind == "geoip" for f in result for r in f.reasons)
    assert result.stats.records_scanned == local_run_result.stats.records_scanned == sum(map(len, planted.values()))
    assert result.stats.to_dict()["files"].keys() == local_run_result.stats.files.keys()
    netflow_data = list(planted)[2]
    assert result.stats.files[netflow_data].records_scanned == len(planted[netflow_data])
    # The worker processes loaded the saved tables themselves (no engine was pickled).
    loaded = client.run(lambda: [key[0] for key in connscan_dask._worker_cache])
    assert any(paths_loaded for paths_loaded in loaded.values())


def test_netflow_files_stay_together(planted):
    paths = list(planted)
    groups = connscan_dask.partition_paths(paths)
    assert groups == [[paths[0]], [paths[1]], [paths[2], paths[3]]]


def test_dataframe_partitions_equal_the_local_batch(planted, engine, client):
    pd = pytest.importorskip("pandas")
    dd = pytest.importorskip("dask.dataframe")
    flows = next(iter(planted.values()))
    frame = pd.DataFrame({
        "src": [str(f[0]) for f in flows], "dst": [str(f[1]) for f in flows],
        "sport": [f[2] for f in flows], "dport": [f[3] for f in flows], "proto": [f[4].lower() for f in flows],
    })
    frame.loc[7, "src"] = "not-an-address"  # rejected, not dropped
    config = RuleConfig()
    result = connscan_dask.scan(dd.from_pandas(frame, npartitions=3), engine=engine, config=config,
                                scheduler=client, hostname=HOSTNAME, name="frame")
    batch = connscan_dask.frame_to_batch(frame, 1)
    rejects: list = []
    local = evaluate_flow_batch(batch, Evaluator(engine, config, hostname=HOSTNAME), home_engine_for(None),
                                "frame", rejects)
    assert comparable(result) == comparable(local)
    assert [(row, reason) for _, row, reason, _ in result.rejects] == [(8, "invalid source address")]
    assert result.stats.records_read == len(frame) and result.stats.records_scanned == len(frame) - 1
    hits = {f.row for f in result if any(r.kind == "c2" for r in f.reasons)}
    expected = {row for name, row in expected_c2_rows({"frame": flows}) if row != 8}
    assert hits == expected


def test_missing_engine_file_is_a_clear_error(tmp_path):
    ref = connscan_dask.EngineRef(str(tmp_path / "absent.cstab"), "0" * 64, RuleConfig(), HOSTNAME, None)
    with pytest.raises(ConnscanError, match="compiled engine not found"):
        connscan_dask._evaluator_for(ref)


def test_cli_dask_output_equals_the_local_cli(planted, client, tmp_path):
    from connscan.cli import main

    iocs = tmp_path / "c2.txt"
    iocs.write_text("\n".join(C2_NETWORKS) + "\n", encoding="utf-8")
    geoip = Path(__file__).parent / "data" / "geoip" / "GeoIP2-Country-Test.mmdb"
    outputs = {}
    for mode, extra in (("local", []), ("dask", ["--dask", client.scheduler.address])):
        out, stats = tmp_path / f"{mode}.jsonl", tmp_path / f"{mode}.json"
        code = main(["flows", "--iocs", str(iocs), "--geoip", str(geoip), "--tz", "UTC", "--format", "jsonl",
                     "-o", str(out), "--stats", str(stats), *extra, *planted])
        lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        for line in lines:
            line.pop("time", None)
        summary = json.loads(stats.read_text(encoding="utf-8"))
        for entry in [summary, *summary["files"].values()]:
            entry.pop("elapsed_s")
        outputs[mode] = (code, lines, summary)
    assert outputs["dask"] == outputs["local"]
    assert outputs["local"][0] == 1  # alerts found
    assert len(outputs["local"][1]) > 100
