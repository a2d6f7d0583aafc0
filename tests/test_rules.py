"""Rules, THOR scores, levels and the vectorised evaluator (against an ipaddress oracle)."""
from __future__ import annotations

import ipaddress
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connscan import _native
from connscan.engine import Engine
from connscan.errors import ConfigError
from connscan.geoip import GeoTable
from connscan.rules import (
    BUILTIN_SUSPICIOUS_PORTS,
    DEFAULT_RELEVANT_COUNTRIES,
    Evaluator,
    RuleConfig,
    combine_scores,
    level_for,
)
from connscan.signatures import SignatureSet

RULES_DATA = Path(__file__).parent / "data" / "rules"


# --------------------------------------------------------------------------- scores


def test_thor_documented_example():
    # THOR's documentation: 70, 70, 50, 40, 40 -> 84.2, in any order.
    assert combine_scores([70, 70, 50, 40, 40]) == 84.2
    assert combine_scores([40, 50, 70, 40, 70]) == 84.2


@pytest.mark.parametrize(("subs", "expected"), [
    ([], 0.0),
    ([100], 100.0),  # a C2 IOC without a score
    ([100, 100], 100.0),
    ([40], 40.0),
    ([40, 40], 52.0),  # 100 * (1 - 0.6 * 0.8)
    ([60, 40], 68.0),  # 100 * (1 - 0.4 * 0.8)
    ([60, -50], 10.0),  # allowlist subtracts after combining
    ([100, -50], 50.0),
    ([40, -100], 0.0),  # never below 0
    ([-20], 0.0),
])
def test_combine_scores_hand_computed(subs, expected):
    assert combine_scores(subs) == expected


@given(st.lists(st.integers(-100, 100), max_size=8))
def test_combine_scores_bounds_and_order(subs):
    score = combine_scores(subs)
    assert 0 <= score <= 100
    assert combine_scores(list(reversed(subs))) == score
    positives = [s for s in subs if s > 0]
    if positives and not any(s < 0 for s in subs):
        # combining never scores below the strongest single reason
        assert score >= max(positives) - 0.05


@pytest.mark.parametrize(("score", "level"), [
    (0, "Info"), (39.9, "Info"), (40, "Notice"), (59.9, "Notice"), (60, "Warning"),
    (80.9, "Warning"), (81, "Alert"), (100, "Alert"),
])
def test_default_levels(score, level):
    assert level_for(score) == level


def test_configurable_levels():
    config = RuleConfig(notice=20, warning=30, alert=50)
    assert [level_for(s, config) for s in (19, 20, 30, 49.9, 50)] == ["Info", "Notice", "Warning", "Warning", "Alert"]


@pytest.mark.parametrize("changes", [
    {"notice": 70, "warning": 60},
    {"alert": 101},
    {"notice": 0},
    {"geoip_score": 120},
    {"allow_process_score": 10},
    {"relevant_countries": ("RUS",)},
    {"relevant_countries": ("ru",)},
    {"suspicious_ports": {70000: 50}},
    {"suspicious_ports": {4444: 150}},
    {"no_direct_internet": ("10.0.0.0/33",)},
    {"max_reasons": -1},
])
def test_invalid_config_raises(changes):
    with pytest.raises(ConfigError):
        RuleConfig().updated(**changes).validate()


def test_unknown_setting_raises():
    with pytest.raises(ConfigError, match="unknown rule setting"):
        RuleConfig().updated(bogus=1)


def test_defaults_are_documented_values():
    config = RuleConfig()
    assert (config.notice, config.warning, config.alert) == (40, 60, 81)
    assert config.geoip_score == 40 and config.geoip_score_inbound < config.geoip_score
    assert config.suspicious_ports[4444] >= 40 and 4444 in BUILTIN_SUSPICIOUS_PORTS
    assert all(len(note) > 5 for _, note in BUILTIN_SUSPICIOUS_PORTS.values())
    assert set(config.relevant_countries) == set(DEFAULT_RELEVANT_COUNTRIES)


# --------------------------------------------------------------------------- evaluator basics


def _batch(rows: list[dict]) -> dict:
    columns = ("lip", "lport", "rip", "rport", "proto", "direction", "check_local", "pid", "name", "exe", "row")
    out = {name: [row.get(name) for row in rows] for name in columns}
    out["proto"] = [p or "tcp" for p in out["proto"]]
    out["direction"] = [d or "outbound" for d in out["direction"]]
    out["check_local"] = [bool(c) for c in out["check_local"]]
    out["lport"] = [-1 if p is None else p for p in out["lport"]]
    out["rport"] = [-1 if p is None else p for p in out["rport"]]
    out["row"] = list(range(1, len(rows) + 1))
    return out


def _evaluator(c2=(), allow=(), geo=(), c2_score=100, allow_score=-50, **config):
    sigs = SignatureSet.from_networks(list(c2), description="test c2", score=c2_score)
    if allow:
        sigs = sigs + SignatureSet.from_networks(list(allow), description="branch", kind="allowlist", score=allow_score)
    table = GeoTable.from_ranges(v4=[g for g in geo if ":" not in g[0]], v6=[g for g in geo if ":" in g[0]])
    return Evaluator(Engine(sigs, table), RuleConfig(**config), hostname="testhost")


def test_c2_without_score_scores_100(tmp_path):
    ioc = tmp_path / "c2.txt"
    ioc.write_text("# Test C2 servers\n203.0.113.7\n198.51.100.0/24;70\n")
    evaluator = Evaluator(Engine(SignatureSet.load(ioc), None), RuleConfig(), hostname="h")
    findings = evaluator.evaluate(_batch([
        {"lip": "10.0.0.1", "lport": 50000, "rip": "203.0.113.7", "rport": 443},
        {"lip": "10.0.0.1", "lport": 50001, "rip": "198.51.100.9", "rport": 443},
        {"lip": "10.0.0.1", "lport": 50002, "rip": "192.0.2.1", "rport": 443},
    ]))
    assert [(f.row, f.score, f.level) for f in findings] == [(1, 100.0, "Alert"), (2, 70.0, "Warning")]
    assert findings[0].message == "Connection to known C2 server"
    assert findings[0].reasons[0].kind == "c2"
    assert findings[0].reasons[0].description == "Test C2 servers"
    assert findings[0].reasons[0].source.endswith("c2.txt:2")


def test_nested_signatures_most_specific_first():
    evaluator = _evaluator(c2=["203.0.0.0/8", "203.0.113.0/24", "203.0.113.7"], c2_score=30, max_reasons=0)
    [finding] = evaluator.evaluate(_batch([{"lip": "10.0.0.1", "lport": 1, "rip": "203.0.113.7", "rport": 80}]))
    assert [r.signature for r in finding.reasons] == ["203.0.113.7/32", "203.0.113.0/24", "203.0.0.0/8"]
    assert finding.score == 45.0  # 100 * (1 - 0.7 * 0.85 * 0.925)


def test_geoip_outbound_notice_inbound_lower():
    evaluator = _evaluator(geo=[("14.102.172.0/24", "PK")], relevant_countries=("PK",))
    findings = evaluator.evaluate(_batch([
        {"lip": "10.1.30.2", "lport": 56513, "rip": "14.102.172.144", "rport": 6022, "direction": "outbound"},
        {"lip": "10.1.30.2", "lport": 443, "rip": "14.102.172.145", "rport": 50000, "direction": "inbound"},
        {"lip": "10.1.30.2", "lport": 56514, "rip": "8.8.8.8", "rport": 53},
    ]))
    assert [(f.row, f.level, f.message, f.country) for f in findings] == [
        (1, "Notice", "Relevant remote region GEO IP lookup", "PK")]
    assert findings[0].reasons[0].kind == "geoip" and findings[0].reasons[0].score == 40


def test_suspicious_port_is_the_service_port():
    evaluator = _evaluator()
    findings = evaluator.evaluate(_batch([
        {"lip": "10.0.0.1", "lport": 50000, "rip": "192.0.2.1", "rport": 4444, "direction": "outbound"},
        {"lip": "10.0.0.1", "lport": 4444, "rip": "192.0.2.1", "rport": 50000, "direction": "inbound"},
        {"lip": "10.0.0.1", "lport": 4444, "rip": "192.0.2.1", "rport": 50000, "direction": "outbound"},
    ]))
    assert [f.row for f in findings] == [1, 2]
    assert findings[0].message == "Connection on suspicious port"
    assert findings[0].reasons[0].signature == "4444"


def test_ports_outside_the_port_range_are_not_suspicious():
    # Parquet/Arrow input can carry any integer; suspicious ports 0 and 65535 are the table edges.
    evaluator = _evaluator(suspicious_ports={0: 50, 65535: 50})
    findings = evaluator.evaluate(_batch([
        {"lip": "10.0.0.1", "lport": 1, "rip": "192.0.2.1", "rport": port} for port in (65536, 70000, -2, -65537, 65535, 0)
    ]))
    assert [(f.row, f.reasons[0].signature) for f in findings] == [(5, "65535"), (6, "0")]


def test_network_allowlist_pulls_a_broader_c2_down():
    # firehol_level1 lists 10.0.0.0/8; the branch office 10.20.0.0/16 is allowlisted.
    evaluator = _evaluator(c2=["10.0.0.0/8"], allow=["10.20.0.0/16"], allow_score=-50)
    findings = evaluator.evaluate(_batch([
        {"lip": "192.168.1.2", "lport": 1, "rip": "10.20.3.4", "rport": 445},
        {"lip": "192.168.1.2", "lport": 1, "rip": "10.30.3.4", "rport": 445},
        {"lip": "192.168.1.2", "lport": 1, "rip": "172.16.0.1", "rport": 445},
    ]))
    assert [(f.row, f.score, f.level) for f in findings] == [(1, 50.0, "Notice"), (2, 100.0, "Alert")]
    assert [r.kind for r in findings[0].reasons] == ["c2", "allowlist"]
    assert findings[0].reasons[1].score == -50


def test_allowlist_can_suppress():
    evaluator = _evaluator(c2=["10.0.0.0/8"], allow=["10.20.0.0/16"], allow_score=-100)
    assert evaluator.evaluate(_batch([{"lip": "192.168.1.2", "lport": 1, "rip": "10.20.3.4", "rport": 1}])) == []


def test_process_allowlist_by_name_and_path():
    evaluator = _evaluator(c2=["198.51.100.0/24"], allow_processes=("Updater.exe", "/opt/av/bin/scan"),
                           allow_process_score=-30)
    findings = evaluator.evaluate(_batch([
        {"lip": "10.0.0.1", "lport": 1, "rip": "198.51.100.1", "rport": 443, "name": "updater.exe"},
        {"lip": "10.0.0.1", "lport": 1, "rip": "198.51.100.1", "rport": 443, "name": "x", "exe": "/opt/av/bin/scan"},
        {"lip": "10.0.0.1", "lport": 1, "rip": "198.51.100.1", "rport": 443, "name": "x", "exe": "C:\\Prog\\UPDATER.EXE"},
        {"lip": "10.0.0.1", "lport": 1, "rip": "198.51.100.1", "rport": 443, "name": "curl", "exe": "/usr/bin/curl"},
    ]))
    assert [(f.row, f.score) for f in findings] == [(1, 70.0), (2, 70.0), (3, 70.0), (4, 100.0)]
    assert findings[0].reasons[-1].kind == "allowlist"


def test_direct_internet_rule():
    evaluator = _evaluator(no_direct_internet=("10.50.0.0/16",))
    findings = evaluator.evaluate(_batch([
        {"lip": "10.50.1.1", "lport": 1, "rip": "93.184.216.34", "rport": 443, "direction": "outbound"},
        {"lip": "10.50.1.1", "lport": 1, "rip": "10.1.1.1", "rport": 443, "direction": "outbound"},
        {"lip": "10.50.1.1", "lport": 443, "rip": "93.184.216.34", "rport": 5000, "direction": "inbound"},
        {"lip": "10.60.1.1", "lport": 1, "rip": "93.184.216.34", "rport": 443, "direction": "outbound"},
        {"lip": "fd00::5", "lport": 1, "rip": "2606:2800:220:1::1", "rport": 443, "direction": "outbound"},
        {"lip": "10.50.1.1", "lport": 1, "rip": "192.0.2.1", "rport": 443, "direction": "outbound"},
    ]))
    assert [(f.row, f.level) for f in findings] == [(1, "Warning")]
    assert findings[0].message == "Direct Internet connection from internal host"
    assert findings[0].reasons[0].signature == "10.50.0.0/16"


def test_direct_internet_home_engine_is_not_public():
    home = Engine(SignatureSet.from_networks(["93.184.0.0/16"]), None)
    sigs = SignatureSet.from_networks([])
    evaluator = Evaluator(Engine(sigs, None), RuleConfig(no_direct_internet=("10.50.0.0/16",)), home_engine=home)
    batch = _batch([{"lip": "10.50.1.1", "lport": 1, "rip": "93.184.216.34", "rport": 443}])
    assert evaluator.evaluate(batch) == []


def test_ip_port_signatures_match_only_on_their_port():
    path = RULES_DATA / "feodo_ports.csv"
    sigs = SignatureSet.load(path)
    assert [s.port for s in sigs] == [447, 8080]
    evaluator = Evaluator(Engine(sigs, None), RuleConfig(), hostname="h")
    findings = evaluator.evaluate(_batch([
        {"lip": "10.0.0.1", "lport": 50000, "rip": "198.51.100.20", "rport": 447},
        {"lip": "10.0.0.1", "lport": 50000, "rip": "198.51.100.20", "rport": 443},
        {"lip": "10.0.0.1", "lport": 50000, "rip": "198.51.100.21", "rport": 8080},
    ]))
    assert [(f.row, f.reasons[0].description) for f in findings] == [(1, "TrickBot"), (3, "QakBot")]


def test_check_local_matches_the_local_side_with_its_port():
    evaluator = _evaluator(c2=["198.51.100.5"])
    findings = evaluator.evaluate(_batch([
        {"lip": "198.51.100.5", "lport": 443, "rip": "10.0.0.1", "rport": 50000, "check_local": True},
        {"lip": "198.51.100.5", "lport": 443, "rip": "10.0.0.1", "rport": 50000, "check_local": False},
    ]))
    assert [f.row for f in findings] == [1]


def test_max_reasons_limits_the_list_not_the_score():
    evaluator = _evaluator(c2=["203.0.0.0/8", "203.0.113.0/24", "203.0.113.7"], c2_score=30, max_reasons=2)
    [finding] = evaluator.evaluate(_batch([{"lip": "10.0.0.1", "lport": 1, "rip": "203.0.113.7", "rport": 80}]))
    assert len(finding.reasons) == 2
    assert finding.score == 45.0  # 100 * (1 - 0.7 * 0.85 * 0.925)


def test_all_connections_reports_info_lines():
    evaluator = _evaluator(all_connections=True)
    findings = evaluator.evaluate(_batch([{"lip": "10.0.0.1", "lport": 1, "rip": "192.0.2.1", "rport": 80,
                                           "pid": 12, "name": "curl"}]))
    assert [(f.level, f.message, f.score, f.pid, f.name, f.lport) for f in findings] == [
        ("Info", "Established connection", 0.0, 12, "curl", 1)]


def test_pyarrow_table_and_record_batch_inputs():
    evaluator = _evaluator(c2=["198.51.100.0/24"])
    rows = _batch([{"lip": "10.0.0.1", "lport": 1, "rip": "198.51.100.1", "rport": 80}])
    for batch in (pa.table(rows), pa.RecordBatch.from_pydict(rows)):
        assert [f.row for f in evaluator.evaluate(batch)] == [1]
    assert evaluator.evaluate(pa.table(rows).slice(0, 0)) == []


# --------------------------------------------------------------------------- oracle


def _address(text):
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _thor_score(subs):
    """The THOR formula, written independently of connscan.rules."""
    pos = sorted((s for s in subs if s > 0), reverse=True)
    total = 100 * (1 - math.prod(1 - s / 100 / 2**i for i, s in enumerate(pos))) + sum(s for s in subs if s < 0)
    return round(min(100, max(0, total)), 1)


def _oracle(rows, c2, allow, geo, config):
    """Expected findings computed with ipaddress, row by row, straight from the spec."""
    sig_nets = [(ipaddress.ip_network(n), s, "c2") for n, s in c2] + \
               [(ipaddress.ip_network(n), s, "allowlist") for n, s in allow]
    geo_nets = [(ipaddress.ip_network(n), cc) for n, cc in geo]
    nodirect = [ipaddress.ip_network(n) for n in config.no_direct_internet]
    expected = {}
    for row in rows:
        remote, local = _address(row["rip"]), _address(row["lip"])
        inbound = row["direction"] == "inbound"
        positives, negatives = [], []

        def signatures(addr):
            if addr is None:
                return
            hits = [(net.num_addresses, i) for i, (net, _, _) in enumerate(sig_nets)
                    if net.version == addr.version and addr in net]
            for _, i in sorted(hits):
                net, score, kind = sig_nets[i]
                (negatives if kind == "allowlist" else positives).append((kind, score, net))

        signatures(remote)
        if row["check_local"]:
            signatures(local)
        if (local is not None and remote is not None and row["direction"] == "outbound"
                and remote.is_global):
            for net in nodirect:
                if local.version == net.version and local in net:
                    positives.append(("direct-internet", config.direct_internet_score, net))
                    break
        port = row["lport"] if inbound else row["rport"]
        if port in config.suspicious_ports:
            positives.append(("port", config.suspicious_ports[port], port))
        country = None
        if remote is not None:
            for net, cc in geo_nets:
                if net.version == remote.version and remote in net:
                    country = cc
        if country in config.relevant_countries:
            positives.append(("geoip", config.geoip_score_inbound if inbound else config.geoip_score, country))
        name = (row["name"] or "").casefold()
        if name and name in [p.casefold() for p in config.allow_processes]:
            negatives.append(("allowlist", config.allow_process_score, row["name"]))
        score = _thor_score([s for _, s, _ in positives + negatives])
        level = ("Alert" if score >= config.alert else "Warning" if score >= config.warning
                 else "Notice" if score >= config.notice else "Info")
        if level != "Info" or config.all_connections:
            expected[row["row"]] = (level, score, [(k, s) for k, s, _ in positives + negatives], country)
    return expected


def _random_case(seed):
    rng = np.random.default_rng(seed)
    v4_blocks = [f"{a}.{b}.0.0/16" for a, b in zip(rng.choice([45, 62, 91, 185, 203], 4), rng.integers(0, 256, 4))]
    v6_blocks = [f"2a0{i}:{int(rng.integers(0, 0xffff)):x}::/32" for i in range(2)]
    blocks = list(dict.fromkeys(v4_blocks)) + v6_blocks

    def inside(block):
        net = ipaddress.ip_network(block)
        return net.network_address + int(rng.integers(0, min(net.num_addresses, 2**63)))

    def random_net(block):
        addr = inside(block)
        length = int(rng.integers(16, 33)) if addr.version == 4 else int(rng.integers(32, 129))
        return str(ipaddress.ip_network(f"{addr}/{length}", strict=False))

    c2 = [(random_net(blocks[int(rng.integers(len(blocks)))]), int(rng.choice([100, 70, 50, 30])))
          for _ in range(int(rng.integers(1, 12)))]
    allow = [(random_net(blocks[int(rng.integers(len(blocks)))]), int(rng.choice([-30, -60])))
             for _ in range(int(rng.integers(0, 4)))]
    geo = [(block, str(rng.choice(["RU", "DE", "KP", "US"]))) for block in blocks]
    rows = []
    for r in range(200):
        choice = rng.random()
        if choice < 0.6:
            remote = inside(blocks[int(rng.integers(len(blocks)))])
        elif choice < 0.75:
            remote = ipaddress.ip_address(f"8.8.{int(rng.integers(256))}.{int(rng.integers(256))}")
        elif choice < 0.9:
            remote = ipaddress.ip_address(f"10.{int(rng.integers(256))}.0.{int(rng.integers(256))}")
        else:
            remote = None
        if remote is None:
            rip = str(rng.choice(["", "garbage", "300.1.1.1"]))
        elif remote.version == 4 and rng.random() < 0.2:
            rip = f"::ffff:{remote}"
        else:
            rip = str(remote)
        lip = str(rng.choice(["10.50.0.7", "10.60.0.7", "192.168.1.1", str(inside(blocks[0]))]))
        rows.append({
            "lip": lip, "rip": rip, "lport": int(rng.choice([4444, 443, 50000, -1])),
            "rport": int(rng.choice([4444, 9001, 443, 80, 53000])), "proto": "tcp",
            "direction": str(rng.choice(["inbound", "outbound", "unknown"])),
            "check_local": bool(rng.random() < 0.3),
            "name": str(rng.choice(["sshd", "Updater.exe", "", "curl"])), "row": r + 1,
        })
    config = RuleConfig(
        relevant_countries=tuple(rng.choice(["RU", "KP", "CN"], int(rng.integers(0, 3)), replace=False)),
        no_direct_internet=("10.50.0.0/16",) if rng.random() < 0.7 else (),
        allow_processes=("updater.exe",) if rng.random() < 0.5 else (),
        all_connections=bool(rng.random() < 0.2), max_reasons=0,
    )
    return rows, c2, allow, geo, config


ENGINE_IMPLS = [pytest.param(impl, id=impl, marks=[] if impl in _native.implementations("engine") else
                             [pytest.mark.skip(reason=f"connscan._engine_{impl} not built")]) for impl in ("c", "py")]


@pytest.mark.parametrize("impl", ENGINE_IMPLS)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_evaluator_matches_ipaddress_oracle(impl, seed):
    rows, c2, allow, geo, config = _random_case(seed)
    sigs = SignatureSet.from_networks([])
    for net, score in c2:
        sigs = sigs + SignatureSet.from_networks([net], description="c2", score=score)
    for net, score in allow:
        sigs = sigs + SignatureSet.from_networks([net], description="allow", kind="allowlist", score=score)
    geotable = GeoTable.from_ranges(v4=[g for g in geo if ":" not in g[0]], v6=[g for g in geo if ":" in g[0]])
    evaluator = Evaluator(Engine(sigs, geotable, impl=impl), config, hostname="h")
    batch = {key: [row[key] for row in rows] for key in rows[0]}
    findings = evaluator.evaluate(pa.table(batch))
    got = {f.row: (f.level, f.score, [(r.kind, r.score) for r in f.reasons], f.country) for f in findings}
    expected = _oracle(rows, c2, allow, geo, config)
    assert got == expected


# --------------------------------------------------------------------------- real data


def test_real_c2_iocs_and_dbip_countries(shared_data):
    """THOR's c2-iocs.txt and DB-IP: findings equal those derived from the file's text and
    the country that the official maxminddb reader gave for each address (golden TSV)."""
    ioc_path = shared_data / "c2" / "signature-base" / "c2-iocs.txt"
    ioc_scores = {}
    for line in ioc_path.read_text(encoding="utf-8").splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        ioc, _, score = entry.partition(";")
        try:
            addr = ipaddress.ip_address(ioc.strip())
        except ValueError:
            continue  # a domain or a network
        ioc_scores.setdefault(str(addr), int(score) if score.strip() else 100)
    assert len(ioc_scores) > 100
    golden = shared_data / "geoip" / "dbip-country-lite" / "golden-lookups-dbip-2026-06.tsv"
    countries = {}
    for line in golden.read_text(encoding="utf-8").splitlines()[1:3001]:
        ip, _prefix, cc = (line.split("\t") + [""])[:3]
        countries[ip] = cc
    relevant = ("RU", "CN", "IR", "KP", "BR")
    rips = list(countries) + list(ioc_scores)
    batch = {"lip": ["10.0.0.1"] * len(rips), "lport": [50000] * len(rips), "rip": rips,
             "rport": [443] * len(rips), "proto": ["tcp"] * len(rips), "direction": ["outbound"] * len(rips),
             "row": list(range(len(rips)))}
    engine = Engine(SignatureSet.load(ioc_path),
                    GeoTable.open(shared_data / "geoip" / "dbip-country-lite" / "dbip-country.mmdb"))
    findings = Evaluator(engine, RuleConfig(relevant_countries=relevant), hostname="h").evaluate(batch)
    got = {rips[f.row]: (f.score, f.country) for f in findings}
    expected = {}
    for ip in rips:
        subs = ([ioc_scores[ip]] if ip in ioc_scores else []) + ([40] if countries.get(ip) in relevant else [])
        if subs and _thor_score(subs) >= 40:
            expected[ip] = _thor_score(subs)
    assert {ip: score for ip, (score, _) in got.items()} == expected
    assert all(cc == countries[ip] for ip, (_, cc) in got.items() if ip in countries)
    assert sum(1 for ip in expected if ip in countries) > 50


def test_missing_required_column_is_a_clear_error():
    evaluator = _evaluator()
    batch = _batch([{"lip": "10.0.0.1", "lport": 1, "rip": "192.0.2.1", "rport": 80}])
    del batch["direction"]
    with pytest.raises(ValueError, match="direction"):
        evaluator.evaluate(batch)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(24, 32)), min_size=1, max_size=12),
       st.lists(st.tuples(st.integers(0, 2**16 - 1), st.integers(112, 128)), max_size=4))
def test_isolated_signatures_against_brute_force(v4, v6):
    from connscan.rules import _isolated_signatures

    nets = [ipaddress.ip_network(f"{ipaddress.IPv4Address(a)}/{n}", strict=False) for a, n in v4]
    nets += [ipaddress.ip_network(f"2001:db8::{a:x}/{n}", strict=False) for a, n in v6]
    flags = _isolated_signatures(SignatureSet.from_networks([str(n) for n in nets]))
    expected = [not any(j != i and m.version == n.version and m.overlaps(n) for j, m in enumerate(nets))
                for i, n in enumerate(nets)]
    assert flags.tolist() == expected


# --------------------------------------------------------------------------- signature flags


def _assert_isolated_flags_match_one_by_one(signatures):
    evaluator = Evaluator(Engine(signatures, None), RuleConfig(), hostname="h")
    flags = evaluator._isolated_flags()  # all isolated signatures at once
    known = np.flatnonzero(flags >= 0)
    assert len(known) == int(evaluator._isolated.sum()) > 0
    checked = known if len(known) <= 3000 else np.random.default_rng(7).choice(known, 3000, replace=False)
    for index in checked.tolist():
        assert flags[index] == evaluator._signature_flag(index), signatures[index]


def test_isolated_signature_flags_equal_the_per_signature_rule(tmp_path):
    rng = np.random.default_rng(2026)
    lines = []
    for _ in range(400):  # random, partly nested and overlapping networks with mixed scores
        address = ipaddress.IPv4Address(int(rng.integers(0, 2**32)) & 0xFFFF0000 | int(rng.integers(0, 512)))
        network = ipaddress.ip_network(f"{address}/{int(rng.choice([16, 24, 30, 32]))}", strict=False)
        lines.append(f"{network};{int(rng.choice([100, 70, 0, -20]))}")
    ioc = tmp_path / "c2.txt"
    ioc.write_text("\n".join(lines) + "\n")
    feodo = tmp_path / "feodo.csv"
    feodo.write_text("first_seen_utc,dst_ip,dst_port,c2_status,last_online,malware\n"
                     + "".join(f"2024-01-01 00:00:00,198.51.{i}.7,{443 + i},online,2024-01-02,Emotet\n" for i in range(20)))
    signatures = SignatureSet.load([ioc, feodo], strict=False)
    allow = SignatureSet.from_networks(["203.0.113.0/24", "198.51.3.0/24"], kind="allowlist", score=-50)
    _assert_isolated_flags_match_one_by_one(signatures + allow)


def test_isolated_signature_flags_on_real_lists(shared_data):
    c2 = shared_data / "c2"
    signatures = SignatureSet.load([c2 / "firehol" / "firehol_level4.netset", c2 / "ipsum" / "ipsum.txt",
                                    c2 / "abusech-feodo" / "ipblocklist-2024-04-04.csv"], strict=False)
    _assert_isolated_flags_match_one_by_one(signatures)
